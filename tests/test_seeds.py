"""Seed tasks: the released file and the starter set load and normalize; bad files fail clearly."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from alpacare.data import seeds
from alpacare.data.seeds import (
    NO_INPUT,
    OTHER_VIEW,
    TASK_TYPES,
    VIEWS,
    load_seed_tasks,
    load_starter_tasks,
    normalize_type,
    normalize_view,
    remap_counts,
    seed_source,
    validate_task,
)
from alpacare.errors import DataError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "alpacare-data"
RELEASED_SEEDS = SHARED_DATA / "med_seed.json"
needs_released = pytest.mark.skipif(not RELEASED_SEEDS.is_file(), reason="released AlpaCare data not available")


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """No test sees the developer's own data dir or cache."""
    monkeypatch.delenv("ALPACARE_DATA_DIR", raising=False)
    monkeypatch.setenv("ALPACARE_CACHE_DIR", str(tmp_path / "empty-cache"))


def a_task(**overrides):
    task = {
        "type": "Open Q&A",
        "topic": "Hypertension",
        "view": "Patient",
        "difficulty": "2",
        "instruction": "What does a blood pressure of 150/95 mean for me?",
        "input": "<noinput>",
    }
    task.update(overrides)
    return task


def write_json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


# --- the released seed file ------------------------------------------------------------------


@needs_released
def test_released_seed_file_loads_via_data_dir(monkeypatch):
    monkeypatch.setenv("ALPACARE_DATA_DIR", str(SHARED_DATA))
    tasks = load_seed_tasks()
    assert len(tasks) == 167
    assert {t["type"] for t in tasks} == set(TASK_TYPES)
    assert {t["view"] for t in tasks} <= set(VIEWS)  # every released view has a canonical home
    assert all(isinstance(t["difficulty"], int) and 1 <= t["difficulty"] <= 5 for t in tasks)
    assert all(isinstance(t["input"], str) and t["input"] for t in tasks)
    assert seed_source().startswith("$ALPACARE_DATA_DIR: ")


@needs_released
def test_released_spelling_variants_are_merged():
    tasks = load_seed_tasks(RELEASED_SEEDS)
    types = Counter(t["type"] for t in tasks)
    # "USMLE style Q&A" (6) + "USMLE Style Q&A" (5); "Rewrite" + "Rewrites" + "Rewriting" + "Rewrite Task".
    assert types["USMLE-style Q&A"] == 11
    assert types["Rewrite"] == 15
    raw_by_view = {t.get("view_raw"): t["view"] for t in tasks}
    assert raw_by_view["Radiologist"] == "Clinician"
    assert raw_by_view["Patient's Perspective"] == "Patient"
    assert "Medical Student" not in raw_by_view  # unchanged labels carry no view_raw


@needs_released
def test_remap_counts_reports_changed_labels_only():
    raw = json.loads(RELEASED_SEEDS.read_text(encoding="utf-8"))
    counts = remap_counts(raw)
    assert counts["type"]["Rewrites -> Rewrite"] == 5
    assert counts["view"]["Student -> Medical Student"] == 8
    assert not any(key.startswith("Medical Student ->") for key in counts["view"])


# --- the built-in starter set ----------------------------------------------------------------


def test_starter_set_validates_and_covers_every_type_and_view():
    tasks = load_starter_tasks()
    assert 25 <= len(tasks) <= 40
    types = Counter(t["type"] for t in tasks)
    assert set(types) == set(TASK_TYPES) and min(types.values()) >= 2
    assert {t["view"] for t in tasks} == set(VIEWS)
    assert {t["difficulty"] for t in tasks} == {1, 2, 3, 4, 5}
    assert len({t["instruction"] for t in tasks}) == len(tasks)
    assert len({t["topic"] for t in tasks}) == len(tasks)


def test_starter_file_uses_canonical_labels_and_released_schema():
    raw = json.loads(seeds.STARTER_SEEDS_PATH.read_text(encoding="utf-8"))
    for record in raw:
        assert set(record) == set(seeds.TASK_FIELDS)
        assert record["type"] in TASK_TYPES and record["view"] in VIEWS
        assert record["difficulty"] in {"1", "2", "3", "4", "5"}  # strings, as in med_seed.json


def test_starter_inputs_are_substantial_and_choice_questions_carry_choices():
    for task in load_starter_tasks():
        if task["input"] != NO_INPUT:
            assert 25 <= len(task["input"].split()) <= 200, task["topic"]
        if task["type"] in ("USMLE-style Q&A", "Multiple-choice Q&A"):
            assert re.search(r"^A\. .+\n^B\. .+\n^C\. ", task["input"], re.M), task["topic"]


def test_missing_everything_falls_back_to_starter_set():
    assert load_seed_tasks() == load_starter_tasks()
    assert seed_source().startswith("built-in starter seeds: ")


# --- label normalization ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "label, expected",
    [
        ("Rewrites", "Rewrite"),
        ("Rewriting", "Rewrite"),
        ("Rewrite Task", "Rewrite"),
        ("USMLE style Q&A", "USMLE-style Q&A"),
        ("USMLE Style Q&A", "USMLE-style Q&A"),
        ("Multiple-Hop Reasoning", "Multi-hop Reasoning"),
        ("Multiple hop reasoning", "Multi-hop Reasoning"),
        ("Multi-hop reasoning", "Multi-hop Reasoning"),
        ("Single Hop Reasoning", "Single-hop Reasoning"),
        ("Open-ended Q&A", "Open Q&A"),
        ("Summarizations", "Summarization"),
        ("Classification Task", "Classification"),
        ("Classifications", "Classification"),
        ("Multiple Choice Q&A", "Multiple-choice Q&A"),
        ("Multiple-Choice Q&A", "Multiple-choice Q&A"),
        ("Text generation", "Text Generation"),
        ("chat", "Chat"),
    ],
)
def test_normalize_type_variants(label, expected):
    assert normalize_type(label) == expected


def test_canonical_types_map_to_themselves():
    assert [normalize_type(t) for t in TASK_TYPES] == list(TASK_TYPES)
    assert [normalize_view(v) for v in VIEWS] == list(VIEWS)


def test_unknown_type_names_file_and_record():
    with pytest.raises(DataError, match=r"^med_seed\.json: record 3: unknown task type 'Haiku'"):
        normalize_type("Haiku", where="med_seed.json: record 3")


@pytest.mark.parametrize(
    "label, expected",
    [
        ("Student", "Medical Student"),
        ("Medical students", "Medical Student"),
        ("Student (Medicine)", "Medical Student"),
        ("Expert", "Clinician"),
        ("Physician", "Clinician"),
        ("Radiologist", "Clinician"),
        ("Intern Doctor", "Clinician"),
        ("Expert (Pathologist)", "Clinician"),
        ("Psychotherapist", "Clinician"),
        ("Patient's Perspective", "Patient"),
        ("Patient\u2019s Perspective", "Patient"),
        ("Parent of teenager", "Caregiver"),
        ("Dietician", "Allied Health Professional"),
        ("Health Tech Specialist", "Allied Health Professional"),
        ("Genetic Counsellor", "Allied Health Professional"),
        ("Geneticist", "Researcher"),
        ("Bioethicist", "Researcher"),
        ("Med School Professor", "Educator"),
        ("Intensive Care Unit (ICU) Nurse", "Nurse"),
        ("Public Health Expert", "Public Health Professional"),
        ("Epidemiologist", "Public Health Professional"),
        ("Highschool Student", "General Public"),
        ("Astronaut", OTHER_VIEW),
        ("", OTHER_VIEW),
    ],
)
def test_normalize_view_keyword_rules(label, expected):
    assert normalize_view(label) == expected


# --- validate_task ---------------------------------------------------------------------------


def test_validate_task_normalizes_a_released_style_record():
    task = validate_task(a_task(type="Rewrites", view="Astronaut", difficulty="4", input="  "), "f.json: record 0")
    assert task == {
        "type": "Rewrite",
        "topic": "Hypertension",
        "view": OTHER_VIEW,
        "view_raw": "Astronaut",
        "difficulty": 4,
        "instruction": "What does a blood pressure of 150/95 mean for me?",
        "input": NO_INPUT,
    }


@pytest.mark.parametrize("empty", [None, "", "   "])
def test_empty_input_becomes_noinput(empty):
    assert validate_task(a_task(input=empty), "w")["input"] == NO_INPUT


def test_missing_input_key_becomes_noinput():
    record = a_task()
    del record["input"]
    assert validate_task(record, "w")["input"] == NO_INPUT


def test_bad_difficulty_message_names_file_and_record():
    with pytest.raises(DataError) as err:
        validate_task(a_task(difficulty="7"), "med_seed.json: record 12")
    assert str(err.value) == "med_seed.json: record 12: difficulty must be 1-5, got '7'"


@pytest.mark.parametrize("difficulty", [0, 6, "x", "", None, True, 2.5])
def test_difficulty_out_of_range_or_wrong_kind_is_rejected(difficulty):
    with pytest.raises(DataError, match="difficulty must be 1-5"):
        validate_task(a_task(difficulty=difficulty), "w")


@pytest.mark.parametrize("difficulty", [1, 5, "3", " 2 "])
def test_difficulty_accepts_ints_and_digit_strings(difficulty):
    assert validate_task(a_task(difficulty=difficulty), "w")["difficulty"] == int(str(difficulty).strip())


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"instruction": ""}, "instruction must be a non-empty string"),
        ({"instruction": 5}, "instruction must be a non-empty string"),
        ({"input": ["a"]}, "input must be a string"),
        ({"topic": None}, "topic must be a non-empty string"),
    ],
)
def test_bad_fields_are_rejected(overrides, message):
    with pytest.raises(DataError, match=f"^w: {message}"):
        validate_task(a_task(**overrides), "w")


def test_missing_field_and_non_object_are_rejected():
    record = a_task()
    del record["topic"]
    with pytest.raises(DataError, match="^w: missing field"):
        validate_task(record, "w")
    with pytest.raises(DataError, match="^w: expected a JSON object"):
        validate_task(["not", "a", "task"], "w")


# --- resolution order ------------------------------------------------------------------------


def seed_file_with_topic(path: Path, topic: str) -> Path:
    return write_json(path, [a_task(topic=topic)])


def test_resolution_order_explicit_then_env_then_cache_then_builtin(tmp_path, monkeypatch):
    explicit = seed_file_with_topic(tmp_path / "mine.json", "explicit")
    seed_file_with_topic(tmp_path / "env" / "med_seed.json", "env")
    seed_file_with_topic(tmp_path / "cache" / "data" / "med_seed.json", "cache")
    monkeypatch.setenv("ALPACARE_DATA_DIR", str(tmp_path / "env"))
    cache = tmp_path / "cache"

    assert load_seed_tasks(explicit, cache_dir=cache)[0]["topic"] == "explicit"
    assert seed_source(explicit, cache_dir=cache) == f"explicit: {explicit}"
    assert load_seed_tasks(cache_dir=cache)[0]["topic"] == "env"

    monkeypatch.delenv("ALPACARE_DATA_DIR")
    assert load_seed_tasks(cache_dir=cache)[0]["topic"] == "cache"
    assert seed_source(cache_dir=cache) == f"cache: {cache / 'data' / 'med_seed.json'}"
    assert load_seed_tasks(cache_dir=tmp_path / "nowhere") == load_starter_tasks()


def test_cache_dir_defaults_to_env_variable(tmp_path, monkeypatch):
    seed_file_with_topic(tmp_path / "c" / "data" / "med_seed.json", "from-env-cache")
    monkeypatch.setenv("ALPACARE_CACHE_DIR", str(tmp_path / "c"))
    assert load_seed_tasks()[0]["topic"] == "from-env-cache"


def test_data_dir_without_seed_file_falls_through_to_cache(tmp_path, monkeypatch):
    (tmp_path / "env").mkdir()
    seed_file_with_topic(tmp_path / "cache" / "data" / "med_seed.json", "cache")
    monkeypatch.setenv("ALPACARE_DATA_DIR", str(tmp_path / "env"))
    assert load_seed_tasks(cache_dir=tmp_path / "cache")[0]["topic"] == "cache"


def test_missing_explicit_file_is_an_error_not_a_fallback(tmp_path):
    missing = tmp_path / "typo.json"
    with pytest.raises(DataError, match=re.escape(f"{missing}: no such file")):
        load_seed_tasks(missing)


# --- bad files -------------------------------------------------------------------------------


def test_malformed_json_names_the_file(tmp_path):
    bad = tmp_path / "seeds.json"
    bad.write_text('[{"type": "Chat",', encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(f"{bad}: not valid JSON")):
        load_seed_tasks(bad)


def test_empty_list_and_empty_file_name_the_file(tmp_path):
    empty_list = write_json(tmp_path / "empty.json", [])
    with pytest.raises(DataError, match=re.escape(f"{empty_list}: contains no seed tasks")):
        load_seed_tasks(empty_list)
    empty_file = tmp_path / "blank.json"
    empty_file.write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(f"{empty_file}: contains no seed tasks")):
        load_seed_tasks(empty_file)


def test_non_list_json_names_the_file(tmp_path):
    obj = write_json(tmp_path / "obj.json", {"tasks": [a_task()]})
    with pytest.raises(DataError, match=re.escape(f"{obj}: expected a JSON list")):
        load_seed_tasks(obj)


def test_bad_record_in_file_names_file_and_index(tmp_path):
    path = write_json(tmp_path / "med_seed.json", [a_task(), a_task(difficulty="7")])
    with pytest.raises(DataError) as err:
        load_seed_tasks(path)
    assert str(err.value) == f"{path}: record 1: difficulty must be 1-5, got '7'"


def test_unknown_type_in_file_names_file_and_index(tmp_path):
    path = write_json(tmp_path / "med_seed.json", [a_task(), a_task(), a_task(type="Poetry")])
    with pytest.raises(DataError, match=re.escape(f"{path}: record 2: unknown task type 'Poetry'")):
        load_seed_tasks(path)


def test_jsonl_is_accepted_with_or_without_the_suffix(tmp_path):
    lines = "\n".join(json.dumps(a_task(topic=f"t{i}")) for i in range(3)) + "\n"
    for name in ("seeds.jsonl", "seeds.json", "seeds.txt"):
        path = tmp_path / name
        path.write_text(lines, encoding="utf-8")
        assert [t["topic"] for t in load_seed_tasks(path)] == ["t0", "t1", "t2"]


def test_bad_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "seeds.jsonl"
    path.write_text(json.dumps(a_task()) + "\n{oops\n", encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(f"{path}:2: not valid JSON")):
        load_seed_tasks(path)
