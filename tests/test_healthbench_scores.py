"""HealthBench scores and grader-check agreement against simple-evals' own functions, imported from
the shared reference copy (tests/conftest.py ``simple_evals``) and run on the same verdicts: the
grader prompt, every per-conversation metric, and the aggregate (clipped mean, bootstrap std, n)
agree to 1e-9; so do the meta-eval's pairwise precision / recall / F1 / balanced metrics, for the
grader and for each physician."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest

from alpacare.data.healthbench import load_conversations
from alpacare.evaluation.healthbench import (aggregate, example_metrics, physician_agreement, rater_agreement,
                                             tag_rows)
from alpacare.prompts.healthbench import load_protocol, parse_verdict, rubric_item

TOL = 1e-9


def _met(criterion: str, answer: str) -> bool:
    return int(hashlib.sha256((criterion + answer).encode()).hexdigest(), 16) % 3 != 0


def synthetic(n: int, seed: int) -> list[dict]:
    """Conversations with random rubrics: integer and fractional points, negative ones, shared and
    one-off tags, example tags; some tags with only negative criteria (no tag score there)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        rubrics = []
        for k in range(rng.randint(2, 9)):
            points = rng.choice([rng.randint(-10, 10) or 1, round(rng.uniform(-5, 8), 1)])
            tags = rng.sample(["axis:accuracy", "axis:completeness", "axis:communication_quality",
                               f"cluster:c{rng.randint(0, 3)}", "level:example", "level:cluster"], rng.randint(0, 3))
            rubrics.append({"criterion": f"criterion {i}.{k}", "points": points, "tags": tags})
        rubrics.append({"criterion": f"criterion {i}.pos", "points": 5, "tags": ["axis:accuracy"]})
        out.append({"prompt_id": f"s{i}", "prompt": [{"role": "user", "content": f"question {i}"}], "rubrics": rubrics,
                    "example_tags": rng.sample(["theme:a", "theme:b", "theme:c", "physician_agreed_category:x"],
                                               rng.randint(1, 2))})
    return out


def theirs_per_example(simple_evals, protocol, example: dict, answer: str, seen_prompts: list[str]) -> dict:
    """simple-evals' grade_sample on one conversation, its grader answering by ``_met``."""
    module = simple_evals.eval
    items = [module.RubricItem.from_dict(r) for r in example["rubrics"]]

    class Grader:
        def __call__(self, messages):
            prompt = messages[-1]["content"]
            seen_prompts.append(prompt)
            line = prompt.split("# Rubric item\n", 1)[1].split("\n\n# Instructions", 1)[0]
            criterion = line.split("] ", 1)[1]
            verdict = {"explanation": "stub", "criteria_met": _met(criterion, answer)}
            return simple_evals.SamplerResponse(f"```json\n{json.dumps(verdict)}\n```", messages, {})

    evaluator = object.__new__(module.HealthBenchEval)
    evaluator.grader_model = Grader()
    metrics, _, _ = evaluator.grade_sample(example["prompt"], answer, example["example_tags"], items)
    return metrics


def test_scores_agree_with_simple_evals(simple_evals, healthbench_data, monkeypatch):
    monkeypatch.setenv("ALPACARE_DATA_DIR", str(healthbench_data))
    protocol = load_protocol()
    examples = load_conversations("healthbench") + synthetic(60, seed=7)
    answers = [f"answer {k}: see a clinician." for k in range(len(examples))]
    ours, theirs, results = [], [], []
    for example, answer in zip(examples, answers):
        seen: list[str] = []
        their_metrics = theirs_per_example(simple_evals, protocol, example, answer, seen)
        # the grader prompt is simple-evals', byte for byte
        assert seen == [protocol.user_message(example["prompt"], answer, rubric_item(r["criterion"], r["points"]))
                        for r in example["rubrics"]]
        our_metrics = example_metrics(example["rubrics"], [_met(r["criterion"], answer) for r in example["rubrics"]],
                                      example["example_tags"])
        assert list(our_metrics) == list(their_metrics)
        assert np.allclose([our_metrics[k] for k in our_metrics], [their_metrics[k] for k in our_metrics], rtol=0, atol=TOL)
        ours.append(our_metrics)
        results.append(simple_evals.SingleEvalResult(score=their_metrics["overall_score"], metrics=their_metrics))
    assert any(m["overall_score"] < 0 for m in ours)  # clipping is exercised
    np.random.seed(1234)
    their_agg = simple_evals.eval._aggregate_get_clipped_mean(results)
    our_agg = aggregate(ours, bootstrap=1000, seed=1234)
    assert our_agg["score"] == pytest.approx(their_agg.score, abs=TOL)
    assert set(our_agg["metrics"]) == set(their_agg.metrics)
    for key, value in their_agg.metrics.items():
        assert our_agg["metrics"][key] == pytest.approx(value, abs=TOL), key
    themes = tag_rows(our_agg["metrics"], "theme:")
    assert {t["tag"] for t in themes} == {"theme:a", "theme:b", "theme:c"} | {
        t for e in load_conversations("healthbench") for t in e["example_tags"] if t.startswith("theme:")}


def test_unparsed_criteria_are_left_out_of_the_score():
    rubrics = [{"criterion": "a", "points": 4, "tags": ["axis:x"]}, {"criterion": "b", "points": 6, "tags": []},
               {"criterion": "c", "points": -2, "tags": ["axis:x"]}]
    assert example_metrics(rubrics, [True, None, True], ["theme:t"]) == {"overall_score": 0.5, "theme:t": 0.5, "axis:x": 0.5}
    assert example_metrics(rubrics, [None, None, True], []) is None


@pytest.mark.parametrize("reply, met", [
    ('{"explanation": "x", "criteria_met": true}', True),
    ('```json\n{"explanation": "x", "criteria_met": false}\n```', False),
    ('  ```json{"criteria_met": true}```  ', True),
    ('{"criteria_met": "true"}', None),
    ('{"explanation": "no verdict"}', None),
    ('Sure! {"criteria_met": true}', None),
    ('[true]', None),
    ('', None),
])
def test_verdict_parsing_is_simple_evals(simple_evals, healthbench_data, monkeypatch, reply, met):
    monkeypatch.setenv("ALPACARE_DATA_DIR", str(healthbench_data))
    ours = parse_verdict(reply, load_protocol().fence)
    assert (ours["criteria_met"] if ours else None) == met
    theirs = simple_evals.eval.parse_json_to_dict(reply)
    their_label = theirs.get("criteria_met") if isinstance(theirs, dict) else None
    assert (their_label if isinstance(their_label, bool) else None) == met


def test_grader_check_agreement_agrees_with_simple_evals(simple_evals):
    rng = random.Random(3)
    rows = []
    for i in range(80):
        n = rng.randint(1, 4)
        rows.append({"category": f"cluster:c{rng.randint(0, 2)}_pos{i % 2}", "binary_labels": [rng.random() < 0.6 for _ in range(n)],
                     "anonymized_physician_ids": rng.sample([f"p{j}" for j in range(8)], n), "prompt": [],
                     "completion": "", "rubric": f"r{i}"})
    grader = [rng.random() < 0.5 for _ in rows]
    args = dict(other_preds_list=[r["binary_labels"] for r in rows], cluster_list=[r["category"] for r in rows])
    theirs = simple_evals.meta.compute_metrics_for_rater_by_class(self_pred_list=grader, model_or_physician="model", **args)
    ours = rater_agreement(grader, args["other_preds_list"], args["cluster_list"], "model")
    assert ours.keys() == theirs.keys()
    for key in theirs:
        assert ours[key]["n"] == pytest.approx(theirs[key]["n"], abs=TOL)
        assert (ours[key]["value"] is None) == (theirs[key]["value"] is None)
        if theirs[key]["value"] is not None:
            assert ours[key]["value"] == pytest.approx(theirs[key]["value"], abs=TOL), key

    # physicians: HealthBenchMetaEval's own loop, with a grader that answers ``grader``
    labels = iter(grader)

    def sampler(messages):
        return simple_evals.SamplerResponse(json.dumps({"criteria_met": next(labels)}), messages, {})

    meta = object.__new__(simple_evals.meta.HealthBenchMetaEval)
    meta.examples, meta.n_threads = rows, 1
    result = meta(sampler)
    their_physicians = result.metadata["physician_agreement_metric_lists"]
    ours_physicians = physician_agreement(rows)
    assert ours_physicians.keys() == their_physicians.keys()
    for key, per in their_physicians.items():
        assert ours_physicians[key].keys() == per.keys()
        for physician, m in per.items():
            assert ours_physicians[key][physician]["n"] == pytest.approx(m["n"], abs=TOL)
            assert ours_physicians[key][physician]["value"] == (None if m["value"] is None else pytest.approx(m["value"], abs=TOL))
    assert result.metrics["pairwise_model_f1_balanced"] == pytest.approx(ours["pairwise_model_f1_balanced"]["value"], abs=TOL)
