"""Win rates from pairwise verdicts, with the statistics a reviewer asks for.

Scoring (the AlpaCare paper): per answer order, the model scores 1 for a win, 0.5 for a tie and
0 for a loss; an item's score is the mean over its orders; the win rate is the mean item score
in percent. Every rate below is in percent.

- ``se``: standard error of the mean item score.
- ``tie_rate``: share of parsed verdicts that are ties.
- ``consistency``: share of items, of those with both orders parsed, whose two verdicts agree
  (same winner, or tie both times): how little the judge's answer depends on position.
- ``lc_win_rate``: length-controlled win rate in the spirit of AlpacaEval 2: a logistic model of
  the verdict (soft labels: win 1, tie 0.5, loss 0) on the length difference of the two answers,
  ``p = sigmoid(b0 + b1 * tanh((len_model - len_ref) / sd))`` with ``sd`` the standard deviation
  of the differences, read at zero difference (``sigmoid(b0)``). ``lc_se`` is its bootstrap
  standard error over items. Lengths are in characters, as AlpacaEval counts them.

Parsing rules (see alpacare/prompts/judge.py): lenient scores an item on the orders that parsed
and excludes it only when none did; strict (the release's rule) drops an item when any order
failed to parse. Both counts are reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

SCORE = {"model": 1.0, "tie": 0.5, "reference": 0.0}


@dataclass(frozen=True)
class ItemVerdicts:
    """Both orders of one item: "model" / "reference" / "tie", or None when unparsed."""

    model_first: Optional[str]
    reference_first: Optional[str]
    model_len: int
    reference_len: int

    def parsed(self) -> list[str]:
        return [v for v in (self.model_first, self.reference_first) if v is not None]

    def score(self, strict: bool) -> Optional[float]:
        verdicts = self.parsed()
        if not verdicts or (strict and len(verdicts) < 2):
            return None
        return sum(SCORE[v] for v in verdicts) / len(verdicts)


def fit_length_logistic(length_diff: np.ndarray, y: np.ndarray, ridge: float = 1e-4,
                        iterations: int = 50) -> tuple[float, float]:
    """(b0, b1) of the soft-label logistic model above, by Newton's method. A tiny ridge on the
    slope keeps it finite when every answer of one length side wins."""
    sd = float(np.std(length_diff))
    x = np.tanh(length_diff / sd) if sd > 0 else np.zeros_like(length_diff, dtype=float)
    X = np.column_stack([np.ones_like(x), x])
    beta = np.zeros(2)
    penalty = np.diag([0.0, ridge])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(X @ beta, -30, 30)))
        grad = X.T @ (y - p) - penalty @ beta
        w = np.maximum(p * (1 - p), 1e-9)
        hessian = (X * w[:, None]).T @ X + penalty + np.diag([1e-9, 0.0])
        step = np.linalg.solve(hessian, grad)
        beta = beta + step
        if np.max(np.abs(step)) < 1e-10:
            break
    return float(beta[0]), float(beta[1])


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(min(z, 30.0), -30.0)))


def length_controlled(items: Sequence[ItemVerdicts], strict: bool, bootstrap: int, seed: int) -> tuple[Optional[float], Optional[float]]:
    """LC win rate and its bootstrap SE (percent) over the items a rule keeps."""
    rows = []  # (item number, length difference, soft label) per parsed verdict
    for k, item in enumerate(items):
        if item.score(strict) is None:
            continue
        for v in item.parsed():
            rows.append((k, item.model_len - item.reference_len, SCORE[v]))
    if not rows:
        return None, None
    data = np.array(rows, dtype=float)
    b0, _ = fit_length_logistic(data[:, 1], data[:, 2])
    lc = 100 * _sigmoid(b0)
    if bootstrap <= 1:
        return lc, None
    rng = np.random.default_rng(seed)
    kept = np.unique(data[:, 0])
    by_item = {k: data[data[:, 0] == k] for k in kept}
    estimates = []
    for _ in range(bootstrap):
        sample = np.concatenate([by_item[k] for k in rng.choice(kept, size=len(kept), replace=True)])
        estimates.append(100 * _sigmoid(fit_length_logistic(sample[:, 1], sample[:, 2])[0]))
    return lc, float(np.std(estimates, ddof=1))


def win_rate_row(items: Sequence[ItemVerdicts], *, strict: bool, bootstrap: int = 500, seed: int = 0) -> dict:
    """One row of ``judge/stats.json`` ``win_rates`` (test_set and reference added by the caller)."""
    scores = [s for s in (item.score(strict) for item in items) if s is not None]
    judged = [item for item in items if item.score(strict) is not None]
    verdicts = [v for item in items for v in item.parsed()]
    both = [item for item in items if len(item.parsed()) == 2]
    n = len(scores)
    lc, lc_se = length_controlled(items, strict, bootstrap, seed)
    return {
        "win_rate": _round(100 * float(np.mean(scores))) if n else None,
        "se": _round(100 * float(np.std(scores, ddof=1)) / math.sqrt(n)) if n > 1 else None,
        "n": n,
        "n_unparsed": sum(v is None for item in items for v in (item.model_first, item.reference_first)),
        "n_dropped": len(items) - n,
        "tie_rate": _round(100 * sum(v == "tie" for v in verdicts) / len(verdicts)) if verdicts else None,
        "consistency": _round(100 * sum(i.model_first == i.reference_first for i in both) / len(both)) if both else None,
        "lc_win_rate": _round(lc),
        "lc_se": _round(lc_se),
        "model_len": _round(float(np.mean([i.model_len for i in judged]))) if judged else None,
        "reference_len": _round(float(np.mean([i.reference_len for i in judged]))) if judged else None,
    }


def dropped(items: Sequence[ItemVerdicts], strict: bool) -> int:
    """Items a rule cannot score (``items`` parsed with that rule)."""
    return sum(item.score(strict) is None for item in items)


def _round(x: Optional[float], digits: int = 2) -> Optional[float]:
    return None if x is None else round(float(x), digits)
