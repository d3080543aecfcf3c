"""Small matplotlib figures for run outputs (distributions people would rather look at)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import matplotlib

matplotlib.use("Agg")  # headless: runs write PNGs, never open windows
import matplotlib.pyplot as plt  # noqa: E402


def bar_charts(path: Path, title: str, panels: Mapping[str, Mapping[str, int]], ordered: tuple[str, ...] = ()) -> Path:
    """One horizontal bar chart per panel (label -> count), side by side, saved atomically.

    Bars run from the largest count down, except in the ``ordered`` panels (a scale such as
    difficulty 1-5), whose bars keep the order of their labels.
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.5), squeeze=False)
    for ax, (name, counts) in zip(axes[0], panels.items()):
        if name in ordered:
            items = sorted(counts.items(), key=lambda kv: (len(kv[0]), kv[0]))  # "2" before "10"
        else:
            items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        labels = [k for k, _ in items]
        ax.barh(range(len(items)), [v for _, v in items], color="#4c72b0")
        ax.set_yticks(range(len(items)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(name)
        ax.set_xlabel("count")
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def win_rate_chart(path: Path, rows: list[dict], title: str) -> Path:
    """Grouped bars like the AlpaCare paper's Figure 2: one group per test set, one bar per
    reference model, win rate in percent with its standard error, and the 50% line (a tie)."""
    import numpy as np

    test_sets = list(dict.fromkeys(r["test_set"] for r in rows))
    references = list(dict.fromkeys(r["reference"] for r in rows))
    by_key = {(r["test_set"], r["reference"]): r for r in rows}
    width = 0.8 / max(len(references), 1)
    fig, ax = plt.subplots(figsize=(max(6.4, 1.6 * len(test_sets) * max(len(references), 1) / 2 + 2), 4.8))
    colors = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860"]
    for k, ref in enumerate(references):
        xs, heights, errors = [], [], []
        for i, t in enumerate(test_sets):
            row = by_key.get((t, ref))
            if row is None or row["win_rate"] is None:
                continue
            xs.append(i + (k - (len(references) - 1) / 2) * width)
            heights.append(row["win_rate"])
            errors.append(row["se"] or 0.0)
        bars = ax.bar(xs, heights, width, yerr=errors, capsize=3, label=ref, color=colors[k % len(colors)])
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
    ax.axhline(50, color="gray", linestyle="--", linewidth=1)
    ax.set_xticks(np.arange(len(test_sets)), test_sets)
    ax.set_ylim(0, 105)
    ax.set_ylabel("win rate vs reference (%)")
    ax.legend(title="reference", fontsize=8, ncols=min(len(references), 4), loc="upper center",
              bbox_to_anchor=(0.5, -0.1))
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig, path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
