"""The ``dedup`` stage: drop instructions that copy a test item, then near-duplicates by ROUGE-L, as
self-instruct and Alpaca do.

Input: a JSONL of instruction records (``dedup.input=FILE``, else this run's
``instructions/instructions.jsonl``); every record needs a non-empty string ``instruction``
and keeps all its other fields. Seeds (``dedup.against_seeds``) are the seed tasks the
instructions stage uses (``instructions.seeds``).

Contamination (``dedup.decontaminate``, default ``[all]``: every test set and benchmark whose data is
local; ``[]`` turns it off): an instruction whose instruction + input contains a test item (more than
``dedup.contamination_threshold`` of the item's words in order, alpacare/data/contamination.py) is
removed first, so it can neither reach training nor knock out a clean near-duplicate.

Modes (``dedup.mode``), both exact with respect to rouge_score (see ``alpacare.data.rouge``):
- greedy: keep an instruction iff its ROUGE-L F against every seed and every instruction kept
  before it is <= ``dedup.threshold`` (self-instruct, Alpaca).
- pairwise: drop every instruction that has any other instruction (or seed) above the
  threshold (AlpaCare's released filter.py).

Progress: a bar on a terminal, and a log line (instructions done, kept, rate, ETA) every
``PROGRESS_LOG_EVERY_S`` seconds in the terminal and the run's log, between chunks of the filter.

Outputs in ``<run>/dedup/``, written only after the input has been fully validated and
filtered, each atomically, ``stats.json`` last (its presence means the stage completed):
- ``kept.jsonl``: kept records, unchanged.
- ``contaminated.jsonl``: removed copies of test items: the record plus ``test_source``, ``test_id``,
  ``test_item`` (the matched item's text) and ``containment`` (its score).
- ``dropped.jsonl``: dropped records plus ``nearest_instruction`` (the text that knocked
  each out), ``nearest_is_seed`` and ``rouge_l`` (their score).
- ``similarity.png``: histogram of every instruction's max ROUGE-L with the threshold drawn,
  as in the self-instruct paper's figure; the instructions whose max is below ``similarity_floor``
  (``dedup.similarity_floor``: not searched for) are one hatched bar over that range.
- ``stats.json``: counts, kept ratio, settings, seconds, histogram counts in 0.05 bins (exact from
  ``similarity_floor`` up), ``similarity_floor`` and ``below_similarity_floor`` (how many maxima are
  below it, as lower bounds), the filter's ``candidate_pairs`` and ``lcs_computed``;
  ``contaminated`` (removed as copies) and ``contamination`` (sources and their item counts, sources of
  ``all`` not on this machine, threshold, removed per source, timings).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from alpacare.data.jsonl import read_jsonl, write_jsonl_atomic
from alpacare.errors import ConfigError, DataError
from alpacare.data.rouge import FilterResult, greedy_filter, pairwise_filter
from alpacare.stages import CONTAMINATED, INSTRUCTIONS, KEPT, StageContext

log = logging.getLogger(__name__)

FILTERS = {"greedy": greedy_filter, "pairwise": pairwise_filter}
# dedup.similarity_floor=null: every maximum exact up to this many instructions (alpacare/config.py).
EXACT_SIMILARITY_UP_TO = 10_000
# Seconds between progress lines in the log (the terminal bar updates as it goes).
PROGRESS_LOG_EVERY_S = 10.0
PROGRESS_FORMAT = "{n_fmt}/{total_fmt} instructions ({percentage:.0f}%){postfix}, {rate_fmt}, ETA {remaining}"
BIN_WIDTH = 0.05
BIN_EDGES = np.linspace(0.0, 1.0, int(round(1 / BIN_WIDTH)) + 1)


def check(cfg: Any) -> None:
    """Before any stage runs: every contamination source is known and, when named, local."""
    if cfg.dedup.decontaminate:
        from alpacare.evaluation.test_items import resolve

        resolve(list(cfg.dedup.decontaminate), cfg.cache_dir)


def run(ctx: StageContext) -> dict[str, Any]:
    started = time.perf_counter()
    cfg = ctx.cfg.dedup
    if cfg.mode not in FILTERS:
        raise ConfigError(f"dedup.mode: must be one of {sorted(FILTERS)}, got {cfg.mode!r}")
    path = ctx.input_path(INSTRUCTIONS)
    records = read_jsonl(path)
    instructions = instruction_texts(records, path)
    contamination, removed = check_contamination(records, list(cfg.decontaminate), float(cfg.contamination_threshold),
                                                 ctx.cfg.cache_dir)
    clean = [i for i in range(len(records)) if i not in removed]
    seeds = seed_instructions(ctx) if cfg.against_seeds else []
    log.info("dedup: %d instructions from %s (%d copies of test items removed), %d seeds, %s mode, threshold %s",
             len(instructions), path, len(removed), len(seeds), cfg.mode, cfg.threshold)

    floor = similarity_floor(cfg.similarity_floor, float(cfg.threshold), len(clean))
    result = run_filter(FILTERS[cfg.mode], [instructions[i] for i in clean], float(cfg.threshold), seeds, floor)

    out = ctx.dir
    stats = build_stats(result, path, bool(cfg.against_seeds), time.perf_counter() - started)
    stats.update(total=len(records), records_in=len(records), kept_ratio=round(len(result.kept) / len(records), 6),
                 contaminated=len(removed), contamination=contamination)
    write_jsonl_atomic(CONTAMINATED.path(ctx.run_dir), (removed[i] for i in sorted(removed)))
    write_jsonl_atomic(KEPT.path(ctx.run_dir), (records[clean[i]] for i in result.kept))
    write_jsonl_atomic(out / "dropped.jsonl", dropped_records([records[i] for i in clean], result))
    plot = plot_similarity(out / "similarity.png", result)
    ctx.write_stats(stats)

    ctx.tracker.log({f"dedup/{k}": v for k, v in stats.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    ctx.tracker.log({f"dedup/contaminated/{row['source']}": row["removed"] for row in contamination.get("rows", [])})
    ctx.tracker.histogram("dedup/max_similarity", result.max_similarity, BIN_EDGES)
    ctx.tracker.image("dedup/similarity", plot)
    return {k: stats[k] for k in ("total", "contaminated", "kept", "dropped", "kept_ratio", "threshold", "mode")}


def check_contamination(records: list[dict[str, Any]], sources: list[str], threshold: float,
                        cache_dir: Any) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    """(the ``contamination`` stats, {record index: record + its match}) for the records that copy a
    test item of ``sources`` ([] = no check)."""
    from alpacare.evaluation.test_items import contamination_of, training_text

    summary, matches = contamination_of([training_text(r) for r in records], sources, threshold, cache_dir)
    removed = {m.index: {**records[m.index], "test_source": m.item.source, "test_id": m.item.id,
                         "test_item": m.item.text, "containment": round(m.score, 6)} for m in matches}
    return summary, removed


def instruction_texts(records: list[dict[str, Any]], path: Path) -> list[str]:
    """Each record's instruction; a DataError naming file and line for a record without one."""
    if not records:
        raise DataError(f"{path}: no records (the file is empty)")
    texts = []
    for k, record in enumerate(records):
        text = record.get("instruction")
        if not isinstance(text, str) or not text.strip():
            what = "missing" if text is None else f"not a non-empty string ({type(text).__name__})"
            raise DataError(f'{path}:{_line_of_record(path, k)}: "instruction" is {what}')
        texts.append(text)
    return texts


def _line_of_record(path: Path, index: int) -> int:
    """1-based line of the index-th record (read_jsonl skips blank lines)."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if raw.strip():
                if index == 0:
                    return lineno
                index -= 1
    return 0


def seed_instructions(ctx: StageContext) -> list[str]:
    from alpacare.data.seeds import load_seed_tasks

    return [t["instruction"] for t in load_seed_tasks(ctx.cfg.instructions.seeds, ctx.cfg.cache_dir,
                                                      closed_types=ctx.cfg.instructions.closed_types)]


def similarity_floor(configured: Any, threshold: float, n: int) -> float:
    """``dedup.similarity_floor``, or when null: 0.0 (every maximum exact) for inputs of up to
    EXACT_SIMILARITY_UP_TO instructions, else the threshold."""
    if configured is not None:
        return float(configured)
    return 0.0 if n <= EXACT_SIMILARITY_UP_TO else threshold


def run_filter(filter_fn, instructions: list[str], threshold: float, seeds: list[str],
               floor: float) -> FilterResult:
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    total = len(instructions)
    started = last_line = time.perf_counter()
    # The bar only helps a person watching; the log (and the terminal, through it) gets a line every
    # PROGRESS_LOG_EVERY_S with tqdm's own rate and ETA.
    bar = tqdm(total=total, desc="dedup", unit="inst", file=sys.stderr, disable=not sys.stderr.isatty(),
               dynamic_ncols=True)

    def progress(done: int, kept: int) -> None:
        nonlocal last_line
        bar.update(done - bar.n)
        bar.set_postfix(kept=kept, refresh=False)
        now = time.perf_counter()
        if now - last_line >= PROGRESS_LOG_EVERY_S and done < total:
            last_line = now
            log.info("dedup: %s", tqdm.format_meter(done, total, now - started, unit=" inst", postfix=f"kept {kept}",
                                                    bar_format=PROGRESS_FORMAT))

    with bar, logging_redirect_tqdm():
        result = filter_fn(instructions, threshold, seeds, progress=progress, floor=floor)
    log.info("dedup: %d of %d instructions kept in %.1fs (%d candidate pairs, %d LCS computed)", len(result.kept),
             total, time.perf_counter() - started, result.stats["candidate_pairs"], result.stats["lcs_computed"])
    return result


def dropped_records(records: list[dict[str, Any]], result: FilterResult) -> list[dict[str, Any]]:
    return [
        {**records[i], "nearest_instruction": result.nearest_text(i), "nearest_is_seed": bool(result.nearest_seed[i] >= 0),
         "rouge_l": float(result.max_similarity[i])}
        for i in result.dropped
    ]


def histogram(values: np.ndarray) -> list[int]:
    counts, _ = np.histogram(values, bins=BIN_EDGES)  # the last bin includes 1.0
    return [int(c) for c in counts]


def build_stats(result: FilterResult, path: Path, against_seeds: bool, seconds: float) -> dict[str, Any]:
    total = len(result.max_similarity)
    kept = len(result.kept)
    # total/records_in/kept_ratio count the contaminated records too: run() updates them.
    return {
        "input": str(path),
        "total": total,
        "kept": kept,
        "dropped": total - kept,
        "kept_ratio": round(kept / total, 6) if total else 0.0,
        "records_in": total, "records_out": kept,
        "threshold": result.threshold,
        "mode": result.mode,
        "against_seeds": against_seeds,
        "seeds": len(result.seeds),
        "seconds": round(seconds, 3),
        "filter_seconds": result.stats.get("seconds"),
        "lcs_computed": result.stats.get("lcs_computed"),
        "candidate_pairs": result.stats.get("candidate_pairs"),
        "similarity_floor": result.floor,
        # Instructions whose max is below the floor (their histogram bins hold lower bounds).
        "below_similarity_floor": int((result.max_similarity < result.floor).sum()),
        # A lower bound where similarity_floor > 0 (maxima below it are).
        "mean_max_similarity": round(float(np.mean(result.max_similarity)), 6) if total else 0.0,
        "histogram": {
            "bin_width": BIN_WIDTH,
            "edges": [round(float(e), 2) for e in BIN_EDGES],
            "counts": histogram(result.max_similarity),
        },
    }


def plot_similarity(path: Path, result: FilterResult) -> Path:
    from alpacare.report.plots import plt, save_figure

    keep = np.zeros(len(result.max_similarity), dtype=bool)
    keep[result.kept] = True
    sims = result.max_similarity
    # Maxima below the floor were not searched for: one bar over that range, not their lower bounds.
    below = sims < result.floor
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.hist([sims[keep & ~below], sims[~keep]], bins=BIN_EDGES, stacked=True, color=["#4c72b0", "#dd8452"],
            label=[f"kept ({keep.sum()})", f"dropped ({(~keep).sum()})"])
    if below.any():
        ax.bar(0, below.sum() * BIN_WIDTH / result.floor, width=result.floor, align="edge", color="#4c72b0",
               alpha=0.35, hatch="//", label=f"kept, max < {result.floor:g} (not searched): {below.sum()}")
    ax.axvline(result.threshold, color="black", linestyle="--", linewidth=1.2, label=f"threshold {result.threshold:g}")
    against = "earlier kept instructions" if result.mode == "greedy" else "all other instructions"
    if len(result.seeds):
        against = "seeds + " + against
    ax.set_xlabel(f"max ROUGE-L F vs {against}")
    ax.set_ylabel("instructions")
    ax.set_xlim(0, 1)
    ax.set_title(f"ROUGE-L similarity ({result.mode}, {len(result.max_similarity)} instructions)")
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)
