"""The free-form test sets and their reference answers, by name, from the AlpaCare release.

One entry per test set (``EVAL_SETS``): where its items come from and where each reference
model's answers to them live. Every file is a released file fetched with a pinned sha256
(``alpacare-fetch``; ``alpacare/data/fetch.py``) and found through ``resolve_data_file``.

- ``medinstruct``: MedInstruct-test, 216 clinician-written tasks, instruction only (the file skips
  id 143, so items are aligned by position and instruction text, never by id).
- ``icliniq``: 1,000 patient questions; the paper's fixed instruction with the patient's text as input.
- ``alpaca_eval``: AlpacaFarm's 805 general instructions, taken from the released AlpaCare-7b
  generations; the reference is text-davinci-003, whose answers the released medalpaca-7b file
  carries in its ``output`` field.

HealthBench's conversation sets (``healthbench``, ``healthbench_hard``, ``healthbench_consensus``;
alpacare/data/healthbench.py) are test sets too: their items carry the conversation (``messages``,
``prompt_id``) and, as ``instruction``, the last user turn; ``limit`` draws a seeded random subset
there, as simple-evals does, instead of taking the first items.

A user's own test set is a path (``predict.test_sets=[/data/my_set.jsonl]``): JSON or JSONL records
with ``instruction`` and an optional ``input``; its name is the file stem.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from alpacare.data.fetch import resolve_data_file
from alpacare.data.jsonl import read_records
from alpacare.data import healthbench
from alpacare.errors import ConfigError, DataError
from alpacare.prompts.alpaca import has_input

# The paper's instruction for iCliniq items (the patient's text is the input).
ICLINIQ_INSTRUCTION = "If you are a doctor, please answer the medical questions based on the patient's description."
REFERENCE_MODELS = ("text-davinci-003", "gpt-3.5-turbo", "gpt-4", "claude-2")


@dataclass(frozen=True)
class Source:
    """A released file and the fields that hold the instruction, input and answer text."""

    relpath: str
    instruction: Optional[str] = "instruction"  # None = the test set's fixed instruction
    input: Optional[str] = None
    output: Optional[str] = None
    # claude-2's iCliniq file has the patient text inside ``prompt`` rather than an input field.
    input_inside: Optional[str] = None


@dataclass(frozen=True)
class EvalSet:
    name: str
    items: Source
    references: dict[str, Source] = field(default_factory=dict)
    fixed_instruction: Optional[str] = None
    description: str = ""


def _medsi(model: str, out: str = "output") -> Source:
    return Source(f"reference_outputs/{model}/medsi_output.jsonl", output=out)


def _icliniq(model: str) -> Source:
    if model == "claude-2":
        return Source(f"reference_outputs/{model}/iCliniq_output.jsonl", instruction=None, output="response",
                      input_inside="prompt")
    return Source(f"reference_outputs/{model}/iCliniq_output.jsonl", instruction=None, input="input", output="output")


EVAL_SETS: dict[str, EvalSet] = {t.name: t for t in (
    EvalSet(
        "medinstruct",
        items=Source("MedInstruct-test.jsonl"),
        references={m: _medsi(m, "response" if m == "claude-2" else "output") for m in REFERENCE_MODELS},
        description="MedInstruct-test: 216 clinician-written medical tasks",
    ),
    EvalSet(
        "icliniq",
        items=Source("reference_outputs/gpt-4/iCliniq_output.jsonl", instruction=None, input="input"),
        references={m: _icliniq(m) for m in REFERENCE_MODELS},
        fixed_instruction=ICLINIQ_INSTRUCTION,
        description="iCliniq: 1,000 patient questions answered as a doctor",
    ),
    EvalSet(
        "alpaca_eval",
        items=Source("model_outputs/AlpaCare-7b/alpaca_eval/seed_0.json"),
        references={"text-davinci-003": Source("model_outputs/medalpaca-7b/alpaca_eval/seed_0.json", output="output")},
        description="AlpacaFarm evaluation set: 805 general instructions",
    ),
)}


def _missing(relpath: str) -> DataError:
    return DataError(f"{relpath}: not found in $ALPACARE_DATA_DIR or the data cache; "
                     f"run `alpacare-fetch` (or `alpacare-fetch --only {relpath}`)")


def _released(relpath: str, cache_dir: str | Path | None) -> list[dict[str, Any]]:
    path = resolve_data_file(relpath, cache_dir=cache_dir)
    if path is None:
        raise _missing(relpath)
    return read_records(path)


def eval_set_name(spec: str) -> str:
    """``medinstruct`` for a named set; the file stem for a path."""
    return spec if spec in EVAL_SETS or healthbench.is_healthbench(spec) else Path(spec).stem


def load_test_items(spec: str, limit: Optional[int], seed: int, cache_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """The items a model answers: the first ``limit`` of a test set, or for HealthBench a subset of
    ``limit`` drawn with ``seed`` as simple-evals draws it, each item ``{index (in the file), id,
    prompt_id, instruction (the last user turn), input "", messages}``."""
    if not healthbench.is_healthbench(spec):
        items = load_items(spec, cache_dir)
        return items[:limit] if limit is not None else items
    drawn = healthbench.subset(healthbench.load_conversations(spec, cache_dir), limit, seed)
    return [{"index": c["index"], "id": c["prompt_id"], "prompt_id": c["prompt_id"],
             "instruction": c["prompt"][-1]["content"], "input": "", "messages": c["prompt"]} for c in drawn]


def check_eval_set(spec: str, key: str, cache_dir: str | Path | None = None) -> None:
    """A known name whose files are present, or an existing file (before any slow work)."""
    if healthbench.is_healthbench(spec):
        healthbench.data_file(spec, cache_dir)
        return
    if spec in EVAL_SETS:
        t = EVAL_SETS[spec]
        if resolve_data_file(t.items.relpath, cache_dir=cache_dir) is None:
            raise _missing(t.items.relpath)
        return
    if not Path(spec).expanduser().is_file():
        raise ConfigError(f"{key}: unknown test set {spec!r}; choose from "
                          f"{sorted(EVAL_SETS) + list(healthbench.CONVERSATION_SETS)} or give a JSON/JSONL file")


def load_items(spec: str, cache_dir: str | Path | None = None, raw: bool = False) -> list[dict[str, Any]]:
    """The test set's items in order: ``{index, id, instruction, input}`` (input "" when none);
    with ``raw``, also ``instruction_raw`` and ``input_raw``, the file's exact text (unstripped),
    which the release's judge shows (judge.prompt=paper)."""
    items = _items(spec, cache_dir)
    if not raw:
        for item in items:
            del item["instruction_raw"], item["input_raw"]
    return items


def _items(spec: str, cache_dir: str | Path | None) -> list[dict[str, Any]]:
    if spec not in EVAL_SETS:
        return _user_items(Path(spec).expanduser())
    t = EVAL_SETS[spec]
    records = _released(t.items.relpath, cache_dir)
    items = []
    for i, r in enumerate(records):
        instruction = t.fixed_instruction if t.items.instruction is None else r.get(t.items.instruction, "")
        raw_input = r.get(t.items.input, "") if t.items.input else ""
        items.append(_item(i, r, str(instruction), str(raw_input)))
    return items


def _item(index: int, record: dict[str, Any], instruction: str, raw_input: str) -> dict[str, Any]:
    """One test item, with the file's exact texts as ``instruction_raw`` and ``input_raw``."""
    shown_input = raw_input if has_input(raw_input) else ""
    return {"index": index, "id": str(record.get("id", index)), "instruction": instruction.strip(),
            "input": shown_input.strip(), "instruction_raw": instruction, "input_raw": shown_input}


def _user_items(path: Path) -> list[dict[str, Any]]:
    records = read_records(path)
    if not records:
        raise DataError(f"{path}: no test items (empty file)")
    items = []
    for i, r in enumerate(records):
        instruction = r.get("instruction")
        if not isinstance(instruction, str) or not instruction.strip():
            raise DataError(f"{path}: record {i + 1} has no instruction")
        items.append(_item(i, r, instruction, str(r.get("input") or "")))
    return items


def _normalized(text: str) -> str:
    return " ".join(str(text).split())


def load_reference(test_set: str, model: str, items: list[dict[str, Any]],
                   cache_dir: str | Path | None = None, raw: bool = False) -> list[str]:
    """``model``'s released answers to ``items``, aligned by position and checked by text;
    stripped, or with ``raw`` exactly as released (the release's judge shows them so)."""
    t = EVAL_SETS[test_set]
    if model not in t.references:
        raise ConfigError(f"judge.references: {test_set} has no {model!r} reference; it has {sorted(t.references)}")
    source = t.references[model]
    records = _released(source.relpath, cache_dir)
    if len(records) < len(items):
        raise DataError(f"{source.relpath}: {len(records)} answers for {len(items)} {test_set} items")
    answers = []
    for item, r in zip(items, records):
        where = f"{source.relpath}: record {item['index'] + 1}"
        if source.instruction is not None and source.instruction in r:
            if _normalized(r[source.instruction]) != _normalized(item["instruction"]):
                raise DataError(f"{where}: instruction differs from {test_set} item {item['index']} (misaligned files)")
        if source.input and _normalized(r.get(source.input, "")) != _normalized(item["input"]):
            raise DataError(f"{where}: input differs from {test_set} item {item['index']} (misaligned files)")
        if source.input_inside and _normalized(item["input"])[:200] not in _normalized(r.get(source.input_inside, "")):
            raise DataError(f"{where}: the patient text of {test_set} item {item['index']} is not in its prompt (misaligned files)")
        answer = str(r.get(source.output) or "")
        answers.append(answer if raw else answer.strip())
    return answers
