"""Summarize a dedup threshold sweep: a markdown table and a kept-ratio-vs-threshold chart.

    python experiments/dedup_threshold/summarize.py [SWEEP_DIR] [--png PATH]

SWEEP_DIR (default multirun/dedup_threshold) holds one job dir per threshold, as written by
``alpacare -m stages=[dedup] ... hydra.sweep.dir=SWEEP_DIR``. Each job's threshold and mode
come from its ``.hydra/config.yaml`` (what the job actually ran with), its numbers from
``dedup/stats.json``. The chart goes to SWEEP_DIR/kept_ratio.png unless --png says otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml


def load_jobs(sweep_dir: Path) -> list[dict]:
    """One row per finished job (stats.json present), sorted by mode then threshold."""
    rows = []
    for stats_path in sorted(sweep_dir.glob("*/dedup/stats.json")):
        job = stats_path.parent.parent
        stats = json.loads(stats_path.read_text("utf-8"))
        config_path = job / ".hydra" / "config.yaml"
        dedup = (yaml.safe_load(config_path.read_text("utf-8")) or {}).get("dedup", {}) if config_path.is_file() else {}
        rows.append({
            "job": job.name,
            "threshold": float(dedup.get("threshold", stats["threshold"])),
            "mode": dedup.get("mode", stats["mode"]),
            "against_seeds": dedup.get("against_seeds", stats["against_seeds"]),
            **{k: stats[k] for k in ("total", "kept", "dropped", "kept_ratio", "seconds")},
        })
    return sorted(rows, key=lambda r: (r["mode"], r["threshold"]))


def markdown_table(rows: list[dict]) -> str:
    lines = ["| mode | threshold | against seeds | total | kept | dropped | kept ratio | seconds |",
             "| --- | ---: | :---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['threshold']:g} | {'yes' if r['against_seeds'] else 'no'} | {r['total']} | "
                     f"{r['kept']} | {r['dropped']} | {r['kept_ratio']:.3f} | {r['seconds']:.1f} |")
    return "\n".join(lines)


def plot_kept_ratio(rows: list[dict], path: Path) -> Path:
    from alpacare.plots import plt, save_figure

    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    for mode in sorted({r["mode"] for r in rows}):
        pts = [(r["threshold"], r["kept_ratio"]) for r in rows if r["mode"] == mode]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=mode)
    ax.set_xlabel("ROUGE-L threshold (dedup.threshold)")
    ax.set_ylabel("kept ratio")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(title="dedup.mode")
    ax.set_title(f"Instructions kept vs threshold ({rows[0]['total']} instructions)")
    fig.tight_layout()
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("sweep_dir", nargs="?", default="multirun/dedup_threshold", type=Path)
    ap.add_argument("--png", type=Path, help="chart path (default SWEEP_DIR/kept_ratio.png)")
    args = ap.parse_args(argv)
    rows = load_jobs(args.sweep_dir)
    if not rows:
        print(f"summarize: no */dedup/stats.json under {args.sweep_dir}; run the sweep first", file=sys.stderr)
        return 1
    print(markdown_table(rows))
    png = plot_kept_ratio(rows, args.png or args.sweep_dir / "kept_ratio.png")
    print(f"\nchart: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
