"""Statistics for human review: Wilson score intervals, Student-t intervals of a mean, Cohen's and
Fleiss' kappa.

Plain Python (scipy only for the t quantile, imported when needed): each is a few lines, and the
review tools start fast.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Hashable, Iterable, Optional, Sequence

Z95 = 1.959963984540054  # two-sided 95% standard normal quantile


def wilson_interval(k: float, n: int, z: float = Z95) -> tuple[Optional[float], Optional[float]]:
    """Wilson score interval for a proportion k/n; (None, None) when n == 0.

    ``k`` may be fractional (a pairwise win rate counts a tie as half a win).
    """
    if n <= 0:
        return None, None
    if not 0 <= k <= n:
        raise ValueError(f"k={k} outside [0, n={n}]")
    p = k / n
    z2 = z * z
    denom = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def proportion(k: float, n: int, z: float = Z95) -> dict:
    """``{"k", "n", "share", "ci_low", "ci_high"}`` for k of n (share and bounds None when n == 0)."""
    low, high = wilson_interval(k, n, z)
    return {"k": k, "n": n, "share": (k / n) if n else None, "ci_low": low, "ci_high": high}


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[Optional[float], Optional[float], Optional[float]]:
    """Mean of ``values`` and its two-sided Student-t interval (mean -/+ t * sd / sqrt(n), sd with
    n - 1); bounds None with fewer than two values, all None with none."""
    n = len(values)
    if n == 0:
        return None, None, None
    mean = math.fsum(values) / n
    if n < 2:
        return mean, None, None
    from scipy.stats import t  # here, not at import: the review tools start fast

    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> Optional[float]:
    """Cohen's kappa for two raters' labels of the same items (any number of classes).

    None when undefined: no items, or chance agreement is 1 (both raters used one and the same
    class for every item).
    """
    if len(a) != len(b):
        raise ValueError("both raters must label the same items")
    n = len(a)
    if n == 0:
        return None
    observed = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    expected = sum(ca[c] * cb[c] for c in set(ca) | set(cb)) / (n * n)
    if expected >= 1:
        return None
    return (observed - expected) / (1 - expected)


def fleiss_kappa(items: Iterable[Iterable[Hashable]]) -> Optional[float]:
    """Fleiss' kappa; ``items`` holds, per item, the labels its raters gave (same count per item).

    None when undefined: no items, fewer than two raters, or chance agreement is 1.
    """
    counts = [Counter(labels) for labels in items]
    if not counts:
        return None
    m = sum(counts[0].values())
    if m < 2:
        return None
    if any(sum(c.values()) != m for c in counts):
        raise ValueError("every item needs the same number of ratings")
    n_items = len(counts)
    p_bar = sum((sum(v * v for v in c.values()) - m) / (m * (m - 1)) for c in counts) / n_items
    totals: Counter = Counter()
    for c in counts:
        totals.update(c)
    p_e = sum((t / (n_items * m)) ** 2 for t in totals.values())
    if p_e >= 1:
        return None
    return (p_bar - p_e) / (1 - p_e)


def percent_agreement(items: Iterable[Iterable[Hashable]]) -> Optional[float]:
    """Share of items on which every rater gave the same label; None with no items."""
    rows = [set(labels) for labels in items]
    return sum(len(r) == 1 for r in rows) / len(rows) if rows else None
