"""The contamination kernel and its sources on real test items (the smoke suite, MedInstruct-test)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from alpacare.data.contamination import MIN_ITEM_TOKENS, ContaminationIndex, window
from alpacare.data.contamination import TestItem as Item
from alpacare.data.rouge import _lcs_dp, tokenize
from alpacare.errors import ConfigError
from alpacare.evaluation import test_items
from tests.conftest import SHARED_DATA

needs_data = pytest.mark.skipif(not (SHARED_DATA / "MedInstruct-test.jsonl").is_file(), reason="needs ../shared/alpacare-data")


@pytest.fixture(scope="module")
def smoke():
    return test_items.load("alpacare_smoke_mcq") + test_items.load("alpacare_smoke_meqsum")


def best(index, texts, threshold=0.0):
    r = index.check(texts, threshold)
    return [(float(s), index.items[j].id if j >= 0 else None) for s, j in zip(r.best_score, r.best_item)]


def test_copies_score_by_the_share_of_item_words_kept(smoke):
    index = ContaminationIndex(smoke)
    q = "A patient with type 1 diabetes, vomiting, deep rapid breathing and a fruity breath odour most likely has:"
    n = len(tokenize(q))  # 18
    texts = [q, q.upper(), f"Exam practice. {q} Explain each option in two sentences.",
             "Answer the question.\n" + q, q.replace("vomiting", "nausea").replace("rapid", "fast"),
             "Which electrolyte disturbance causes tall T waves?", "Describe the management of diabetic ketoacidosis in adults."]
    got = best(index, texts)
    assert got[:4] == [(1.0, "smoke-05")] * 4
    assert got[4] == ((n - 2) / n, "smoke-05")
    assert got[5][0] < 0.8 and got[6][0] < 0.5
    matches = index.check(texts, 0.8).matches
    assert [m.index for m in matches] == [0, 1, 2, 3, 4]
    assert matches[0].item.source == "alpacare_smoke_mcq" and matches[0].item.text == q


def test_short_items_must_be_whole_and_words_close_together(smoke):
    index = ContaminationIndex(smoke)
    item = "Which organ produces insulin?"  # 4 tokens: 3 of 4 is 0.75, not above 0.8
    assert len(tokenize(item)) == MIN_ITEM_TOKENS
    assert best(index, ["Which organ produces bile?"])[0][0] == 0.75
    assert best(index, ["Tell me which organ produces insulin, please."])[0] == (1.0, "smoke-01")
    # The item's words in order but spread over a long text: only a window of window(4) tokens counts.
    spread = "Which organ produces the enzymes of digestion, and which hormone from that gland regulates insulin release?"
    assert best(index, [spread])[0][0] <= 0.75 and window(4) == 7
    # Too short to index: three words are a phrase, not evidence of a copy.
    tiny = ContaminationIndex([Item("s", "0", "What is Atlantis?")])
    assert len(tiny) == 0 and tiny.skipped_short == 1 and best(tiny, ["What is Atlantis?"]) == [(0.0, None)]


@needs_data
def test_scores_equal_brute_force_over_every_item_and_window():
    """The index, the overlap bound and the bit-parallel LCS change no decision: a score is never above
    the plain DP LCS over every item and every window, and equals it wherever that is above 0.8 (an
    item with words changed so that no trigram survives keeps at most 4 of 5 words)."""
    items = test_items.load("medinstruct") + test_items.load("alpacare_smoke_mcq")
    rng = random.Random(0)
    vocab = sorted({w for it in items for w in it.text.split()})
    texts = []
    for it in rng.sample(items, 12):
        words = it.text.split()
        for i in rng.sample(range(len(words)), max(1, len(words) // 6)):
            words[i] = rng.choice(vocab)
        texts.append(rng.choice(["", "Please help. "]) + " ".join(words))
    texts += [rng.choice(items).text[:40] + " " + rng.choice(items).text[-60:] for _ in range(6)]
    index = ContaminationIndex(items)
    result = index.check(texts, 0.0)
    ids: dict[str, int] = {}
    enc = lambda s: np.asarray([ids.setdefault(w, len(ids)) for w in tokenize(s)], dtype=np.int64)  # noqa: E731
    qs = [enc(it.text) for it in index.items]
    exact = 0
    for text, score in zip(texts, result.best_score):
        t = enc(text)
        ref = max(max(_lcs_dp(q, t[s:s + window(len(q))]) for s in range(max(1, len(t) - window(len(q)) + 1))) / len(q)
                  for q in qs)
        assert score <= ref and (ref <= 0.8 or score == ref), (text, score, ref)
        exact += ref > 0.8
    assert exact >= 10  # most of the changed copies are above 0.8


def test_sources_all_names_and_files(tmp_path):
    chosen, absent = test_items.resolve(["all"])
    assert {"alpacare_smoke_mcq", "alpacare_smoke_meqsum"} <= set(chosen)  # shipped: always local
    assert set(chosen) | set(absent) == set(test_items.all_sources()) and not set(chosen) & set(absent)
    with pytest.raises(ConfigError, match="unknown source 'nope'"):
        test_items.resolve(["nope"])
    own = tmp_path / "my_test.jsonl"
    own.write_text(json.dumps({"instruction": "Summarize the note for the family.", "input": "Patient stable, discharged."}) + "\n")
    items = test_items.load(str(own))
    assert items == [Item("my_test", "0", "Summarize the note for the family.\nPatient stable, discharged.")]
    assert test_items.training_text({"instruction": "Do X.", "input": "<noinput>"}) == "Do X."


@needs_data
def test_icliniq_items_are_the_patient_text():
    items = test_items.load("icliniq")
    assert len(items) == 1000 and all("If you are a doctor" not in it.text for it in items[:20])
