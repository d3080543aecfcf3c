"""``alpacare-compare``: one table and one chart for several runs or a whole sweep.

    alpacare-compare multirun/2026-01-01/12-00-00                # a sweep: one row per job
    alpacare-compare outputs/run_a outputs/run_b --out compare/  # any run dirs
    python -m alpacare.report.compare DIR... [--out DIR]

Each DIR is a run dir or a sweep dir (Hydra's ``multirun/DATE/TIME``, or ``multirun/DATE`` with
several sweeps); a job's parameters are its command-line overrides (``.hydra/overrides.yaml``, or
the CLI's ``invocations.jsonl`` when several commands built the dir; alpacare/rundir.py) and its
numbers are the headline metrics of each stage's ``stats.json`` (alpacare/stats_schema.py), plus
the total cost and time over its stages.

Writes to ``--out`` (default: the first sweep dir given, else ``./compare/``): ``compare.md`` and
``compare.csv`` (columns: run, the overrides that differ between runs, then the metrics) and
``compare.png`` (each metric against the swept parameter: a numeric axis when every value is a
number, else categories; one line per combination of the other varying overrides). Prints the table.
Exit 2 with one line when a path holds no run.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from pathlib import Path
from typing import Any, Optional

from alpacare import rundir
from alpacare.stages import STAGE_ORDER
from alpacare.stats_schema import StatsProblem, headline, read_stats

# Column order of the headline metrics: kept ratio, train loss, win rates, benchmarks, then the rest.
_METRIC_ORDER = ("dedup/kept_ratio", "train/final_loss", "judge/", "benchmark/")


def collect(paths: list[Path]) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per job: ``{"run", "params": {...}, "metrics": {...}, "problems": [...]}``; and the
    paths that hold no run."""
    rows, empty = [], []
    for root in paths:
        jobs = list(rundir.job_dirs(root))
        if not jobs:
            empty.append(str(root))
        for job in jobs:
            rows.append(job_row(job, root))
    return rows, empty


def job_row(job: Path, root: Path) -> dict[str, Any]:
    metrics: dict[str, float] = {}
    problems = []
    cost = seconds = 0.0
    have_cost = False
    for stage in STAGE_ORDER:
        try:
            stats = read_stats(job, stage)
        except StatsProblem as e:
            problems.append(str(e))
            continue
        if not stats or stage == "report":
            continue
        for name, value in headline(stage, stats).items():
            if name != "cost_usd":
                metrics[f"{stage}/{name}"] = value
        if isinstance(stats.get("cost_usd"), (int, float)):
            cost += stats["cost_usd"]
            have_cost = True
        if isinstance(stats.get("seconds"), (int, float)):
            seconds += stats["seconds"]
    if have_cost:
        metrics["cost_usd"] = round(cost, 6)
    if metrics:
        metrics["seconds"] = round(seconds, 2)
    name = str(job.relative_to(root.parent)) if job != root else job.name
    return {"run": name, "path": str(job), "params": rundir.overrides(job), "metrics": metrics, "problems": problems}


def _metric_key(name: str) -> tuple:
    for k, prefix in enumerate(_METRIC_ORDER):
        if name.startswith(prefix):
            return (k, name)
    if name in ("cost_usd", "seconds"):
        return (len(_METRIC_ORDER) + 1, ("cost_usd", "seconds").index(name))
    return (len(_METRIC_ORDER), name)


def table_columns(rows: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(varying parameters, metric columns). A parameter varies when its value (or absence) differs."""
    keys = list(dict.fromkeys(k for r in rows for k in r["params"]))
    varying = [k for k in keys if len({r["params"].get(k) for r in rows}) > 1]
    metrics = sorted({m for r in rows for m in r["metrics"]}, key=_metric_key)
    return varying, metrics


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def to_markdown(rows, varying, metrics) -> str:
    headers = ["run", *varying, *metrics]
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join(["---"] * (1 + len(varying)) + ["---:"] * len(metrics)) + "|"]
    for r in rows:
        cells = [r["run"], *[r["params"].get(k, "") for k in varying], *[_cell(r["metrics"].get(m)) for m in metrics]]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(rows, varying, metrics) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["run", *varying, *metrics])
    for r in rows:
        w.writerow([r["run"], *[r["params"].get(k, "") for k in varying], *[r["metrics"].get(m, "") for m in metrics]])
    return buf.getvalue()


def _as_number(v: Any) -> Optional[float]:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def chart(path: Path, rows, varying, metrics) -> Optional[Path]:
    """Each metric against the first varying parameter; one line per value of the others."""
    from alpacare.report.plots import plt, save_figure

    # Metrics that do not move across the runs (the input size, say) stay in the table only.
    moving = [m for m in metrics if m != "seconds" and len({r["metrics"].get(m) for r in rows}) > 1]
    metrics = moving or [m for m in metrics if m != "seconds"] or metrics
    if not rows or not metrics:
        return None
    x_key = varying[0] if varying else None
    others = varying[1:]
    xs_raw = [r["params"].get(x_key, "") if x_key else r["run"] for r in rows]
    numeric = x_key is not None and all(_as_number(x) is not None for x in xs_raw)
    categories = list(dict.fromkeys(xs_raw))
    ncols = min(3, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.4 * nrows), squeeze=False)
    series = list(dict.fromkeys(tuple(r["params"].get(k, "") for k in others) for r in rows))
    for ax, metric in zip(axes.flat, metrics):
        for s in series:
            pts = [(xs_raw[i], r["metrics"].get(metric)) for i, r in enumerate(rows)
                   if tuple(r["params"].get(k, "") for k in others) == s and r["metrics"].get(metric) is not None]
            if not pts:
                continue
            if numeric:
                pts.sort(key=lambda p: _as_number(p[0]))
                xs = [_as_number(x) for x, _ in pts]
            else:
                xs = [categories.index(x) for x, _ in pts]
            label = ", ".join(f"{k}={v}" for k, v in zip(others, s)) or None
            ax.plot(xs, [y for _, y in pts], marker="o", label=label)
        if not numeric:
            ax.set_xticks(range(len(categories)), [str(c) for c in categories], rotation=30 if len(categories) > 3 else 0,
                          ha="right" if len(categories) > 3 else "center", fontsize=8)
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel(x_key or "run", fontsize=8)
        ax.grid(alpha=0.3)
        if others and len(series) > 1:
            ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(metrics):]:
        ax.set_visible(False)
    fig.suptitle(f"{len(rows)} runs" + (f": headline metrics vs {x_key}" if x_key else ""), fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)


def default_out(paths: list[Path]) -> Path:
    for p in paths:
        if not rundir.is_run_dir(p):
            return p
    return Path("compare")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="alpacare-compare", description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="run dirs and/or sweep dirs (multirun/DATE/TIME)")
    parser.add_argument("--out", type=Path, help="where compare.md/.csv/.png go (default: the first sweep dir, else ./compare)")
    args = parser.parse_args(argv)
    missing = [str(d) for d in args.dirs if not d.is_dir()]
    if missing:
        print(f"alpacare-compare: {missing[0]}: no such directory", file=sys.stderr)
        return 2
    rows, empty = collect(args.dirs)
    if empty:
        print(f"alpacare-compare: {empty[0]}: not a run dir or sweep dir (no .hydra/ or <stage>/stats.json below it)",
              file=sys.stderr)
        return 2
    for r in rows:
        for problem in r["problems"]:
            print(f"alpacare-compare: {problem}; that stage left out of {r['run']}", file=sys.stderr)
    varying, metrics = table_columns(rows)
    out = args.out or default_out(args.dirs)
    out.mkdir(parents=True, exist_ok=True)
    from alpacare.data.jsonl import write_bytes_atomic

    md = to_markdown(rows, varying, metrics)
    write_bytes_atomic(out / "compare.md", md.encode("utf-8"))
    write_bytes_atomic(out / "compare.csv", to_csv(rows, varying, metrics).encode("utf-8"))
    png = chart(out / "compare.png", rows, varying, metrics)
    print(md, end="")
    print(f"\nalpacare-compare: {len(rows)} runs; table {out / 'compare.md'}, {out / 'compare.csv'}"
          + (f", chart {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
