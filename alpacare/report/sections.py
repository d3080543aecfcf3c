"""The report's sections: each builder reads what a stage left in the run dir (its stats, its
declared artifacts) and returns blocks (alpacare/report/html.py) that render to Markdown and HTML.
A builder returns no blocks when its stage did not run; the report stage
(alpacare/stages/report.py) decides the order."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Optional

from alpacare import rundir
from alpacare.report.analysis import DEDUP_THRESHOLD, Analysis, percent
from alpacare.report.html import Block, fmt, h2, h3, image, note, p, table
from alpacare.stages import HEALTHBENCH_GRADES, HEALTHBENCH_SCORES, STAGES, TRAIN_METRICS

REVIEW_FILES = {"audit": "review/audit_summary.json", "pairwise": "review/pairwise_summary.json"}
# Settings shown per stage in "Run" (config keys; absent ones skipped).
KEY_SETTINGS = {
    "instructions": ("teacher.name", "teacher.model", "instructions.count", "instructions.seeds_per_request",
                     "instructions.tasks_per_request", "instructions.temperature", "instructions.seeds"),
    "dedup": ("dedup.mode", "dedup.threshold", "dedup.against_seeds", "dedup.decontaminate",
              "dedup.contamination_threshold", "dedup.input"),
    "responses": ("teacher.name", "teacher.model", "responses.temperature", "responses.max_tokens", "responses.input"),
    "train": ("model.name", "model.path", "tuning.method", "train.epochs", "train.max_steps", "train.lr", "tuning.lr",
              "train.effective_batch_size", "train.max_length", "trainer.accelerator", "trainer.precision", "train.data"),
    "predict": ("predict.model", "predict.test_sets", "predict.limit", "predict.max_new_tokens", "predict.backend"),
    "judge": ("judge.name", "judge.model", "judge.references", "judge.limit", "judge.strict_parsing", "judge.predictions"),
    "benchmark": ("benchmark.name", "benchmark.tasks", "benchmark.limit", "benchmark.model"),
    "grader_check": ("judge.name", "judge.model", "healthbench.meta_limit", "healthbench.retries", "healthbench.seed"),
}
# HealthBench settings shown with the judge's when it graded HealthBench.
HEALTHBENCH_SETTINGS = ("healthbench.retries", "healthbench.temperature", "healthbench.max_tokens", "healthbench.seed",
                        "healthbench.bootstrap")


def anchor(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _section(title: str) -> Block:
    return h2(title, anchor(title))


# -------------------------------------------------------------------------------- 0. Results


def results_section(run_dir: Path, stats: dict[str, dict[str, Any]]) -> list[Block]:
    """The first screen: the numbers a reader came for, each from its stage's stats.json (win rates
    with SE and LC, benchmark scores, data counts, contamination, cost, time). The sections below
    hold the detail; the settings come last ("Run")."""
    blocks = [_section("Results")]
    judge, bench = stats.get("judge"), stats.get("benchmark")
    if judge and "win_rates" in judge:
        rows = [r for r in judge.get("win_rates") or [] if isinstance(r, dict)]
        jm = judge.get("judge") or {}
        blocks.append(table(["test set", "reference", "win rate %", "LC win rate %", "n"],
                            [[r.get("test_set"), r.get("reference"), _pm(r.get("win_rate"), r.get("se"), 1),
                              _pm(r.get("lc_win_rate"), r.get("lc_se"), 1), r.get("n")] for r in rows],
                            f"win rates against each reference (judge {jm.get('model')}; ± standard error)"))
        if judge.get("weak_judge"):
            blocks.append(note("weak local judge: these numbers exercise the machinery; use judge=gpt35_turbo (paper) to report"))
    if judge and judge.get("healthbench"):
        blocks.append(table(["test set", "score", "n"], [[r.get("test_set"), _pm(r.get("score"), r.get("bootstrap_std"), 3), r.get("n")]
                                                       for r in judge["healthbench"] if isinstance(r, dict)],
                            f"HealthBench, scored as simple-evals scores it (grader {(judge.get('healthbench_grader') or {}).get('model')}; "
                            "± bootstrap std)"))
        if judge.get("weak_grader"):
            blocks.append(note("weak local grader: these HealthBench scores exercise the machinery; grade with judge=gpt41 (simple-evals' grader) to report"))
    check = stats.get("grader_check")
    if check:
        blocks.append(table(["", "balanced F1"], [["grader vs physicians", _pm(check.get("grader_f1_balanced"), None, 3)],
                                                  ["physicians vs each other (mean)", _pm(check.get("physicians_f1_balanced"), None, 3)]],
                            f"HealthBench grader check (grader {(check.get('grader') or {}).get('model')}, {check.get('rows')} rows)"))
    if bench:
        blocks.append(table(["task", "metric", "score", "n", "shots"], benchmark_headline_rows(bench),
                            f"benchmark scores (suite {bench.get('suite')}; ± standard error)"))
    glance = data_count_rows(stats) + contamination_rows(stats.get("dedup")) + spend_and_time_rows(stats)
    if glance:
        blocks.append(table(["", "value"], glance, "data, cost and time"))
    return blocks if len(blocks) > 1 else []


def _pm(value: Any, se: Any, digits: int) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "–"
    if value != value:
        return "NaN"
    return f"{value:.{digits}f}" + (f" ± {se:.{digits}f}" if isinstance(se, (int, float)) and se == se else "")


def benchmark_headline_rows(bench: dict[str, Any]) -> list[list[Any]]:
    """Each requested task's first metric (the task's own headline: ROUGE-L for MeQSum, acc for
    multiple choice); a NaN score says every answer was empty (lm-eval leaves those out)."""
    requested = set(bench.get("tasks") or [])
    seen, rows = set(), []
    for r in bench.get("table") or []:
        if not isinstance(r, dict) or r.get("task") in seen or (requested and r.get("task") not in requested):
            continue
        seen.add(r.get("task"))
        value = r.get("value")
        score = _pm(value, r.get("stderr"), 3)
        if score == "NaN":
            score = "NaN (every answer empty)"
        rows.append([r.get("task"), r.get("metric"), score, r.get("n"), r.get("shots")])
    return rows


def data_count_rows(stats: dict[str, dict[str, Any]]) -> list[list[Any]]:
    ins, ded, res, train = (stats.get(s) for s in ("instructions", "dedup", "responses", "train"))
    rows = []
    if ins:
        rows.append(["instructions generated", fmt(ins.get("records_out", ins.get("tasks_kept")))])
    if ded:
        rows.append(["kept after dedup", f"{fmt(ded.get('records_out', ded.get('kept')))} of "
                                         f"{fmt(ded.get('records_in', ded.get('total')))}"])
    if res:
        rows.append(["training examples (answered)", fmt(res.get("records_out", res.get("answered")))])
    if train and train.get("final_loss") is not None:
        rows.append(["final training loss", fmt(train.get("final_loss"))])
    return rows


def contamination_rows(dedup: Optional[dict[str, Any]]) -> list[list[Any]]:
    """Training items removed as copies of test or benchmark items: ``dedup/stats.json`` key
    ``contamination`` (alpacare/evaluation/test_items.py ``contamination_of``), when dedup checked."""
    found = (dedup or {}).get("contamination")
    if not isinstance(found, dict) or not found.get("enabled"):
        return []
    rows = [["contaminated training items removed", fmt(found.get("removed", 0))]]
    rows += [[f"contaminated, removed: {row['source']}", fmt(row["removed"])]
             for row in found.get("rows", []) if row.get("removed")]
    return rows


def spend_and_time_rows(stats: dict[str, dict[str, Any]]) -> list[list[Any]]:
    costs = [s["cost_usd"] for s in stats.values() if isinstance(s.get("cost_usd"), (int, float))]
    tokens = [s.get("prompt_tokens", 0) + s.get("completion_tokens", 0) for s in stats.values() if "prompt_tokens" in s]
    rows = []
    if costs:
        rows.append(["cost (USD, paid requests)", f"{sum(costs):.4f}"])
    if tokens:
        rows.append(["LLM tokens (prompt + completion)", fmt(sum(tokens))])
    seconds = {stage: s["seconds"] for stage, s in stats.items() if isinstance(s.get("seconds"), (int, float))}
    if seconds:
        rows.append(["time", f"{sum(seconds.values()):.0f} s: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())])
    return rows


# ------------------------------------------------------------------------------------ 1. Run


def run_section(run_dir: Path, ran: list[str]) -> list[Block]:
    blocks = [_section("Run")]
    history = rundir.invocations(run_dir)
    if history:
        blocks.append(table(["#", "time (UTC)", "stages", "overrides"],
                            [[i + 1, r.get("time", ""), ", ".join(r.get("stages", [])), " ".join(r.get("overrides", [])) or "(none)"]
                             for i, r in enumerate(history)], "commands run on this dir"))
    else:
        overrides = rundir.hydra_overrides(run_dir)
        blocks.append(p("Overrides (Hydra, latest command): " + (" ".join(overrides) if overrides else "(none)")))
    if not ran:
        blocks.append(note("No pipeline stage has finished in this dir; only the dataset analysis below."))
    rows = []
    for stage in ran:
        cfg = rundir.config(run_dir, stage)
        graded_healthbench = stage == "judge" and bool((read_stats_quietly(run_dir, "judge") or {}).get("healthbench"))
        for key in KEY_SETTINGS.get(stage, ()) + (HEALTHBENCH_SETTINGS if graded_healthbench else ()):
            value = rundir.select(cfg, key)
            if value is not None:
                rows.append([stage, key, json.dumps(value) if isinstance(value, (list, dict)) else value])
    if rows:
        blocks.append(table(["stage", "setting", "value"], rows, "key settings each stage ran with"))
    return blocks


# -------------------------------------------------------------------------------- Contamination

# Removed (or found) copies shown as examples.
CONTAMINATION_EXAMPLES = 5


def _clip(text: Any, n: int = 160) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= n else text[: n - 1] + "…"


def contamination_section(summary: Optional[dict[str, Any]], examples: list[dict[str, Any]], what: str) -> list[Block]:
    """Training instructions that contain a test item (alpacare/data/contamination.py): per source, how
    many test items were checked and how many training records copy one, with examples. ``summary``:
    the ``contamination`` stats of dedup (or of ``report.data``); ``what``: what happened to the copies."""
    if not summary:
        return []
    blocks = [_section("Contamination")]
    if not summary.get("enabled"):
        return blocks + [note("not checked (dedup.decontaminate=[])")]
    blocks.append(p(f"{summary.get('removed')} of {summary.get('checked')} training instructions contain a test item "
                    f"(more than {fmt(summary.get('threshold'))} of its words, in order, in instruction + input); {what}."))
    rows = summary.get("rows") or []
    blocks.append(table(["source", "test items", "contaminated"],
                        [[r.get("source"), r.get("items"), r.get("removed")] for r in rows],
                        "copies of test items per source"))
    if summary.get("not_local"):
        blocks.append(note("not checked, no local data: " + ", ".join(summary["not_local"])
                           + " (alpacare-fetch / alpacare-fetch benchmarks)"))
    if examples:
        blocks.append(table(["instruction + input", "test item", "source", "score"],
                            [[_clip(f"{r.get('instruction', '')} {r.get('input', '') or ''}"), _clip(r.get("test_item")),
                              f"{r.get('test_source')} #{r.get('test_id')}", r.get("containment")]
                             for r in examples[:CONTAMINATION_EXAMPLES]], "examples", compact=True))
    return blocks


# ----------------------------------------------------------------------------------- 2. Data


def data_section(run_dir: Path, stats: dict[str, dict[str, Any]]) -> list[Block]:
    ins, ded, res = stats.get("instructions"), stats.get("dedup"), stats.get("responses")
    if not (ins or ded or res):
        return []
    blocks = [_section("Data")]
    rows = []
    if ins:
        reasons = "; ".join(f"{k}: {v}" for k, v in (ins.get("reject_reasons") or {}).items())
        rows.append(["instructions", ins.get("requests"), ins.get("tasks_parsed"), ins.get("records_out", ins.get("tasks_kept")),
                     ins.get("rejects"), f"rejected: {reasons}" if reasons else ""])
    if ded:
        rows.append(["dedup", ded.get("records_in", ded.get("total")), ded.get("records_in", ded.get("total")),
                     ded.get("records_out", ded.get("kept")), ded.get("dropped"),
                     f"kept ratio {fmt(ded.get('kept_ratio'))} at ROUGE-L {fmt(ded.get('threshold'))} ({ded.get('mode')})"
                     + (f"; {ded['contaminated']} copies of test items removed" if ded.get("contaminated") else "")])
    if res:
        rows.append(["responses", res.get("records_in", res.get("instructions")), res.get("records_in", res.get("instructions")),
                     res.get("records_out", res.get("answered")), res.get("failed"),
                     f"{fmt(res.get('truncated_at_max_tokens'))} answers cut at max_tokens"])
    blocks.append(table(["stage", "requests / in", "parsed / considered", "out", "rejected / dropped / failed", "note"],
                        rows, "records through the data stages"))
    blocks += spend_blocks(run_dir, stats)
    if ded and (run_dir / "dedup" / "similarity.png").is_file():
        blocks.append(image(run_dir / "dedup" / "similarity.png", "dedup: max ROUGE-L of each instruction, kept vs dropped"))
    return blocks


def spend_blocks(run_dir: Path, stats: dict[str, dict[str, Any]]) -> list[Block]:
    """Tokens and USD per stage (stats.json) and per role (the CLI's ledger of the last command)."""
    roles = {"instructions": "teacher", "responses": "teacher", "judge": "judge", "grader_check": "judge"}
    rows = [[stage, role, stats[stage].get("prompt_tokens"), stats[stage].get("completion_tokens"),
             stats[stage].get("cost_usd"), stats[stage].get("seconds")]
            for stage, role in roles.items() if stage in stats and "prompt_tokens" in stats[stage]]
    blocks = []
    if rows:
        total = ["total", "", sum(r[2] or 0 for r in rows), sum(r[3] or 0 for r in rows),
                 round(sum(r[4] or 0 for r in rows), 6), round(sum(r[5] or 0 for r in rows), 1)]
        blocks.append(table(["stage", "role", "prompt tokens", "completion tokens", "cost (USD)", "seconds"], rows + [total],
                            "tokens and cost per stage (cached requests cost nothing)"))
    ledgers = rundir.ledgers(run_dir)
    if ledgers:
        blocks.append(table(["role", "requests", "cached", "failed", "prompt tokens", "completion tokens", "cost (USD)"],
                            [[role, lg.get("requests"), lg.get("cached_requests"), lg.get("failed_requests"),
                              lg.get("prompt_tokens"), lg.get("completion_tokens"), lg.get("cost_usd")]
                             for role, lg in ledgers.items()], "ledger per role (last command that used it)"))
    return blocks


def analysis_blocks(path: Path, seed_source: str, data: Analysis, seed: Optional[Analysis], have_seeds: bool,
                    name: str, out: Path) -> list[Block]:
    from alpacare.report import charts

    d, s = data.summary, seed.summary if seed else {}
    blocks = [_section("Dataset analysis"),
              p(f"Dataset: {path} ({d['records']} records). Seeds: {seed_source}"
                + (f" ({s['records']} tasks)." if s else "."))]
    if not have_seeds:
        blocks.append(note(f"seed tasks unavailable ({seed_source}): no side-by-side and no similarity to the seeds"))
    L = lambda a, f, k: (a.get("lengths", {}).get(f) or {}).get(k)  # noqa: E731
    rv = d.get("rouge_vs_seeds") or {}
    rows = [
        ["records", d["records"], s.get("records")],
        ["without input", f"{d['without_input']} ({percent(d['share_without_input'])})",
         f"{s['without_input']} ({percent(s['share_without_input'])})" if s else None],
        *[[f"{f} words: median / mean / p90", f"{fmt(L(d, f, 'median'))} / {fmt(L(d, f, 'mean'))} / {fmt(L(d, f, 'p90'))}",
           f"{fmt(L(s, f, 'median'))} / {fmt(L(s, f, 'mean'))} / {fmt(L(s, f, 'p90'))}" if s else None]
          for f in ("instruction", "input", "output") if L(d, f, "n") or L(s, f, "n")],
        ["instruction tokens / vocabulary", f"{d['instruction_tokens']} / {d['vocabulary']}",
         f"{s['instruction_tokens']} / {s['vocabulary']}" if s else None],
        ["distinct-1 (instructions)", d["distinct_1"], s.get("distinct_1")],
        ["distinct-2 (instructions)", d["distinct_2"], s.get("distinct_2")],
        ["linguistic entropy (bits, instruction tokens)", d["entropy_bits"], s.get("entropy_bits")],
        ["task types / views / topics", f"{len(d['type'])} / {len(d['view'])} / {d['topics']}",
         f"{len(s['type'])} / {len(s['view'])} / {s['topics']}" if s else None],
    ]
    if rv:
        rows.append([f"max ROUGE-L vs seeds: median / mean / share > {DEDUP_THRESHOLD}",
                     f"{fmt(rv['median'])} / {fmt(rv['mean'])} / {percent(rv[f'share_above_{DEDUP_THRESHOLD}'])}", None])
    blocks.append(table(["", name, "seeds"], rows, "size, lengths and lexical diversity (rouge_score tokens)"))
    made = [
        (charts.category_chart(out / "categories.png", d, s or None, name), "task type, view and difficulty: share of tasks"),
        (charts.top_chart(out / "topics.png", d["topic_top"], s.get("topic_top") if s else None,
                          f"Top {len(d['topic_top'])} topics of the {name} data", name, d["records"], s.get("records")),
         "most frequent topics"),
        (charts.length_chart(out / "lengths.png", data.lengths, seed.lengths if seed else None, name), "length distributions"),
        (charts.top_chart(out / "leading_words.png", d["leading_words"], s.get("leading_words") if s else None,
                          "Most frequent leading words of the instructions", name, d["records"], s.get("records")),
         "leading words"),
    ]
    if data.rouge is not None and rv:
        made.append((charts.rouge_chart(out / "rouge_vs_seeds.png", data.rouge, rv["histogram"]["edges"], DEDUP_THRESHOLD,
                                        name, rv["seeds"]), "max ROUGE-L of each instruction against the seeds"))
    images = {path.stem: image(path, alt) for path, alt in made if path is not None}
    blocks += [images[k] for k in ("categories",) if k in images]
    missing = d.get("types_missing_in_seeds")
    if missing:
        blocks.append(table(["task type absent from the seeds", "tasks"], list(missing.items()),
                            "tasks of types the seed set lacks"))
    elif have_seeds and d["type"]:
        blocks.append(p("Every task type of the dataset also occurs in the seed set."))
    for field, title in (("type", "task type"), ("view", "view"), ("difficulty", "difficulty")):
        if d[field]:
            blocks.append(_count_table(title, d[field], s.get(field) if s else None, d["records"], s.get("records")))
    blocks += [images[k] for k in ("topics", "leading_words") if k in images]
    if d["leading_words"]:
        blocks.append(_count_table("leading word", d["leading_words"], s.get("leading_words") if s else None,
                                   d["records"], s.get("records"), top=True))
    blocks += [images[k] for k in ("lengths", "rouge_vs_seeds") if k in images]
    return blocks


def _count_table(title: str, data: dict[str, int], seeds: Optional[dict[str, int]], n: int, n_seeds: Optional[int],
                 top: bool = False) -> Block:
    keys = list(data) + ([k for k in seeds if k not in data] if seeds and not top else [])
    rows = [[k, data.get(k, 0), percent(data.get(k, 0) / n if n else None)]
            + ([seeds.get(k, 0), percent(seeds.get(k, 0) / n_seeds if n_seeds else None)] if seeds is not None else [])
            for k in keys]
    headers = [title, "count", "share"] + (["seeds", "seed share"] if seeds is not None else [])
    return table(headers, rows, f"most frequent {title}s" if top else f"tasks per {title}", compact=True)


# ------------------------------------------------------------------------------- 4. Training


def training_section(run_dir: Path, train: Optional[dict[str, Any]], out: Path) -> list[Block]:
    if not train:
        return []
    from alpacare.report import charts

    blocks = [_section("Training")]
    keys = [("examples", "examples"), ("truncated", "truncated to max_length"), ("dropped", "dropped (prompt too long)"),
            ("steps", "optimizer steps"), ("final_loss", "final loss"), ("tokens", "tokens trained on"),
            ("tokens_per_s", "tokens/s"), ("peak_rss_gb", "peak memory (GB, RSS)"), ("train_seconds", "fit time (s)"),
            ("seconds", "stage time (s)"), ("resumed_from", "resumed from")]
    blocks.append(table(["", "value"], [[label, train.get(k)] for k, label in keys if train.get(k) is not None]))
    rows = _metric_rows(TRAIN_METRICS.path(run_dir))
    chart = charts.loss_chart(out / "loss.png", rows) if rows else None
    if chart:
        blocks.append(image(chart, "training loss per optimizer step (learning rate dashed)"))
    else:
        blocks.append(note(f"no loss curve: {TRAIN_METRICS.path(run_dir).relative_to(run_dir)} is missing or empty"))
    return blocks


def _metric_rows(path: Path) -> list[dict[str, Any]]:
    by_step: dict[int, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text("utf-8", errors="replace").splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(r, dict) and isinstance(r.get("step"), int):
                by_step[r["step"]] = r  # a resumed run repeats steps: the last one counts
    return [by_step[k] for k in sorted(by_step)]


# ---------------------------------------------------------------------------- 5. Predictions


def predictions_section(predict: Optional[dict[str, Any]]) -> list[Block]:
    if not predict:
        return []
    rows = [[name, s.get("items"), s.get("mean_new_tokens"), s.get("stopped_at_max_new_tokens"), s.get("empty_outputs"),
             s.get("new_tokens_per_s")] for name, s in (predict.get("test_sets") or {}).items()]
    return [_section("Predictions"),
            p(f"Model: {predict.get('model')} (generator name {predict.get('generator')})."),
            table(["test set", "items", "mean new tokens", "stopped at max_new_tokens", "empty", "new tokens/s"], rows)]


# ------------------------------------------------------------------------------ 6. Win rates


def win_rates_section(run_dir: Path, judge: Optional[dict[str, Any]], out: Path) -> list[Block]:
    if not judge or "win_rates" not in judge:  # a judge run on HealthBench sets alone
        return []
    rows = [r for r in judge.get("win_rates") or [] if isinstance(r, dict)]
    jm = judge.get("judge") or {}
    blocks = [_section("Win rates"),
              p(f"Judge: {jm.get('model')} ({jm.get('preset')}), both answer orders; win 1, tie 0.5. "
                "Cells: win rate % ± SE (n), then the length-controlled win rate."
                + (f" Judge spend: {fmt(judge.get('prompt_tokens'))} prompt + {fmt(judge.get('completion_tokens'))} "
                   f"completion tokens, {fmt(judge.get('cost_usd'))} USD." if "prompt_tokens" in judge else ""))]
    if judge.get("weak_judge"):
        blocks.append(note("weak local judge: these numbers exercise the machinery; use judge=gpt35_turbo (paper) to report"))
    test_sets = list(dict.fromkeys(r.get("test_set") for r in rows))
    refs = list(dict.fromkeys(r.get("reference") for r in rows))
    by = {(r.get("test_set"), r.get("reference")): r for r in rows}

    def cell(r: Optional[dict[str, Any]]) -> str:
        if not r or r.get("win_rate") is None:
            return "–"
        se = f" ± {r['se']:.1f}" if r.get("se") is not None else ""
        lc = f"; LC {r['lc_win_rate']:.1f}" if r.get("lc_win_rate") is not None else ""
        return f"{r['win_rate']:.1f}{se} (n={r.get('n')}){lc}"

    blocks.append(table(["test set \\ reference", *refs], [[t, *[cell(by.get((t, ref))) for ref in refs]] for t in test_sets],
                        "win rate of the model against each reference"))
    detail = ["test_set", "reference", "win_rate", "se", "n", "lc_win_rate", "lc_se", "tie_rate", "consistency",
              "n_unparsed", "n_dropped", "model_len", "reference_len"]
    blocks.append(table(detail, [[r.get(c) for c in detail] for r in rows], "every statistic (judge/stats.json)"))
    chart = run_dir / "judge" / "win_rates.png"
    if not chart.is_file() and rows:
        from alpacare.report.plots import win_rate_chart

        chart = win_rate_chart(out / "win_rates.png", rows, title="win rate vs references")
    if chart.is_file():
        blocks.append(image(chart, "win rate per test set and reference, with standard errors; 50% = tie"))
    return blocks


# ---------------------------------------------------------------------------- HealthBench


def healthbench_section(run_dir: Path, judge: Optional[dict[str, Any]], check: Optional[dict[str, Any]], out: Path,
                        worst: int) -> list[Block]:
    """Scores per set, theme and axis with their bootstrap std and the chart; the rubric items the
    answers lost most points on, with the answers; the grader check against physicians."""
    rows = [r for r in (judge or {}).get("healthbench") or [] if isinstance(r, dict)]
    if not rows and not check:
        return []
    blocks = [_section("HealthBench")]
    if rows:
        grader = judge.get("healthbench_grader") or {}
        blocks.append(p(f"Grader: {grader.get('model')} ({grader.get('preset')}), simple-evals' request (temperature "
                        f"{fmt(grader.get('temperature'))}, max_tokens {fmt(grader.get('max_tokens'))}; simple-evals grades with "
                        f"{grader.get('simple_evals_grader')}), one request per rubric item, up to {fmt(grader.get('retries'))} "
                        "more for a reply that does not parse. Score: points of the criteria met over the positive points, "
                        "mean over conversations clipped to [0, 1], ± the std of 1,000 bootstrap means."))
        if judge.get("weak_grader"):
            blocks.append(note("weak local grader: these scores exercise the machinery; grade with judge=gpt41 (simple-evals' grader) to report"))
        blocks.append(table(["test set", "score", "n", "conversations", "rubric items", "unparsed", "retried", "unscored conversations"],
                            [[r.get("test_set"), _pm(r.get("score"), r.get("bootstrap_std"), 3), r.get("n"), r.get("conversations"),
                              r.get("criteria"), r.get("criteria_unparsed"), r.get("criteria_retried"),
                              r.get("conversations_unscored")] for r in rows], "overall (± bootstrap std)"))
        for kind, title in (("themes", "theme (example tag)"), ("axes", "axis (rubric tag)")):
            tags = [[r.get("test_set"), t.get("tag", "").split(":", 1)[-1], _pm(t.get("score"), t.get("bootstrap_std"), 3), t.get("n")]
                    for r in rows for t in r.get(kind) or []]
            if tags:
                blocks.append(table(["test set", title, "score", "n"], tags, f"per {title}", compact=True))
        chart = run_dir / "judge" / "healthbench.png"
        if not chart.is_file():
            from alpacare.report.plots import healthbench_chart

            chart = healthbench_chart(out / "healthbench.png", rows, "HealthBench scores")
        blocks.append(image(chart, "HealthBench: overall, per theme and per axis, with bootstrap std"))
        blocks += worst_criteria_blocks(run_dir, worst)
    if check:
        blocks += grader_check_blocks(run_dir, check)
    return blocks


def worst_criteria_blocks(run_dir: Path, n: int) -> list[Block]:
    """The ``n`` rubric items that cost the answers most points (positive ones missed, negative ones
    met), with the question and the answer (judge/healthbench_grades.jsonl, healthbench_scores.jsonl)."""
    grades_path, scores_path = HEALTHBENCH_GRADES.path(run_dir), HEALTHBENCH_SCORES.path(run_dir)
    if n <= 0 or not grades_path.is_file() or not scores_path.is_file():
        return []
    from alpacare.data.jsonl import read_jsonl

    scores = {(s["test_set"], s["prompt_id"]): s for s in read_jsonl(scores_path)}
    worst = sorted((g for g in read_jsonl(grades_path) if g.get("points_lost", 0) > 0),
                   key=lambda g: (-g["points_lost"], g["test_set"], g["prompt_id"], g["criterion_index"]))[:n]
    if not worst:
        return [p("No rubric item cost the answers points.")]
    rows = []
    for g in worst:
        s = scores.get((g["test_set"], g["prompt_id"]), {})
        rows.append([g["test_set"], f"[{g['points']}] {_clip(g['criterion'], 120)}", "met" if g["criteria_met"] else "not met",
                     _clip(g.get("explanation"), 120), _clip(s.get("question"), 120), _clip(s.get("answer"), 200)])
    return [h3("Rubric items the answers lost most points on"),
            table(["test set", "rubric item", "verdict", "grader's explanation", "last user turn", "answer"], rows,
                  f"the {len(rows)} costliest verdicts (positive criteria not met, negative criteria met)", compact=True)]


def grader_check_blocks(run_dir: Path, check: dict[str, Any]) -> list[Block]:
    grader = check.get("grader") or {}
    blocks = [h3("Grader check against physicians (meta-eval)"),
              p(f"Grader {grader.get('model')} ({grader.get('preset')}) labelled {check.get('rows')} rows of the meta-eval set "
                f"({check.get('rows_unparsed')} unparsed, left out). Balanced F1 of its labels against each physician's "
                "(simple-evals' healthbench_meta_eval.py), beside the physicians' own against each other, averaged over "
                "physicians: a grader at the physicians' level can stand in for them.")]
    if check.get("weak_grader"):
        blocks.append(note("weak local grader: expect agreement near chance"))
    rows = [{"category": "overall", "grader_f1_balanced": check.get("grader_f1_balanced"),
             "physicians_f1_balanced": check.get("physicians_f1_balanced"), "physicians": check.get("physicians"),
             "pairs": check.get("pairs")},
            *[c for c in check.get("categories") or [] if isinstance(c, dict)]]
    blocks.append(table(["category", "grader vs physicians", "physicians vs each other", "physicians", "pairs"],
                        [[r.get("category"), _pm(r.get("grader_f1_balanced"), None, 3), _pm(r.get("physicians_f1_balanced"), None, 3),
                          r.get("physicians"), r.get("pairs")] for r in rows], "balanced F1", compact=True))
    chart = run_dir / "grader_check" / "agreement.png"
    if chart.is_file():
        blocks.append(image(chart, "grader vs physicians, balanced F1 per category"))
    return blocks


def read_stats_quietly(run_dir: Path, stage: str) -> Optional[dict[str, Any]]:
    from alpacare.stats_schema import StatsProblem, read_stats

    try:
        return read_stats(run_dir, stage)
    except StatsProblem:
        return None


# ------------------------------------------------------------------------------ 7. Benchmarks


def benchmark_section(bench: Optional[dict[str, Any]], out: Path) -> list[Block]:
    if not bench:
        return []
    from alpacare.report import charts

    rows = [r for r in bench.get("table") or [] if isinstance(r, dict)]
    blocks = [_section("Benchmarks"), p(f"Suite {bench.get('suite')} on {bench.get('model')} (lm-eval).")]
    cols = ["task", "metric", "value", "stderr", "n", "shots"]
    blocks.append(table(cols, [[r.get(c) for c in cols] for r in rows]))
    chart = charts.benchmark_chart(out / "benchmark.png", rows)
    if chart:
        blocks.append(image(chart, "benchmark scores with standard errors"))
    return blocks


# ---------------------------------------------------------------------------- 8. Human review


def review_section(run_dir: Path) -> tuple[list[Block], dict[str, str]]:
    found, problems = {}, {}
    for kind, rel in REVIEW_FILES.items():
        path = run_dir / rel
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text("utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            found[kind] = data
        except (OSError, ValueError) as e:
            problems[f"review_{kind}"] = f"{path}: unreadable ({e})"
    if not found and not problems:
        return [], {}
    blocks = [_section("Human review")]
    blocks += [note(f"left out: {msg}") for msg in problems.values()]

    def prop(x: Any) -> str:
        if not isinstance(x, dict) or x.get("share") is None:
            return "–"
        return f"{100 * x['share']:.1f}% [{100 * x['ci_low']:.1f}, {100 * x['ci_high']:.1f}] ({x.get('k')}/{x.get('n')})"

    audit = found.get("audit")
    if audit:
        blocks.append(h3("Clinician audit"))
        agreement = audit.get("agreement") or {}
        blocks.append(table(["", "value"], [
            ["items / reviewers / verdicts", f"{audit.get('n_items')} / {audit.get('n_reviewers')} / {audit.get('n')}"],
            *[[k.replace("_", " "), prop(audit.get(k))] for k in ("correct", "partially_correct", "incorrect", "unsafe")],
            ["Fleiss' kappa", agreement.get("fleiss_kappa")],
            ["flagged items", len(audit.get("flagged") or [])],
        ], "share of verdicts with 95% Wilson interval"))
        by_type = audit.get("by_type") or {}
        if by_type:
            blocks.append(table(["task type", "n", "correct", "unsafe"],
                                [[t, v.get("n"), prop(v.get("correct")), prop(v.get("unsafe"))] for t, v in by_type.items()]))
    pair = found.get("pairwise")
    if pair:
        blocks.append(h3("Blinded pairwise study"))
        systems = pair.get("systems") or {}
        ja = pair.get("judge_agreement") or {}
        wr = pair.get("win_rate")
        blocks.append(table(["", "value"], [
            ["system a vs b", f"{(systems.get('a') or {}).get('name')} vs {(systems.get('b') or {}).get('name')}"],
            ["verdicts (wins a / wins b / ties)", f"{pair.get('n')} ({pair.get('wins_a')} / {pair.get('wins_b')} / {pair.get('ties')})"],
            ["win rate of a [95% CI]", f"{100 * wr:.1f}% [{100 * pair['ci_low']:.1f}, {100 * pair['ci_high']:.1f}]"
             if isinstance(wr, (int, float)) and pair.get("ci_low") is not None else "–"],
            ["first shown preferred", pair.get("first_shown_preferred")],
            ["agreement with the LLM judge", ja.get("agreement")],
            ["judge Cohen's kappa", ja.get("cohen_kappa")],
        ]))
    return blocks, problems


# ------------------------------------------------------------------------------- 9. Artifacts


def artifacts_section(run_dir: Path, stages: list[str]) -> list[Block]:
    rows = []
    for stage in stages:
        folder = run_dir / stage
        if not folder.is_dir():
            continue
        declared = {a.name for a in STAGES[stage].outputs}
        for path in sorted(folder.iterdir()):
            if path.name.startswith("."):
                continue
            kind = "dir" if path.is_dir() else _size(path.stat().st_size)
            rows.append([stage, str(path.relative_to(run_dir)) + ("/" if path.is_dir() else ""), kind,
                         "yes" if path.name in declared or any(re.fullmatch(d.replace("{test_set}", ".+"), path.name)
                                                              for d in declared) else ""])
    for name in (rundir.INVOCATIONS_FILE, rundir.LEDGERS_FILE, ".hydra", "wandb"):
        if (run_dir / name).exists():
            rows.append(["run", name + ("/" if (run_dir / name).is_dir() else ""), "", ""])
    if not rows:
        return []
    return [_section("Artifacts"), p(f"Under {run_dir.resolve()}:"),
            table(["stage", "path", "size", "declared artifact"], rows)]


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
