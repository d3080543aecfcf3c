"""Stage 8, ``report``: one page per run, ``report/report.md`` and a self-contained ``report/report.html``.

Reads only what the other stages left in the run dir (their ``stats.json``, declared artifacts,
``train/metrics.jsonl``, ``review/*_summary.json``) and what the CLI recorded (``invocations.jsonl``,
``ledgers.json``, Hydra's ``.hydra/``; alpacare/rundir.py), so it also runs alone on an existing
run: ``alpacare stages=[report] hydra.run.dir=RUN``. ``report.data=FILE`` analyses any Alpaca
JSON/JSONL, with or without a run around it.

Sections, top to bottom; one is left out when its stage did not run (no ``stats.json``), and left
out with a note when its input is unreadable (corrupt stats, a dataset of the wrong shape):

1. Results: the numbers a reader came for (win rates with SE and LC, benchmark scores, data counts,
   contamination removed, cost, time; alpacare/report/sections.py ``results_section``).
2. Contamination: copies of test items dedup removed (or, with ``report.data``, that the file holds
   against ``dedup.decontaminate``'s sources; written to ``report/contamination.jsonl``).
3. Win rates: test sets x references, with SE, n and the length-controlled value, and the bar chart.
   HealthBench: scores per set, theme and axis with bootstrap std and the chart, the rubric items the
   answers lost most points on (with the answers), and the grader check against physicians.
4. Benchmarks: lm-eval table and chart.
5. Data: counts, rejects, dedup kept ratio; tokens and cost per stage and role.
6. Dataset analysis (alpacare/report/analysis.py) of the generated data or ``report.data``, next to the seeds.
7. Training: loss curve from ``train/metrics.jsonl``, tokens/s, peak memory, time.
8. Predictions: items and speed per test set.
9. Human review: ``alpacare-review`` summaries, when imported with ``--run-dir``.
10. Run: the commands run on this dir (stages, overrides) and the key settings of each stage.
11. Artifacts: where each stage's files lie.

Also written: ``report/analysis.json`` (the dataset analysis numbers), the charts as PNGs, and
``stats.json`` (sections present, sections omitted with why). W&B: every table and chart.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

from alpacare import rundir
from alpacare.data.jsonl import read_jsonl, write_bytes_atomic, write_json_atomic, write_jsonl_atomic
from alpacare.errors import DataError
from alpacare.report.analysis import analyze, load_dataset
from alpacare.report.html import Block, fmt, note, p, to_html, to_markdown
from alpacare.report.sections import (
    analysis_blocks,
    anchor,
    artifacts_section,
    benchmark_section,
    contamination_section,
    data_section,
    healthbench_section,
    predictions_section,
    results_section,
    review_section,
    run_section,
    training_section,
    win_rates_section,
)
from alpacare.stages import CONTAMINATED, INSTRUCTIONS, KEPT, REPORT, REPORT_HTML, STAGE_ORDER, STAGES, STATS_FILE, TRAIN_SET, StageContext
from alpacare.stats_schema import StatsProblem, read_stats

log = logging.getLogger(__name__)

# The dataset analysed by default: the most finished data the run has.
DATASET_ARTIFACTS = (TRAIN_SET, KEPT, INSTRUCTIONS)


def check(cfg: Any) -> None:
    """Before any stage runs: an explicit dataset exists and has the Alpaca shape."""
    if cfg.report.data:
        load_dataset(str(cfg.report.data))
        if cfg.dedup.decontaminate:
            from alpacare.evaluation.test_items import resolve

            resolve(list(cfg.dedup.decontaminate), cfg.cache_dir)


def run(ctx: StageContext) -> dict[str, Any]:
    run_dir, out = ctx.run_dir, ctx.dir
    stats, omitted = _read_all_stats(run_dir)
    ran = [s for s in stats if s != "report"]
    if not ran and not ctx.cfg.report.data:
        raise DataError(f"{run_dir}: not a run dir with results (no <stage>/stats.json) and report.data is not set; "
                        f"nothing to report")
    blocks: list[Block] = []
    sections: list[str] = []

    def add(name: str, section: Optional[list[Block]]) -> None:
        if section:
            blocks.extend(section)
            sections.append(name)

    # Results first (the numbers a reader came for), the detail behind them, the settings last.
    add("results", results_section(run_dir, stats))
    add("contamination", contamination_blocks(ctx, stats.get("dedup")))
    for stage, reason in omitted.items():
        blocks.append(note(f"{stage}: section left out, {reason}"))
    add("win_rates", win_rates_section(run_dir, stats.get("judge"), out))
    add("healthbench", healthbench_section(run_dir, stats.get("judge"), stats.get("grader_check"), out,
                                           int(ctx.cfg.healthbench.worst_criteria)))
    add("benchmarks", benchmark_section(stats.get("benchmark"), out))
    add("data", data_section(run_dir, stats))
    analysis_blocks, analysis_note = analysis_section(ctx, out)
    add("analysis", analysis_blocks)
    if analysis_note:
        omitted["analysis"] = analysis_note
        blocks.append(note(f"dataset analysis left out: {analysis_note}"))
    add("training", training_section(run_dir, stats.get("train"), out))
    add("predictions", predictions_section(stats.get("predict")))
    review_blocks, review_notes = review_section(run_dir)
    add("review", review_blocks)
    omitted.update(review_notes)
    add("run", run_section(run_dir, ran))
    add("artifacts", artifacts_section(run_dir, [*ran, "report"]))

    title = f"alpacare report: {run_dir.name}"
    subtitle = f"{run_dir.resolve()}: stages {', '.join(ran) or 'none'}"
    write_bytes_atomic(REPORT.path(run_dir), to_markdown(title, [p(subtitle), *blocks], out).encode("utf-8"))
    write_bytes_atomic(REPORT_HTML.path(run_dir), to_html(title, subtitle, blocks).encode("utf-8"))
    _log_to_wandb(ctx, blocks)
    ctx.write_stats({"sections": sections, "omitted": omitted, "stages_reported": ran,
                     "report": str(REPORT.path(run_dir)), "html": str(REPORT_HTML.path(run_dir))})
    return {"sections": len(sections), "html": str(REPORT_HTML.path(run_dir)), "report": str(REPORT.path(run_dir))}


def _read_all_stats(run_dir: Path) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    found, problems = {}, {}
    for stage in STAGE_ORDER:
        try:
            s = read_stats(run_dir, stage)
        except StatsProblem as e:
            problems[stage] = str(e)
            log.warning("report: %s", e)
            continue
        if s is not None:
            found[stage] = s
    return found, problems


# ----------------------------------------------------------------------- 3. Dataset analysis


def dataset_path(ctx: StageContext) -> Optional[Path]:
    if ctx.cfg.report.data:
        return Path(str(ctx.cfg.report.data)).expanduser()
    for artifact in DATASET_ARTIFACTS:
        path = artifact.path(ctx.run_dir)
        if path.is_file():
            return path
    # A stage that read the data from an explicit file (train.data=FILE, ...): that file.
    for artifact in DATASET_ARTIFACTS:
        for spec in STAGES.values():
            for inp in spec.inputs:
                explicit = inp.artifact == artifact and rundir.select(rundir.config(ctx.run_dir, spec.name), inp.override)
                if explicit and (ctx.run_dir / spec.name / STATS_FILE).is_file() and Path(str(explicit)).expanduser().is_file():
                    return Path(str(explicit)).expanduser()
    return None


def _seed_tasks(ctx: StageContext) -> tuple[Optional[list[dict[str, Any]]], str]:
    from alpacare.data.seeds import load_seed_tasks, seed_source

    run_cfg = rundir.config(ctx.run_dir, "instructions")
    path = ctx.cfg.report.seeds or rundir.select(run_cfg, "instructions.seeds") or ctx.cfg.instructions.seeds
    try:
        return load_seed_tasks(path, ctx.cfg.cache_dir), seed_source(path, ctx.cfg.cache_dir)
    except DataError as e:
        return None, str(e)


def analysis_section(ctx: StageContext, out: Path) -> tuple[list[Block], Optional[str]]:
    if not ctx.cfg.report.analysis:
        return [], None
    path = dataset_path(ctx)
    if path is None:
        return [], None
    try:
        records = load_dataset(path)
    except DataError as e:
        return [], str(e)
    seeds, seed_source = _seed_tasks(ctx)
    top_n = int(ctx.cfg.report.top_n)
    data = analyze(records, seeds, top_n=top_n)
    seed = analyze(seeds, top_n=top_n) if seeds else None
    write_json_atomic(out / "analysis.json", {"dataset": str(path), "seeds": seed_source, "data": data.summary,
                                              "seed_set": seed.summary if seed else None})
    name = "generated" if not ctx.cfg.report.data else "dataset"
    return analysis_blocks(path, seed_source, data, seed, seeds is not None, name, out), None


# -------------------------------------------------------------------------------- Contamination


def contamination_blocks(ctx: StageContext, dedup_stats: Optional[dict[str, Any]]) -> list[Block]:
    """``report.data``: check that file now (same sources and threshold as dedup); else what dedup removed."""
    if ctx.cfg.report.data:
        from alpacare.evaluation.test_items import contamination_of, training_text

        records = load_dataset(str(ctx.cfg.report.data))
        summary, matches = contamination_of([training_text(r) for r in records], list(ctx.cfg.dedup.decontaminate),
                                            float(ctx.cfg.dedup.contamination_threshold), ctx.cfg.cache_dir)
        found = [{**records[m.index], "test_source": m.item.source, "test_id": m.item.id, "test_item": m.item.text,
                  "containment": round(m.score, 6)} for m in matches]
        write_jsonl_atomic(ctx.dir / "contamination.jsonl", found)
        return contamination_section(summary, found, f"listed in {ctx.dir / 'contamination.jsonl'}")
    if not dedup_stats or "contamination" not in dedup_stats:
        return []
    path = CONTAMINATED.path(ctx.run_dir)
    examples = read_jsonl(path) if path.is_file() else []
    return contamination_section(dedup_stats["contamination"], examples, f"dedup removed them ({path})")


# ------------------------------------------------------------------------------------- W&B


def _log_to_wandb(ctx: StageContext, blocks: list[Block]) -> None:
    section = "report"
    for k, b in enumerate(blocks):
        if b.kind == "h2":
            section = anchor(b.text)
        elif b.kind == "table" and b.rows:
            ctx.tracker.table(f"report/{section}/table_{k}", [str(h) or "name" for h in b.headers],
                              [[fmt(c) for c in row] for row in b.rows])
        elif b.kind == "image" and b.path is not None and b.path.is_file():
            ctx.tracker.image(f"report/{section}/{b.path.stem}", b.path)
