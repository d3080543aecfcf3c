"""Win rates from pairwise verdicts, with the statistics a reviewer asks for.

Scoring (the AlpaCare paper): per answer order, the model scores 1 for a win, 0.5 for a tie and
0 for a loss; an item's score is the mean over its orders; the win rate is the mean item score
in percent. Every rate below is in percent.

- ``se``: standard error of the mean item score.
- ``tie_rate``: share of parsed verdicts that are ties.
- ``consistency``: share of items, of those with both orders parsed, whose two verdicts agree
  (same winner, or tie both times): how little the judge's answer depends on position.
- ``lc_win_rate``: the length-controlled win rate exactly as AlpacaEval 2 computes it with its
  ``length_controlled_minimal`` model (alpaca_eval/metrics/glm_winrate.py; ``LC_MODEL``): per item,
  the preference for the model (its score above, in [0, 1]) is fitted by a logistic regression on
  ``tanh((len_reference - len_model) / sd)`` and a constant, with ``sd`` the sample standard
  deviation of the length differences over all items of the row; L1 penalty, no separate
  intercept, liblinear, C chosen among 10 values by 5-fold cross-validation grouped by item with
  the log loss of the continuous targets (each item enters twice, as label 1 weighted by its
  preference and label 0 weighted by the rest). The LC win rate is the predicted preference at zero
  length difference. Lengths are in characters, as AlpacaEval counts them. It needs at least 5
  judged items (one per fold). ``lc_se`` is its bootstrap standard error over items (AlpacaEval's
  own ``lc_standard_error`` is the spread of predictions that are all equal under this model, so 0).

Parsing rules (see alpacare/prompts/judge.py): lenient scores an item on the orders that parsed
and excludes it only when none did; strict (the release's rule) drops an item when any order
failed to parse. Both counts are reported.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import sklearn
from sklearn.linear_model import LogisticRegressionCV
from sklearn.metrics import make_scorer
from sklearn.model_selection import GroupKFold

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


# Stats say which model produced lc_win_rate.
LC_MODEL = ("AlpacaEval 2 length_controlled_minimal (alpaca_eval.metrics.glm_winrate): logistic regression of the "
            "per-item preference on tanh(length difference / its sample std) and a constant, L1, C by 5-fold CV "
            "grouped by item, read at zero length difference")
LC_FOLDS = 5  # AlpacaEval's n_splits
# AlpacaEval's LogisticRegressionCV settings (fit_LogisticRegressionCV): seed, solver, penalty.
_LC_SEED = 123


def _continuous_log_loss(y_true: np.ndarray, y_pred: np.ndarray, true_prob: np.ndarray) -> float:
    """AlpacaEval's CV score (logloss_continuous): the log loss of the continuous targets, which the
    duplicated rows carry as ``true_prob`` (label 1 rows: the preference; label 0 rows: 1 - it)."""
    y = np.where(y_true == 1, true_prob, 1 - true_prob)
    p = np.clip(y_pred, 1e-15, 1 - 1e-15)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def length_controlled_winrate(preference: np.ndarray, model_len: np.ndarray, reference_len: np.ndarray) -> Optional[float]:
    """LC win rate in percent, as AlpacaEval's length_controlled_minimal computes it (module
    docstring), or None with fewer than ``LC_FOLDS`` judged items.

    ``preference``: per item, the model's score in [0, 1], NaN where unjudged (such items still
    count towards the standard deviation of the length differences, as in AlpacaEval)."""
    preference = np.asarray(preference, dtype=float)
    # AlpacaEval's output_1 is the baseline (our reference), output_2 the model.
    delta = np.asarray(reference_len, dtype=float) - np.asarray(model_len, dtype=float)
    sd = float(np.std(delta, ddof=1)) if delta.size > 1 else 0.0
    # All differences equal: nothing to control for (AlpacaEval would divide by zero).
    x = np.tanh(delta / sd) if sd > 0 else np.zeros_like(delta)
    judged = ~np.isnan(preference)
    n = int(judged.sum())
    if n < LC_FOLDS:
        return None
    x, p = x[judged], preference[judged]
    # Design matrix in the order of AlpacaEval's formula: np.tanh(std_delta_len), not_gamed_baseline (1).
    features = np.column_stack([x, np.ones(n)])
    X = np.concatenate([features, features])
    y = np.concatenate([np.ones(n), np.zeros(n)])
    target = np.concatenate([p, 1 - p])
    groups = np.concatenate([np.arange(n), np.arange(n)])
    with sklearn.config_context(enable_metadata_routing=True), warnings.catch_warnings():
        # sklearn >= 1.8 spells penalty="l1" as l1_ratios=(1,); same fit.
        warnings.simplefilter("ignore", FutureWarning)
        scorer = make_scorer(_continuous_log_loss, response_method="predict_proba",
                             greater_is_better=False).set_score_request(true_prob=True)
        model = LogisticRegressionCV(cv=GroupKFold(n_splits=LC_FOLDS), scoring=scorer, random_state=_LC_SEED,
                                     dual=False, l1_ratios=(1,), solver="liblinear", fit_intercept=False,
                                     use_legacy_attributes=False)
        model.set_fit_request(sample_weight=True)
        model.fit(X, y, sample_weight=target, groups=groups, true_prob=target)
    return 100 * float(model.predict_proba(np.array([[0.0, 1.0]]))[0, 1])


def length_controlled(items: Sequence[ItemVerdicts], strict: bool, bootstrap: int, seed: int) -> tuple[Optional[float], Optional[float]]:
    """LC win rate (``length_controlled_winrate``) over a row's items and its bootstrap SE
    (percent): items resampled with replacement, the whole fit repeated on each resample."""
    scores = np.array([np.nan if (s := item.score(strict)) is None else s for item in items], dtype=float)
    model_len = np.array([item.model_len for item in items], dtype=float)
    reference_len = np.array([item.reference_len for item in items], dtype=float)
    lc = length_controlled_winrate(scores, model_len, reference_len)
    if lc is None or bootstrap <= 1:
        return lc, None
    rng = np.random.default_rng(seed)
    estimates = []
    for _ in range(bootstrap):
        k = rng.integers(0, len(items), len(items))
        estimate = length_controlled_winrate(scores[k], model_len[k], reference_len[k])
        if estimate is not None:  # a resample with too few judged items has no fit
            estimates.append(estimate)
    return lc, float(np.std(estimates, ddof=1)) if len(estimates) > 1 else None


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
