"""The length-controlled win rate equals AlpacaEval's own (alpaca-eval, a test dependency), on
synthetic data sets of several shapes and on the released AlpaCare-7b answers."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest

from alpacare.evaluation.winrates import ItemVerdicts, length_controlled, length_controlled_winrate, win_rate_row
from tests.conftest import SHARED_DATA

pd = pytest.importorskip("pandas")
# alpaca-eval still passes sklearn's deprecated penalty="l1" (ours passes l1_ratios=(1,), the same fit).
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module")
def alpaca_eval_glm():
    # alpaca-eval 0.6.6 imports pkg_resources at import time for version strings only; setuptools
    # >= 81 no longer ships it. The stand-in serves that import; no fitting code touches it.
    if "pkg_resources" not in sys.modules:
        try:
            import pkg_resources  # noqa: F401
        except ImportError:
            from packaging.version import parse

            sys.modules["pkg_resources"] = types.SimpleNamespace(parse_version=parse)
    return pytest.importorskip("alpaca_eval.metrics.glm_winrate")


def alpaca_eval_lc(glm, tmp_path, monkeypatch, preference, model_len, reference_len) -> float:
    """AlpacaEval's get_length_controlled_winrate with glm_name="length_controlled_minimal".

    It downloads df_gamed.csv from the hub for the instruction-difficulty column, which the minimal
    formula does not use: a local file with that column stands in for the download."""
    n = len(preference)
    gamed = tmp_path / "df_gamed.csv"
    pd.DataFrame({"index": range(n), "instruction_difficulty": np.zeros(n), "model": "x"}).to_csv(gamed, index=False)
    monkeypatch.setattr(glm, "hf_hub_download", lambda **kwargs: str(gamed))
    annotations = pd.DataFrame({
        "index": range(n),
        "output_1": ["r" * int(k) for k in reference_len],  # AlpacaEval: output_1 is the baseline
        "output_2": ["m" * int(k) for k in model_len],
        "preference": 1 + np.asarray(preference, dtype=float),  # 1 baseline wins, 2 model wins
        "generator_1": "reference", "generator_2": "model",
    })
    metrics = glm.get_length_controlled_winrate(annotations, glm_name="length_controlled_minimal",
                                                save_weights_dir=None, is_warn_extreme_changes=False)
    return float(metrics["length_controlled_winrate"])


def synthetic(seed: int, n: int, length_effect: float, tie_share: float = 0.2, unjudged: float = 0.0):
    """Per-item scores on the judge's grid (0, .25, .5, .75, 1) driven partly by length."""
    rng = np.random.default_rng(seed)
    model_len = rng.integers(40, 1500, n)
    reference_len = rng.integers(40, 1500, n)
    logit = 0.3 + length_effect * np.tanh((model_len - reference_len) / 500)
    orders = (rng.random((n, 2)) < 1 / (1 + np.exp(-logit[:, None]))).astype(float)
    orders[rng.random((n, 2)) < tie_share] = 0.5
    score = orders.mean(axis=1)
    score[rng.random(n) < unjudged] = np.nan
    return score, model_len, reference_len


CASES = {
    "200 items, length-driven": synthetic(0, 200, 2.0),
    "805 items, weak length effect, unjudged items": synthetic(1, 805, 0.3, unjudged=0.1),
    "30 items": synthetic(2, 30, 1.0),
    "12 items, many ties": synthetic(3, 12, 1.0, tie_share=0.6),
    "60 items, shorter wins": synthetic(4, 60, -1.5),
}


@pytest.mark.parametrize("case", list(CASES))
def test_lc_equals_alpaca_evals_own_on_synthetic_sets(alpaca_eval_glm, tmp_path, monkeypatch, case):
    score, model_len, reference_len = CASES[case]
    ours = length_controlled_winrate(score, model_len, reference_len)
    theirs = alpaca_eval_lc(alpaca_eval_glm, tmp_path, monkeypatch, score, model_len, reference_len)
    assert ours == pytest.approx(theirs, abs=1e-6)


def test_lc_equals_alpaca_evals_own_when_the_model_wins_everything(alpaca_eval_glm, tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    model_len, reference_len = rng.integers(40, 900, 40), rng.integers(40, 900, 40)
    score = np.ones(40)
    ours = length_controlled_winrate(score, model_len, reference_len)
    assert ours == pytest.approx(alpaca_eval_lc(alpaca_eval_glm, tmp_path, monkeypatch, score, model_len, reference_len), abs=1e-6)
    assert ours > 50


RELEASED = SHARED_DATA / "model_outputs" / "AlpaCare-7b" / "alpaca_eval" / "seed_0.json"
REFERENCE = SHARED_DATA / "model_outputs" / "medalpaca-7b" / "alpaca_eval" / "seed_0.json"


@pytest.mark.skipif(not RELEASED.is_file(), reason="needs ../shared/alpacare-data")
def test_lc_equals_alpaca_evals_own_on_the_released_answers(alpaca_eval_glm, tmp_path, monkeypatch):
    # AlpaCare-7b vs text-davinci-003 on AlpacaFarm's 805, judged by a rule that prefers the
    # longer answer 70% of the time (a length-biased judge), both orders.
    model = [r["response"] for r in json.loads(RELEASED.read_text())]
    reference = [r["output"] for r in json.loads(REFERENCE.read_text())]
    rng = np.random.default_rng(0)
    items = []
    for m, r in zip(model, reference):
        verdicts = ["model" if (len(m) > len(r)) == (rng.random() < 0.7) else "reference" for _ in range(2)]
        items.append(ItemVerdicts(*verdicts, len(m), len(r)))
    row = win_rate_row(items, strict=True, bootstrap=0)
    theirs = alpaca_eval_lc(alpaca_eval_glm, tmp_path, monkeypatch, [i.score(True) for i in items],
                            [i.model_len for i in items], [i.reference_len for i in items])
    assert row["lc_win_rate"] == pytest.approx(round(theirs, 2), abs=1e-9)
    assert length_controlled(items, True, 0, 0)[0] == pytest.approx(theirs, abs=1e-6)
    assert row["lc_win_rate"] != row["win_rate"]


def test_lc_needs_one_judged_item_per_fold_and_keeps_a_bootstrap_se():
    items = [ItemVerdicts("model", "tie", 100 + 7 * k, 150) for k in range(4)]
    assert length_controlled(items, strict=False, bootstrap=20, seed=0) == (None, None)
    score, model_len, reference_len = CASES["30 items"]
    items = [ItemVerdicts(*(["model", "reference"] if s == 0.5 else ["model", "model"] if s >= 0.75 else ["reference"] * 2),
                          int(m), int(r)) for s, m, r in zip(score, model_len, reference_len)]
    lc, se = length_controlled(items, strict=True, bootstrap=30, seed=0)
    assert lc is not None and 0 < se < 30
    assert length_controlled(items, strict=True, bootstrap=30, seed=0) == (lc, se)  # seeded
