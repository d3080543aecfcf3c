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


def healthbench_chart(path: Path, rows: list[dict], title: str) -> Path:
    """One panel per HealthBench set: the overall score, then each theme and each axis, as
    horizontal bars (simple-evals' mean clipped to [0, 1]) with their bootstrap std, n in the label."""
    colors = {"overall": "#4c72b0", "theme": "#55a868", "axis": "#dd8452"}
    panels = []
    for r in rows:
        bars = [("overall", "overall", r.get("score"), r.get("bootstrap_std"), r.get("n"))]
        bars += [("theme", t["tag"].split(":", 1)[1], t["score"], t["bootstrap_std"], t["n"]) for t in r.get("themes", [])]
        bars += [("axis", t["tag"].split(":", 1)[1], t["score"], t["bootstrap_std"], t["n"]) for t in r.get("axes", [])]
        panels.append((r["test_set"], [b for b in bars if b[2] is not None]))
    height = max(3.0, 0.32 * max((len(b) for _, b in panels), default=1) + 1.6)
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(6.4 * max(len(panels), 1), height), squeeze=False)
    for ax, (name, bars) in zip(axes[0], panels):
        ys = range(len(bars))
        ax.barh(list(ys), [b[2] for b in bars], xerr=[b[3] or 0.0 for b in bars], capsize=3,
                color=[colors[b[0]] for b in bars])
        ax.set_yticks(list(ys), [f"{b[1]} (n={b[4]})" for b in bars], fontsize=8)
        for y, b in zip(ys, bars):
            ax.text(min(b[2] + (b[3] or 0) + 0.02, 0.9), y, f"{b[2]:.3f}", va="center", fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel("score (points met / positive points)")
        ax.set_title(name, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()]
    fig.legend(handles, ["overall", "theme (example tag)", "axis (rubric tag)"], loc="lower center", ncols=3, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return save_figure(fig, path)


def grader_agreement_chart(path: Path, rows: list[dict], title: str) -> Path:
    """HealthBench meta-eval: per category (overall first), the grader's balanced F1 against the
    physicians beside the physicians' mean balanced F1 against each other."""
    import numpy as np

    labels = [str(r["category"]).removeprefix("cluster:") for r in rows]
    ys = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(7.5, max(3.0, 0.45 * len(rows) + 1.9)))
    for offset, key, name, color in ((-0.2, "grader_f1_balanced", "grader vs physicians", "#4c72b0"),
                                     (0.2, "physicians_f1_balanced", "physicians vs each other (mean)", "#55a868")):
        values = [r.get(key) for r in rows]
        bars = ax.barh(ys + offset, [v if v is not None else 0 for v in values], 0.38, label=name, color=color)
        ax.bar_label(bars, labels=["–" if v is None else f"{v:.2f}" for v in values], fontsize=7, padding=2)
    ax.set_yticks(ys, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.08)
    ax.set_xlabel("balanced F1 (pairwise, simple-evals' meta-eval)")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=2)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig, path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
