"""The dataset analysis against independent counts on the real seed set (167 clinician-written tasks)."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from alpacare.report.analysis import analyze, load_dataset
from alpacare.data.seeds import normalize_type, normalize_view, read_seed_file
from alpacare.errors import DataError
from alpacare.data.rouge import rouge_l
from tests.conftest import SHARED_DATA

SEEDS = SHARED_DATA / "med_seed.json"
needs_data = pytest.mark.skipif(not SEEDS.is_file(), reason="needs ../shared/alpacare-data")


def tokens(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


@needs_data
def test_counts_on_the_real_seed_set_match_an_independent_count():
    raw = json.loads(SEEDS.read_text("utf-8"))
    assert len(raw) == 167
    result = analyze(load_dataset(SEEDS), read_seed_file(SEEDS), top_n=10).summary

    assert result["records"] == 167
    assert result["type"] == dict(Counter(normalize_type(r["type"]) for r in raw))
    assert result["view"] == dict(Counter(normalize_view(r["view"]) for r in raw))
    assert result["difficulty"] == dict(Counter(str(int(r["difficulty"])) for r in raw))
    assert sum(result["type"].values()) == 167 and len(result["type"]) == 10
    without = sum(1 for r in raw if not r.get("input") or r["input"].strip().lower() in ("<noinput>", ""))
    assert result["without_input"] == without
    assert result["share_without_input"] == pytest.approx(without / 167, abs=1e-6)
    toks = [tokens(r["instruction"]) for r in raw]
    unigrams = [t for ts in toks for t in ts]
    bigrams = [tuple(ts[i:i + 2]) for ts in toks for i in range(len(ts) - 1)]
    assert result["distinct_1"] == pytest.approx(len(set(unigrams)) / len(unigrams), abs=1e-6)
    assert result["distinct_2"] == pytest.approx(len(set(bigrams)) / len(bigrams), abs=1e-6)
    leading = Counter(ts[0] for ts in toks if ts)
    assert list(result["leading_words"].items()) == leading.most_common(10)
    assert result["lengths"]["instruction"]["max"] == max(len(r["instruction"].split()) for r in raw)
    # Against itself every seed is its own nearest neighbour; nothing is missing from the seeds.
    assert result["rouge_vs_seeds"]["histogram"]["counts"][-1] == 167
    assert result["types_missing_in_seeds"] == {}


@needs_data
def test_max_rouge_against_the_seeds_and_types_the_seeds_lack():
    seeds = read_seed_file(SEEDS)
    data = [{"instruction": "Explain what multiple sclerosis is and how it is treated.", "type": "Open Q&A"},
            {"instruction": "Translate this discharge note into Spanish.", "type": "Translation"},
            {"instruction": "Translate the consent form into French.", "type": "translation"}]
    a = analyze(data, seeds)
    expected = [max(rouge_l(d["instruction"], s["instruction"]) for s in seeds) for d in data]
    assert list(a.rouge) == pytest.approx(expected, abs=1e-12)
    assert a.summary["types_missing_in_seeds"] == {"Translation": 1, "translation": 1}
    assert a.summary["with_field"]["view"] == 0 and a.summary["view"] == {}


def test_files_of_the_wrong_shape_are_one_line_naming_the_path(tmp_path):
    cases = {"obj.json": '{"instruction": 3}', "list.json": "[1, 2]", "empty.json": "", "none.json": '[{"input": "x"}]',
             "bad.jsonl": '{"instruction": "a"}\n{oops\n'}
    for name, text in cases.items():
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(DataError) as e:
            load_dataset(path)
        assert str(path) in str(e.value) and "\n" not in str(e.value)
    (tmp_path / "ok.jsonl").write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n')
    assert len(load_dataset(tmp_path / "ok.jsonl")) == 2
