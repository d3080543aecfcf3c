"""Every test item the evaluation uses, as text, for the contamination check (alpacare/data/contamination.py).

A source is named as a user names it elsewhere:
- a free-form test set (``medinstruct``, ``icliniq``, ``alpaca_eval``; alpacare/data/eval_sets.py): its items'
  instruction and input (iCliniq: the patient text only, since its instruction is the one fixed sentence);
- a benchmark task or group (``alpacare_medqa_4options``, ``alpacare_mmlu``, ``alpacare_smoke_mcq``...;
  alpacare/evaluation/benchmarks/tasks_index.py): the question of every row of the split it is scored on
  (``QUESTION_FIELDS``; DROP: passage and question, as lm-eval's decontamination query);
- a JSON/JSONL file of ``{instruction, input?}`` records (a user's own test set).

``all`` stands for every test set and benchmark whose data is on this machine (the shipped smoke suite
always; the others once ``alpacare-fetch`` / ``alpacare-fetch benchmarks`` brought them).
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Iterable, Optional

from alpacare.data.contamination import ContaminationIndex, Match, TestItem
from alpacare.data.eval_sets import EVAL_SETS, load_items
from alpacare.data.fetch import resolve_data_file
from alpacare.data.jsonl import read_jsonl
from alpacare.errors import ConfigError, DataError
from alpacare.evaluation.benchmarks import tasks_index
from alpacare.evaluation.benchmarks.data import data_root, verify_files
from alpacare.prompts.alpaca import has_input

ALL = "all"
# Fields holding a benchmark row's question, by the dataset its task reads (the fields each lm-eval
# task's doc_to_text or doc_to_decontamination_query uses); shipped files by their own layout.
QUESTION_FIELDS: dict[str, tuple[str, ...]] = {
    "GBaker/MedQA-USMLE-4-options-hf": ("sent1",),
    "openlifescienceai/medmcqa": ("question",),
    "bigbio/pubmed_qa": ("QUESTION",),
    "EleutherAI/headqa": ("qtext",),
    "cais/mmlu": ("question",),
    "SaylorTwift/bbh": ("input",),
    "truthfulqa/truthful_qa": ("question",),
    "EleutherAI/drop": ("passage", "question"),
    "abachaa/MeQSum": ("CHQ",),
    "smoke/smoke_mcq.jsonl": ("question",),
    "smoke/smoke_meqsum.jsonl": ("CHQ",),
}


def shipped_tasks() -> list[str]:
    """Benchmark tasks whose data ships with the package (the smoke suite), one per data file: two
    prompt variants of one task (alpacare_smoke_meqsum and its Alpaca-template twin) are one source."""
    tasks: dict[tuple[str, ...], str] = {}
    for name, e in sorted(tasks_index.index().items()):
        if not e.is_group and not tasks_index.data_needs(name):
            tasks.setdefault(tuple(sorted(e.data_files().values())), name)
    return sorted(tasks.values())


def all_sources() -> list[str]:
    """What ``all`` stands for before asking what is local: test sets, then fetchable and shipped benchmarks."""
    return [*EVAL_SETS, *tasks_index.FETCHABLE, *shipped_tasks()]


def _kind(spec: str) -> str:
    if spec in EVAL_SETS:
        return "test_set"
    if spec in tasks_index.known_names():
        return "benchmark"
    if Path(spec).expanduser().is_file():
        return "file"
    raise ConfigError(f"dedup.decontaminate: unknown source {spec!r}; use {ALL!r}, a test set ({', '.join(EVAL_SETS)}), "
                      f"a benchmark task (e.g. alpacare_medqa_4options, alpacare_smoke_mcq) or a JSON/JSONL file")


def source_name(spec: str) -> str:
    """How a source is named in outputs: itself, or a file's stem."""
    return spec if spec in EVAL_SETS or spec in tasks_index.known_names() else Path(spec).stem


def is_local(spec: str, cache_dir: Optional[str] = None) -> bool:
    kind = _kind(spec)
    if kind == "test_set":
        return resolve_data_file(EVAL_SETS[spec].items.relpath, cache_dir=cache_dir) is not None
    if kind == "benchmark":
        root = data_root(cache_dir)
        return all((root / rel).is_file() for rel in tasks_index.data_needs(spec))
    return True


def resolve(specs: Iterable[str], cache_dir: Optional[str] = None) -> tuple[list[str], list[str]]:
    """(sources to check, sources of ``all`` that are not local). A source named explicitly must be
    local: a DataError names it and the fetch command otherwise. Raises before any slow work."""
    specs = list(specs)
    chosen, absent = [], []
    for spec in dict.fromkeys(specs):
        if spec == ALL:
            for s in all_sources():
                (chosen if is_local(s, cache_dir) else absent).append(s)
        elif is_local(spec, cache_dir):
            chosen.append(spec)
        else:
            fetch = "alpacare-fetch" if spec in EVAL_SETS else f"alpacare-fetch benchmarks --tasks {spec}"
            raise DataError(f"dedup.decontaminate: {spec} has no local data; run `{fetch}` or leave it out")
    chosen = list(dict.fromkeys(chosen))
    return chosen, [s for s in absent if s not in chosen]


def load(source: str, cache_dir: Optional[str] = None) -> list[TestItem]:
    """The test items of one local source, in file order."""
    kind = _kind(source)
    if kind == "benchmark":
        return _benchmark_items(source, cache_dir)
    name = source_name(source)
    fixed = EVAL_SETS[source].fixed_instruction if kind == "test_set" else None
    out = []
    for item in load_items(source, cache_dir):
        parts = [item["input"]] if fixed else [item["instruction"], item["input"]]
        out.append(TestItem(name, item["id"], "\n".join(p for p in parts if p)))
    return out


def _split_file(leaf: tasks_index.TaskYaml) -> tuple[str, str]:
    """(split scored, its data file) of an lm-eval leaf task."""
    cfg = leaf.config
    split = cfg.get("test_split") or cfg.get("validation_split")
    files = leaf.data_files()
    if split not in files:
        raise DataError(f"{leaf.path}: no data file for its scored split {split!r}")
    return split, files[split]


def _fields_for(rel: str) -> tuple[str, ...]:
    for key, fields in QUESTION_FIELDS.items():
        if rel.startswith(key):
            return fields
    raise DataError(f"contamination: no question field known for benchmark data {rel}; add it to QUESTION_FIELDS")


def _rows(path: Path, fields: tuple[str, ...], source: str, prefix: str) -> list[TestItem]:
    items = []
    for i, row in enumerate(read_jsonl(path)):
        text = "\n".join(str(row.get(f) or "").strip() for f in fields).strip()
        if text:  # the row's own id where it has one, else its position in the file
            items.append(TestItem(source, f"{prefix}{row.get('id', i)}", text))
    return items


def _benchmark_items(task: str, cache_dir: Optional[str]) -> list[TestItem]:
    root = data_root(cache_dir)
    verify_files(root, tasks_index.data_needs(task), task)
    items: list[TestItem] = []
    leaves = tasks_index.leaves(task)
    for leaf in leaves:
        _, path = _split_file(leaf)
        prefix = f"{leaf.name}/" if len(leaves) > 1 else ""
        if path.startswith(tasks_index.DATA_PLACEHOLDER + "/"):
            rel = path[len(tasks_index.DATA_PLACEHOLDER) + 1:]
            items += _rows(root / rel, _fields_for(rel), task, prefix)
        else:
            rel = path[len(tasks_index.TASKS_PLACEHOLDER) + 1:]
            items += _rows(tasks_index.TASKS_DIR / rel, _fields_for(rel), task, prefix)
    return items


def load_all(specs: Iterable[str], cache_dir: Optional[str] = None) -> tuple[list[TestItem], dict[str, int], list[str]]:
    """Items of every local source in ``specs``; (items, items per source, sources of ``all`` not local)."""
    sources, absent = resolve(specs, cache_dir)
    items: list[TestItem] = []
    counts: dict[str, int] = {}
    for s in sources:
        got = load(s, cache_dir)
        counts[source_name(s)] = len(got)
        items += got
    return items, counts, absent


def training_text(record: dict) -> str:
    """What a training record shows the student of a task: its instruction and its input, as one text."""
    instruction = str(record.get("instruction") or "")
    raw_input = record.get("input")
    return f"{instruction}\n{raw_input}" if has_input(raw_input) else instruction


def contamination_of(texts: list[str], specs: Iterable[str], threshold: float,
                     cache_dir: Optional[str] = None) -> tuple[dict, list[Match]]:
    """Check ``texts`` against the test items of ``specs`` ([] = no check): (summary for stats.json and
    the report, the texts that contain an item above ``threshold``)."""
    specs = list(specs)
    if not specs:
        return {"enabled": False, "checked": len(texts), "removed": 0, "rows": []}, []
    t0 = time.perf_counter()
    items, counts, absent = load_all(specs, cache_dir)
    index = ContaminationIndex(items)
    result = index.check(texts, threshold)
    by_source = Counter(m.item.source for m in result.matches)
    summary = {
        "enabled": True, "sources": specs, "threshold": threshold, "checked": len(texts),
        "removed": len(result.matches), "not_local": absent, "items_too_short": index.skipped_short,
        "rows": [{"source": s, "items": n, "removed": by_source.get(s, 0)} for s, n in counts.items()],
        "seconds": round(time.perf_counter() - t0, 3), "check_seconds": result.stats["check_seconds"],
    }
    return summary, result.matches
