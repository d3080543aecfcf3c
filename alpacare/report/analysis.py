"""The paper's dataset analysis for any Alpaca-format dataset, side by side with the seed tasks.

AlpaCare's data section describes MedInstruct-52k by its task types, topics, views (who asks or
reads), difficulty, lengths, lexical diversity and how far the generated tasks are from the
clinician-written seeds. ``analyze`` computes all of that for any list of records (pure: no I/O,
no plotting; ``load_dataset`` reads a file, ``alpacare/report/charts.py`` draws the figures):

- counts per task type and view after the project's normalization (``alpacare.data.seeds``:
  "Rewrites" -> "Rewrite", "Expert (Physician)" -> "Clinician"; a type that matches no canonical
  type keeps its label as written), topic (as written, stripped), difficulty 1-5;
- lengths in whitespace-separated words of instruction, input (records that have one) and output;
  the share of records without input ("", "<noinput>", "<no input>", "<none>" or absent);
- lexical diversity of the instructions, over rouge_score's tokens (lowercase ``[a-z0-9]+``, the
  tokens the dedup filter compares): distinct-1/2 (distinct n-grams / all n-grams, n-grams within
  each instruction) and the linguistic entropy (Shannon entropy in bits of the token distribution);
- the most frequent leading words (the first token of each instruction: in imperative task
  instructions almost always the verb: "explain", "describe", "list"...);
- each instruction's maximum ROUGE-L F against the seed instructions (``alpacare.data.rouge``'s exact
  fast kernel, ``max_similarity_to``), as a histogram in 0.05 bins;
- the tasks of each type that the seed set does not have at all.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from alpacare.data.jsonl import read_json_or_jsonl
from alpacare.data.seeds import DIFFICULTY_RANGE, normalize_type, normalize_view
from alpacare.errors import DataError
from alpacare.prompts.alpaca import has_input
from alpacare.data.rouge import max_similarity_to, tokenize

LENGTH_FIELDS = ("instruction", "input", "output")
CATEGORY_FIELDS = ("type", "view", "difficulty", "topic")
BIN_EDGES = np.linspace(0.0, 1.0, 21)
DEDUP_THRESHOLD = 0.7  # the paper's ROUGE-L filter threshold, marked in the histogram


@dataclass
class Analysis:
    """``summary``: JSON-ready numbers; ``lengths`` and ``rouge``: per-record values for the charts."""

    summary: dict[str, Any]
    lengths: dict[str, list[int]] = field(default_factory=dict)
    rouge: Optional[np.ndarray] = None


def load_dataset(path: str | Path) -> list[dict[str, Any]]:
    """Records of an Alpaca JSON list or a JSONL file (the content decides, not the suffix). A file
    of another shape is one DataError naming the path (and the record, when one is at fault)."""
    path = Path(path).expanduser()
    data = read_json_or_jsonl(path)
    if data == []:
        raise DataError(f"{path}: empty file, expected Alpaca records")
    if isinstance(data, dict):
        data = [data]  # a one-record JSONL file
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of Alpaca records, got a JSON {type(data).__name__}")
    if not data:
        raise DataError(f"{path}: no records")
    for i, record in enumerate(data):
        if not isinstance(record, dict):
            raise DataError(f"{path}: record {i} is a JSON {type(record).__name__}, expected an object with an instruction")
        if not isinstance(record.get("instruction"), str) or not record["instruction"].strip():
            raise DataError(f"{path}: record {i} has no instruction (expected Alpaca records: instruction, input, output)")
    return data


def _type(label: Any) -> Optional[str]:
    if not isinstance(label, str) or not label.strip():
        return None
    try:
        return normalize_type(label)
    except DataError:
        return label.strip()


def _difficulty(value: Any) -> Optional[str]:
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, int) and DIFFICULTY_RANGE[0] <= value <= DIFFICULTY_RANGE[1]:
        return str(value)
    return None


def categories(record: dict[str, Any]) -> dict[str, Optional[str]]:
    """A record's type, view, difficulty and topic as counted (None = the record lacks it)."""
    view = record.get("view")
    topic = record.get("topic")
    return {
        "type": _type(record.get("type")),
        "view": normalize_view(view) if isinstance(view, str) and view.strip() else None,
        "difficulty": _difficulty(record.get("difficulty")),
        "topic": topic.strip() if isinstance(topic, str) and topic.strip() else None,
    }


def words(text: Any) -> int:
    return len(text.split()) if isinstance(text, str) else 0


def distinct_n(token_lists: Sequence[Sequence[str]], n: int) -> Optional[float]:
    """Distinct n-grams over all n-grams, n-grams taken within each token list."""
    grams = [tuple(toks[i:i + n]) for toks in token_lists for i in range(len(toks) - n + 1)]
    return round(len(set(grams)) / len(grams), 6) if grams else None


def entropy_bits(tokens: Sequence[str]) -> Optional[float]:
    """Shannon entropy (bits) of the token frequency distribution."""
    if not tokens:
        return None
    counts = np.array(list(Counter(tokens).values()), dtype=np.float64)
    p = counts / counts.sum()
    return round(float(-(p * np.log2(p)).sum()), 6)


def _describe(values: Sequence[float]) -> dict[str, Any]:
    if not len(values):
        return {"n": 0, "mean": None, "median": None, "p90": None, "max": None}
    a = np.asarray(values, dtype=np.float64)
    return {"n": int(a.size), "mean": round(float(a.mean()), 2), "median": round(float(np.median(a)), 2),
            "p90": round(float(np.percentile(a, 90)), 2), "max": round(float(a.max()), 2)}


def _sorted_counts(counter: Counter, ordered: bool = False) -> dict[str, int]:
    if ordered:
        return dict(sorted(counter.items(), key=lambda kv: (len(kv[0]), kv[0])))
    return dict(sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])))


def analyze(records: Sequence[dict[str, Any]], seeds: Optional[Sequence[dict[str, Any]]] = None,
            top_n: int = 15) -> Analysis:
    """The analysis of ``records``; with ``seeds``, also the max ROUGE-L of each instruction
    against the seed instructions and the tasks per type the seeds lack."""
    n = len(records)
    cats = [categories(r) for r in records]
    counts = {f: Counter(c[f] for c in cats if c[f] is not None) for f in CATEGORY_FIELDS}
    lengths = {
        "instruction": [words(r.get("instruction")) for r in records],
        "input": [words(r.get("input")) for r in records if has_input(r.get("input"))],
        "output": [words(r.get("output")) for r in records if isinstance(r.get("output"), str) and r["output"].strip()],
    }
    tokens = [tokenize(r.get("instruction") or "") for r in records]
    flat = [t for toks in tokens for t in toks]
    leading = Counter(toks[0] for toks in tokens if toks)
    summary: dict[str, Any] = {
        "records": n,
        "with_field": {f: sum(c[f] is not None for c in cats) for f in CATEGORY_FIELDS},
        "type": _sorted_counts(counts["type"]),
        "view": _sorted_counts(counts["view"]),
        "difficulty": _sorted_counts(counts["difficulty"], ordered=True),
        "topics": len(counts["topic"]),
        "topic_top": dict(counts["topic"].most_common(top_n)),
        "lengths": {f: _describe(v) for f, v in lengths.items()},
        "without_input": n - len(lengths["input"]),
        "share_without_input": round((n - len(lengths["input"])) / n, 6) if n else None,
        "instruction_tokens": len(flat),
        "vocabulary": len(set(flat)),
        "distinct_1": distinct_n(tokens, 1),
        "distinct_2": distinct_n(tokens, 2),
        "entropy_bits": entropy_bits(flat),
        "leading_words": dict(leading.most_common(top_n)),
    }
    result = Analysis(summary, lengths)
    if seeds is not None:
        seed_types = {c["type"] for c in (categories(s) for s in seeds) if c["type"] is not None}
        summary["types_missing_in_seeds"] = {t: k for t, k in summary["type"].items() if t not in seed_types}
        seed_texts = [s["instruction"] for s in seeds if isinstance(s.get("instruction"), str)]
        if seed_texts and n:
            sims = max_similarity_to([r["instruction"] for r in records], seed_texts).max_similarity
            hist, _ = np.histogram(sims, bins=BIN_EDGES)
            summary["rouge_vs_seeds"] = {
                **_describe(sims),
                "seeds": len(seed_texts),
                f"share_above_{DEDUP_THRESHOLD}": round(float((sims > DEDUP_THRESHOLD).mean()), 6),
                "histogram": {"edges": [round(float(e), 2) for e in BIN_EDGES], "counts": [int(c) for c in hist]},
            }
            result.rouge = sims
    return result


def percent(x: Optional[float]) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"
