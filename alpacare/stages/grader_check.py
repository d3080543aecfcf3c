"""Stage ``grader_check``: can this grader stand in for the physicians? HealthBench's meta-eval.

The ``judge`` endpoint grades the meta-eval set (alpacare/data/healthbench.py: conversations, an
answer, a rubric criterion, and several physicians' binary labels of whether the answer meets it)
with simple-evals' grader request (alpacare/prompts/healthbench.py), and its labels are compared
with the physicians' as healthbench_meta_eval.py compares them (alpacare/evaluation/healthbench.py):
pairwise precision / recall per label, their F1, and the balanced (pos/neg mean) F1, overall and
per category (cluster). Beside it, each physician against the other physicians on the same rows,
averaged over physicians: a grader whose balanced F1 reaches the physicians' agrees with them as
well as they agree with each other.

    alpacare stages=[grader_check] judge=gpt41                      # simple-evals' own grader
    alpacare stages=[grader_check] judge=gpt55 healthbench.meta_limit=500

``healthbench.meta_limit`` grades a subset drawn with ``healthbench.seed`` as simple-evals draws its
``num_examples``. Paid work is never repeated: every reply is appended to
``grader_check/requests.jsonl`` and the endpoint's cache serves any request seen before. Outputs:
``labels.jsonl`` (per row: the grader's label, its explanation, the physicians' labels),
``stats.json`` (``grader_f1_balanced``, ``physicians_f1_balanced``, ``categories`` rows, every
simple-evals metric of the grader under ``grader_metrics``), ``agreement.png``; W&B: the table and chart.
"""

from __future__ import annotations

from typing import Any

from alpacare.data.healthbench import load_meta_examples, subset
from alpacare.data.jsonl import write_jsonl_atomic
from alpacare.evaluation import healthbench as hb_eval
from alpacare.llm.client import endpoint_identity
from alpacare.prompts import healthbench as healthbench_prompt
from alpacare.report.plots import grader_agreement_chart
from alpacare.stages import GRADER_CHECK, GRADER_LABELS, StageContext

BALANCED_F1 = "pairwise_{rater}_f1_balanced"


def check(cfg: Any) -> None:
    """Before any stage runs: the meta-eval set and the pinned protocol files are present."""
    load_meta_examples(cfg.cache_dir)
    healthbench_prompt.load_protocol(cfg.cache_dir)


def run(ctx: StageContext) -> dict[str, Any]:
    cfg, hb = ctx.cfg.judge, ctx.cfg.healthbench
    protocol = healthbench_prompt.load_protocol(ctx.cfg.cache_dir)
    settings = hb_eval.grader_settings(cfg, hb, protocol, kind="healthbench_meta")
    rows = subset(load_meta_examples(ctx.cfg.cache_dir), hb.meta_limit, hb.seed)
    subjects = [(f"meta:{r['index']}", protocol.user_message(r["prompt"], r["completion"], r["rubric"])) for r in rows]
    graded = hb_eval.grade(subjects, protocol, settings, cfg, endpoint_identity(cfg, cfg.base_url),
                           ctx.dir / "requests.jsonl", ctx.dir / "batches.jsonl", lambda: ctx.endpoint("judge"),
                           desc="grader check")
    labels = [graded.graded[key] for key, _ in subjects]
    kept = [(r, g.verdict["criteria_met"]) for r, g in zip(rows, labels) if g.verdict is not None]
    write_jsonl_atomic(GRADER_LABELS.path(ctx.run_dir), [
        {"index": r["index"], "category": r["category"], "rubric": r["rubric"], "physician_labels": r["binary_labels"],
         "grader_label": g.verdict["criteria_met"] if g.verdict else None,
         "explanation": str(g.verdict.get("explanation", "")) if g.verdict else "", "attempts": g.attempts,
         "raw": "" if g.verdict else g.raw} for r, g in zip(rows, labels)])

    kept_rows = [r for r, _ in kept]
    grader = hb_eval.rater_agreement([label for _, label in kept], [r["binary_labels"] for r in kept_rows],
                                     [r["category"] for r in kept_rows], "model")
    physicians = hb_eval.physician_agreement(kept_rows)
    categories = [_category_row(c, grader, physicians) for c in sorted({r["category"] for r in kept_rows})]
    overall = _category_row(None, grader, physicians)
    chart = grader_agreement_chart(ctx.dir / "agreement.png", [overall, *categories],
                                   f"grader {cfg.model}{' (weak local grader)' if cfg.launch_local else ''} vs physicians: "
                                   f"balanced F1 on {len(kept_rows)} labelled rows")
    spend = hb_eval.spend(cfg, graded.work_records)
    stats = {
        "grader": hb_eval.grader_description(cfg, settings, protocol), "weak_grader": bool(cfg.launch_local),
        "rows": len(rows), "rows_unparsed": len(rows) - len(kept), "physician_labels": sum(len(r["binary_labels"]) for r in kept_rows),
        "grader_f1_balanced": overall["grader_f1_balanced"], "physicians_f1_balanced": overall["physicians_f1_balanced"],
        "physicians": overall["physicians"], "pairs": overall["pairs"], "categories": categories, "chart": str(chart),
        "grader_metrics": {k: v["value"] for k, v in grader.items() if v["value"] is not None},
        "prompt_tokens": spend["prompt_tokens"], "completion_tokens": spend["completion_tokens"],
        "cost_usd": spend["cost_usd"], "cost_usd_possibly_billed": spend["cost_usd_possibly_billed"],
        "records_in": len(rows), "records_out": len(rows),
    }
    ctx.write_stats(stats)
    columns = ["category", "grader_f1_balanced", "physicians_f1_balanced", "physicians", "pairs"]
    ctx.tracker.table("grader_check/agreement", columns, [[r[c] for c in columns] for r in [overall, *categories]])
    ctx.tracker.image("grader_check/agreement_chart", chart)
    ctx.log_artifact(GRADER_LABELS, GRADER_CHECK.path(ctx.run_dir))
    return {"rows": len(rows), "unparsed": len(rows) - len(kept), "grader_f1_balanced": _round(overall["grader_f1_balanced"]),
            "physicians_f1_balanced": _round(overall["physicians_f1_balanced"]),
            **({"note": "weak local grader"} if cfg.launch_local else {})}


def _category_row(category: Any, grader: dict, physicians: dict) -> dict[str, Any]:
    prefix = f"{category}: " if category else ""
    model = grader.get(prefix + BALANCED_F1.format(rater="model"), {"value": None, "n": 0})
    mean, count = hb_eval.physician_mean(physicians, prefix + BALANCED_F1.format(rater="physician"))
    return {"category": category or "overall", "grader_f1_balanced": model["value"], "physicians_f1_balanced": mean,
            "physicians": count, "pairs": model["n"]}


def _round(x: Any) -> Any:
    return round(x, 4) if isinstance(x, float) else x
