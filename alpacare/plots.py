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


def save_figure(fig, path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
