"""Summarize paper-recipe runs: one markdown row per job that finished training.

    python experiments/paper_recipe/summarize.py DIR [DIR ...]

Each DIR is a run dir (``hydra.run.dir``) or a sweep dir holding job dirs. A job's base model
and tuning come from its ``.hydra/config.yaml`` (what it actually ran with), its numbers from
``train/stats.json`` and, where the job ran them, ``instructions/stats.json`` and
``responses/stats.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Iterator

import yaml


def job_dirs(root: Path) -> Iterator[Path]:
    """``root`` itself if it is a run dir, else its job subdirs (a sweep)."""
    if (root / ".hydra").is_dir():
        yield root
    else:
        yield from sorted(p for p in root.iterdir() if (p / ".hydra").is_dir())


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text("utf-8")) if path.is_file() else {}


def job_row(job: Path) -> dict[str, Any]:
    cfg = yaml.safe_load((job / ".hydra" / "config.yaml").read_text("utf-8")) or {}
    train = read_json(job / "train" / "stats.json")
    instructions = read_json(job / "instructions" / "stats.json")
    responses = read_json(job / "responses" / "stats.json")
    cost = instructions.get("cost_usd", 0.0) + responses.get("cost_usd", 0.0)
    return {
        "job": job.name,
        "model": cfg.get("model", {}).get("name", "?"),
        "tuning": cfg.get("tuning", {}).get("method", "?"),
        "experiment": cfg.get("experiment") or "-",
        "tasks": instructions.get("tasks_kept", "-"),
        "examples": train.get("examples", responses.get("answered", "-")),
        "teacher_usd": round(cost, 2) if (instructions or responses) else "-",
        "steps": train.get("steps", "-"),
        "final_loss": train.get("final_loss", "-"),
        "tokens_per_s": train.get("tokens_per_s", "-"),
        "peak_rss_gb": train.get("peak_rss_gb", "-"),
        "train_s": train.get("train_seconds", "-"),
    }


def markdown_table(rows: list[dict[str, Any]]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path)
    args = parser.parse_args()
    rows = [job_row(job) for root in args.dirs for job in job_dirs(root)]
    if not rows:
        raise SystemExit(f"summarize: no run dirs (with .hydra/) under {', '.join(map(str, args.dirs))}")
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
