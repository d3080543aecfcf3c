"""The report's figures (matplotlib, PNG): the dataset analysis next to the seeds, the loss curve,
benchmark scores. Each function takes plain numbers and a path and returns the path."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from matplotlib.ticker import MaxNLocator

from alpacare.report.plots import plt, save_figure

DATA_COLOR, SEED_COLOR = "#4c72b0", "#dd8452"


def _shares(counts: dict[str, int], labels: Sequence[str]) -> list[float]:
    total = sum(counts.values()) or 1
    return [100 * counts.get(k, 0) / total for k in labels]


def _paired_barh(ax, labels: list[str], data: dict[str, int], seeds: Optional[dict[str, int]], title: str,
                 data_name: str) -> None:
    y = np.arange(len(labels))
    h = 0.4 if seeds is not None else 0.7
    ax.barh(y - (h / 2 if seeds is not None else 0), _shares(data, labels), h, color=DATA_COLOR,
            label=f"{data_name} (n={sum(data.values())})")
    if seeds is not None:
        ax.barh(y + h / 2, _shares(seeds, labels), h, color=SEED_COLOR, label=f"seeds (n={sum(seeds.values())})")
    ax.set_yticks(y, [_short(k) for k in labels], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("% of tasks")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")


def _short(label: str, width: int = 28) -> str:
    return label if len(label) <= width else label[: width - 1] + "…"


def category_chart(path: Path, data: dict[str, Any], seeds: Optional[dict[str, Any]], data_name: str) -> Optional[Path]:
    """Task type, view and difficulty shares, dataset vs seeds, one panel each (panels the dataset
    has no labels for are left out)."""
    panels = [f for f in ("type", "view", "difficulty") if data.get(f)]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.6), squeeze=False)
    for ax, f in zip(axes[0], panels):
        seed_counts = seeds.get(f) if seeds else None
        keys = list(data[f]) + [k for k in (seed_counts or {}) if k not in data[f]]
        if f == "difficulty":
            keys = sorted(keys, key=lambda k: (len(k), k))
        _paired_barh(ax, keys, data[f], seed_counts, {"type": "task type", "view": "view",
                                                      "difficulty": "difficulty (1 easy - 5 hard)"}[f], data_name)
    fig.tight_layout()
    return save_figure(fig, path)


def top_chart(path: Path, data: dict[str, int], seeds: Optional[dict[str, int]], title: str, data_name: str,
              data_total: int, seed_total: Optional[int]) -> Optional[Path]:
    """Top-N labels of the dataset (topics, leading words) as % of its records, seeds alongside."""
    if not data:
        return None
    labels = list(data)
    y = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(labels) + 1.9))
    h = 0.4 if seeds is not None else 0.7
    ax.barh(y - (h / 2 if seeds is not None else 0), [100 * data[k] / max(data_total, 1) for k in labels], h,
            color=DATA_COLOR, label=f"{data_name} (n={data_total})")
    if seeds is not None:
        ax.barh(y + h / 2, [100 * seeds.get(k, 0) / max(seed_total or 1, 1) for k in labels], h, color=SEED_COLOR,
                label=f"seeds (n={seed_total})")
    ax.set_yticks(y, [_short(k, 34) for k in labels], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("% of tasks")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    height = 0.32 * len(labels) + 1.9
    fig.legend(*ax.get_legend_handles_labels(), fontsize=8, loc="lower center", ncols=2, frameon=False)
    fig.tight_layout(rect=(0, 0.4 / height, 1, 1))  # room for the legend below the axis label
    return save_figure(fig, path)


def length_chart(path: Path, data: dict[str, list[int]], seeds: Optional[dict[str, list[int]]], data_name: str) -> Optional[Path]:
    """Word-count distributions of instruction, input and output (share of records per bin)."""
    fields = [f for f in ("instruction", "input", "output") if data.get(f) or (seeds and seeds.get(f))]
    if not fields:
        return None
    fig, axes = plt.subplots(1, len(fields), figsize=(4.4 * len(fields), 3.6), squeeze=False)
    for ax, f in zip(axes[0], fields):
        values = [v for v in data.get(f, [])] + [v for v in (seeds or {}).get(f, [])]
        top = max(np.percentile(values, 99), 5) if values else 5
        bins = np.linspace(0, top, 26)
        for name, vals, color, style in ((data_name, data.get(f, []), DATA_COLOR, "stepfilled"),
                                         ("seeds", (seeds or {}).get(f, []), SEED_COLOR, "step")):
            if vals:
                clipped = np.clip(vals, 0, top)
                weights = np.full(len(clipped), 100 / len(clipped))
                ax.hist(clipped, bins=bins, weights=weights, histtype=style, alpha=0.6 if style == "stepfilled" else 1.0,
                        linewidth=2 if style == "step" else 0, color=color,
                        label=f"{name} (n={len(vals)}, median {np.median(vals):.0f})")
        ax.set_title(f"{f} length", fontsize=10)
        ax.set_xlabel("words")
        ax.set_ylabel("% of records")
        ax.legend(fontsize=7)
    fig.suptitle("Lengths in words (values past the 99th percentile counted in the last bin)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def rouge_chart(path: Path, sims: np.ndarray, edges: Sequence[float], threshold: float, data_name: str,
                n_seeds: int) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ax.hist(sims, bins=np.asarray(edges), color=DATA_COLOR, edgecolor="white")
    ax.axvline(threshold, color="black", linestyle="--", linewidth=1.1, label=f"dedup threshold {threshold:g}")
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"max ROUGE-L F of each instruction vs the {n_seeds} seed instructions")
    ax.set_ylabel("instructions")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"Similarity to the seeds: {data_name} (n={len(sims)}, median {np.median(sims):.2f})", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def loss_chart(path: Path, rows: list[dict[str, Any]]) -> Optional[Path]:
    """Training loss per optimizer step, learning rate on a second axis."""
    pts = [(r["step"], r["train/loss"]) for r in rows if isinstance(r.get("train/loss"), (int, float))]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.plot([s for s, _ in pts], [v for _, v in pts], marker="o" if len(pts) < 40 else None, markersize=3,
            color=DATA_COLOR, label="train loss")
    ax.set_xlabel("optimizer step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("loss (response tokens)", color=DATA_COLOR)
    ax.grid(alpha=0.3)
    lr = [(r["step"], r["train/lr"]) for r in rows if isinstance(r.get("train/lr"), (int, float))]
    if lr:
        ax2 = ax.twinx()
        ax2.plot([s for s, _ in lr], [v for _, v in lr], color=SEED_COLOR, linestyle="--", linewidth=1, label="learning rate")
        ax2.set_ylabel("learning rate", color=SEED_COLOR)
        ax2.tick_params(axis="y", colors=SEED_COLOR)
        ax2.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    ax.set_title(f"Training loss ({len(pts)} steps)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def benchmark_chart(path: Path, rows: list[dict[str, Any]]) -> Optional[Path]:
    """One bar per task/metric with its standard error."""
    rows = [r for r in rows if isinstance(r.get("value"), (int, float))]
    if not rows:
        return None
    labels = [f"{r['task']}\n{r['metric']}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(4.8, 1.3 * len(rows) + 1.5), 3.8))
    errs = [r.get("stderr") or 0.0 for r in rows]
    bars = ax.bar(range(len(rows)), [r["value"] for r in rows], yerr=errs, capsize=3, color=DATA_COLOR)
    ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    top = max(r["value"] + e for r, e in zip(rows, errs))
    ax.set_ylim(0, max(1.0, top * 1.15))
    ax.set_ylabel("score")
    ax.set_title("Benchmarks", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)
