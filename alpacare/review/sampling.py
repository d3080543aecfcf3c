"""Inputs for review packages: Alpaca data for an audit, two systems' outputs for a pairwise study.

Audit data: an Alpaca JSON list or JSONL records with ``instruction``, optional ``input``, ``output``
and optional ``type`` (the stratum; canonical task type when recognized, ``unknown`` when absent).

Pairwise outputs, each file one of: our predict output (JSONL: instruction, input, output), a
released model-output file (JSON list: instruction, optional input, response), or a reference file
(JSONL: instruction, input, output, or claude-2's response). The answer is ``response`` when the
record has one (released model outputs also carry alpaca_eval's reference as ``output``), else
``output``. The two files are aligned by position and must have the same instructions.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from alpacare.data.jsonl import read_records
from alpacare.data.seeds import normalize_type
from alpacare.errors import DataError
from alpacare.prompts.alpaca import has_input

UNKNOWN_TYPE = "unknown"


def _text(record: dict[str, Any], field: str, where: str, required: bool = True) -> str:
    value = record.get(field)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}: {field} must be a string, got {type(value).__name__}")
    return value


def _read(path: Path) -> list[dict[str, Any]]:
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a JSON or JSONL file")
    records = read_records(path)
    if not records:
        raise DataError(f"{path}: no records")
    return records


def _stratum(record: dict[str, Any]) -> str:
    label = record.get("type")
    if not isinstance(label, str) or not label.strip():
        return UNKNOWN_TYPE
    try:
        return normalize_type(label)
    except DataError:
        return label.strip()


def load_alpaca(path: str | Path) -> list[dict[str, Any]]:
    """Audit items: ``{source_index, type, instruction, input, output}``; a bad record names its index."""
    path = Path(path)
    items = []
    for i, r in enumerate(_read(path)):
        where = f"{path}: record {i}"
        instruction = _text(r, "instruction", where)
        if not instruction.strip():
            raise DataError(f"{where}: instruction is empty")
        raw_input = _text(r, "input", where, required=False)
        items.append({"source_index": i, "type": _stratum(r), "instruction": instruction,
                      "input": raw_input if has_input(raw_input) else "", "output": _text(r, "output", where)})
    return items


def allocate(sizes: dict[str, int], n: int, rng: random.Random | None = None) -> dict[str, int]:
    """Proportional allocation of n over strata (largest remainder), at least one per stratum when n allows.

    Equal remainders are broken at random (``rng``, seeded by the caller), not by name, so no
    stratum is favoured systematically.
    """
    total = sum(sizes.values())
    if n >= total:
        return dict(sizes)
    names = sorted(sizes)
    alloc = {s: 0 for s in names}
    if n >= len(names):
        alloc = {s: 1 for s in names}
    rest = n - sum(alloc.values())
    spare = {s: sizes[s] - alloc[s] for s in names}
    spare_total = sum(spare.values())
    quotas = {s: rest * spare[s] / spare_total if spare_total else 0 for s in names}
    for s in names:
        alloc[s] += int(quotas[s])
    left = n - sum(alloc.values())
    rng = rng or random.Random(0)
    tiebreak = {s: rng.random() for s in names}
    order = sorted(names, key=lambda s: (-round(quotas[s] - int(quotas[s]), 9), tiebreak[s]))
    for s in order:
        if left == 0:
            break
        if alloc[s] < sizes[s]:
            alloc[s] += 1
            left -= 1
    return alloc


def stratified_sample(items: list[dict[str, Any]], n: int, seed: int) -> tuple[list[dict[str, Any]], dict[str, dict[str, int]]]:
    """n items stratified by ``type``, shuffled into review order; also {type: {available, sampled}}."""
    if n < 1:
        raise DataError(f"--n must be at least 1, got {n}")
    rng = random.Random(seed)
    strata: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for item in items:
        strata[item["type"]].append(item)
    alloc = allocate({s: len(v) for s, v in strata.items()}, n, rng)
    chosen = []
    for s in sorted(strata):
        chosen.extend(rng.sample(strata[s], alloc[s]))
    rng.shuffle(chosen)
    return chosen, {s: {"available": len(strata[s]), "sampled": alloc[s]} for s in sorted(strata)}


def load_outputs(path: str | Path) -> list[dict[str, str]]:
    """One system's answers: ``{instruction, input, answer}`` per record, in file order."""
    path = Path(path)
    out = []
    for i, r in enumerate(_read(path)):
        where = f"{path}: record {i}"
        if "instruction" not in r:
            raise DataError(f"{where}: no instruction field (expected instruction + output or response)")
        field = "response" if isinstance(r.get("response"), str) else "output"
        if field not in r:
            raise DataError(f"{where}: no output or response field")
        raw_input = _text(r, "input", where, required=False)
        out.append({"instruction": _text(r, "instruction", where), "input": raw_input if has_input(raw_input) else "",
                    "answer": _text(r, field, where)})
    return out


def _clip(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def align(a: list[dict[str, str]], b: list[dict[str, str]], path_a: Path, path_b: Path) -> list[dict[str, str]]:
    """Pair the two systems' answers by position; instructions (and inputs, where both have one) must match."""
    for i, (x, y) in enumerate(zip(a, b)):
        if " ".join(x["instruction"].split()) != " ".join(y["instruction"].split()):
            extra = f"; the files also differ in length ({len(a)} vs {len(b)})" if len(a) != len(b) else ""
            raise DataError(f"record {i}: instructions differ: {path_a} has {_clip(x['instruction'])!r}, "
                            f"{path_b} has {_clip(y['instruction'])!r}{extra}")
        if x["input"] and y["input"] and x["input"].strip() != y["input"].strip():
            raise DataError(f"record {i}: inputs differ between {path_a} and {path_b}")
    if len(a) != len(b):
        raise DataError(f"record {min(len(a), len(b))}: {path_a} has {len(a)} records, {path_b} has {len(b)} "
                        f"(the first {min(len(a), len(b))} match)")
    return [{"source_index": i, "instruction": x["instruction"], "input": x["input"] or y["input"],
             "answer_of": {"a": x["answer"], "b": y["answer"]}} for i, (x, y) in enumerate(zip(a, b))]


_GENERIC = re.compile(r"^(seed_?\d+|.*_outputs?|outputs?|medinstruct|icliniq|alpaca_eval|medsi|predict(ions?)?"
                      r"|test|results?|generations?|answers?|model_outputs|reference_outputs)$", re.I)


def system_name(path: str | Path) -> str:
    """A readable name from a path: the first part, from the file back, that is not a generic name."""
    p = Path(path).resolve()
    for part in [p.stem, *[q.name for q in p.parents][:3]]:
        if part and not _GENERIC.match(part):
            return part
    return p.stem
