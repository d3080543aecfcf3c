"""The judge stage on HealthBench sets, through the real CLI and the real ``openai`` client against
the loopback server playing the grader: every rubric item is one request as simple-evals sends it
(system message, temperature, max_tokens from the pinned files), a reply that does not parse is
asked again a bounded number of times and the unparsed are counted, the stage's numbers equal
simple-evals' own functions run on the same verdicts (1e-9), a rerun asks nothing, and a spend cap
stops cleanly with every paid verdict kept."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import HEALTHBENCH_EXAMPLES, run_cli
from tests.openai_server import OpenAITestServer

pytestmark = pytest.mark.timeout(300)
TOL = 1e-9
ALWAYS_BAD = "Invents findings"  # the grader never answers this criterion in JSON
BAD_ONCE = "overly verbose"  # ... answers it in JSON on the second request


def _rubric_and_answer(prompt: str) -> tuple[str, str]:
    rubric = prompt.split("# Rubric item\n", 1)[1].split("\n\n# Instructions", 1)[0]
    conversation = prompt.split("# Conversation\n", 1)[1].split("\n\n# Rubric item", 1)[0]
    return rubric, conversation.rsplit("\n\nassistant: ", 1)[1]


def met(rubric: str, answer: str) -> bool:
    return int(hashlib.sha256((rubric + answer).encode()).hexdigest(), 16) % 3 != 0


class Grader:
    """The test grader: a rule on the rubric item and the answer, in simple-evals' fenced JSON;
    misbehaving on purpose for two criteria."""

    def __init__(self):
        self.seen: Counter = Counter()

    def __call__(self, body: dict) -> str:
        prompt = body["messages"][-1]["content"]
        rubric, answer = _rubric_and_answer(prompt)
        self.seen[prompt] += 1
        if ALWAYS_BAD in rubric or (BAD_ONCE in rubric and self.seen[prompt] == 1):
            return "The answer is fine, I think."
        verdict = {"explanation": f"checked {rubric[:20]}", "criteria_met": met(rubric, answer)}
        return "```json\n" + json.dumps(verdict, indent=2) + "\n```"


def write_predictions(path: Path) -> list[dict]:
    conversations = [json.loads(line) for line in (HEALTHBENCH_EXAMPLES / "healthbench.jsonl").read_text().splitlines()]
    records = [{"prompt_id": c["prompt_id"], "output": f"Answer {k}: please see a doctor soon; call 911 if it is an emergency."}
               for k, c in enumerate(conversations)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return conversations


def judge_args(server: OpenAITestServer, run_dir: Path, predictions: Path, *extra: str, stages: str = "judge") -> list[str]:
    return [f"stages=[{stages}]", "judge=openai_compatible", f"judge.base_url={server.url}", "judge.model=test-grader",
            f"judge.predictions={predictions}", "judge.test_set=healthbench", "healthbench.retries=2",
            "logger=none", f"hydra.run.dir={run_dir}", *extra]


def simple_evals_on(simple_evals, conversations, grades, answers) -> tuple:
    """simple-evals' grade_sample and aggregation on the stage's parsed verdicts (an unparsed
    criterion, which simple-evals would ask about for ever, is left out as the stage leaves it out)."""
    module = simple_evals.eval
    verdicts = {(g["prompt_id"], g["criterion_index"]): g for g in grades}
    results = []
    for c in conversations:
        kept = [(k, r) for k, r in enumerate(c["rubrics"]) if verdicts[(c["prompt_id"], k)]["criteria_met"] is not None]
        replies = iter([json.dumps({"criteria_met": verdicts[(c["prompt_id"], k)]["criteria_met"]}) for k, _ in kept])

        class Replay:
            def __call__(self, messages):
                return simple_evals.SamplerResponse(next(replies), messages, {})

        evaluator = object.__new__(module.HealthBenchEval)
        evaluator.grader_model = Replay()
        metrics, _, _ = evaluator.grade_sample(c["prompt"], answers[c["prompt_id"]], c["example_tags"],
                                               [module.RubricItem.from_dict(r) for _, r in kept])
        results.append(simple_evals.SingleEvalResult(score=metrics["overall_score"], metrics=metrics))
    np.random.seed(0)  # healthbench.bootstrap_seed's default
    return module._aggregate_get_clipped_mean(results)


def test_grading_as_simple_evals_with_bounded_retries_and_resume(tmp_path, healthbench_data, simple_evals):
    predictions = tmp_path / "answers.jsonl"
    conversations = write_predictions(predictions)
    answers = {json.loads(line)["prompt_id"]: json.loads(line)["output"] for line in predictions.read_text().splitlines()}
    criteria = sum(len(c["rubrics"]) for c in conversations)
    bad_once = sum(BAD_ONCE in r["criterion"] for c in conversations for r in c["rubrics"])
    always_bad = sum(ALWAYS_BAD in r["criterion"] for c in conversations for r in c["rubrics"])
    assert bad_once and always_bad
    meta = [json.loads(line) for line in (HEALTHBENCH_EXAMPLES / "healthbench_meta.jsonl").read_text().splitlines()]
    run_dir = tmp_path / "run"
    grader = Grader()
    with OpenAITestServer(reply=grader) as server:
        args = judge_args(server, run_dir, predictions, "healthbench.worst_criteria=3", stages="judge,grader_check,report")
        proc = run_cli([a for a in args if a != "logger=none"], tmp_path, ALPACARE_DATA_DIR=str(healthbench_data))
        assert proc.returncode == 0, proc.stderr[-3000:]
        requests = server.state.requests
        assert len(requests) == criteria + bad_once + 2 * always_bad + len(meta)
        for body in requests:  # simple-evals' grader request
            assert [m["role"] for m in body["messages"]] == ["system", "user"]
            assert body["messages"][0]["content"] == "You are a helpful assistant."
            assert body["temperature"] == 0.5 and body["max_tokens"] == 2048 and "response_format" not in body

        stats = json.loads((run_dir / "judge" / "stats.json").read_text())
        row, = stats["healthbench"]
        assert row["criteria"] == criteria and row["criteria_unparsed"] == always_bad
        assert row["criteria_retried"] == bad_once + always_bad and row["conversations"] == len(conversations)
        assert stats["healthbench_grader"]["simple_evals_grader"] == "gpt-4.1-2025-04-14"
        assert stats["healthbench_spend"]["requests"] == len(requests) - len(meta)
        grades = [json.loads(line) for line in (run_dir / "judge" / "healthbench_grades.jsonl").read_text().splitlines()]
        assert len(grades) == criteria
        assert sum(g["criteria_met"] is None for g in grades) == always_bad
        assert all(g["raw"] == "The answer is fine, I think." for g in grades if g["criteria_met"] is None)
        for g in grades:
            if g["criteria_met"] is not None:
                assert g["criteria_met"] == met(f"[{g['points']}] {g['criterion']}", answers[g["prompt_id"]])

        theirs = simple_evals_on(simple_evals, conversations, grades, answers)
        assert row["score"] == pytest.approx(theirs.score, abs=TOL)
        assert set(row["metrics"]) == set(theirs.metrics)
        for key, value in theirs.metrics.items():
            assert row["metrics"][key] == pytest.approx(value, abs=TOL), key
        assert row["bootstrap_std"] == pytest.approx(theirs.metrics["score:bootstrap_std"], abs=TOL)
        assert {t["tag"] for t in row["themes"]} == {t for c in conversations for t in c["example_tags"] if t.startswith("theme:")}
        assert (run_dir / "judge" / "healthbench.png").stat().st_size > 0
        assert "healthbench/score=" in proc.stdout

        # The grader check: the same labels through simple-evals' meta-eval give the same agreement.
        check = json.loads((run_dir / "grader_check" / "stats.json").read_text())
        labels = [json.loads(line) for line in (run_dir / "grader_check" / "labels.jsonl").read_text().splitlines()]
        assert [x["grader_label"] for x in labels] == [met(m["rubric"], m["completion"]) for m in meta]
        replies = iter(x["grader_label"] for x in labels)
        evaluator = object.__new__(simple_evals.meta.HealthBenchMetaEval)
        evaluator.examples, evaluator.n_threads = meta, 1
        their = evaluator(lambda messages: simple_evals.SamplerResponse(json.dumps({"criteria_met": next(replies)}), messages, {}))
        assert check["grader_f1_balanced"] == pytest.approx(their.metrics["pairwise_model_f1_balanced"], abs=TOL)
        physicians = [m["value"] for m in their.metadata["physician_agreement_metric_lists"]["pairwise_physician_f1_balanced"].values()
                      if m["value"] is not None]
        assert check["physicians_f1_balanced"] == pytest.approx(float(np.mean(physicians)), abs=TOL)
        for key, value in their.metrics.items():
            if key.startswith("pairwise_model") or ": pairwise_model" in key:
                assert check["grader_metrics"][key] == pytest.approx(value, abs=TOL), key

        # Where people look: the report's section and W&B's offline runs.
        report = (run_dir / "report" / "report.md").read_text()
        section = report.split("## HealthBench", 1)[1].split("\n## ", 1)[0]
        assert f"{row['score']:.3f} ± {row['bootstrap_std']:.3f}" in section
        assert "Rubric items the answers lost most points on" in section and "Grader check against physicians" in section
        assert "healthbench.png" in section and "agreement.png" in section
        assert section.count("| [") >= 3  # the three costliest rubric items, with their points
        assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 3
        from alpacare.report.compare import main as compare_main

        assert compare_main([str(run_dir), "--out", str(tmp_path / "cmp")]) == 0
        header, _, values = (tmp_path / "cmp" / "compare.md").read_text().splitlines()[:3]
        columns = dict(zip([c.strip() for c in header.split("|")], [c.strip() for c in values.split("|")]))
        assert float(columns["judge/healthbench/score"]) == pytest.approx(row["score"], abs=1e-4)
        assert float(columns["grader_check/grader_f1_balanced"]) == pytest.approx(check["grader_f1_balanced"], abs=1e-4)

        # A rerun on the same run dir asks nothing again.
        proc = run_cli(judge_args(server, run_dir, predictions, stages="judge,grader_check"), tmp_path,
                       ALPACARE_DATA_DIR=str(healthbench_data))
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert len(server.state.requests) == len(requests)


def test_spend_cap_stops_cleanly_and_resumes_without_repeating(tmp_path, healthbench_data, monkeypatch):
    """In process (the CLI's one-line exit 3 on the cap is the judge's, tested in test_judge.py)."""
    from omegaconf import OmegaConf

    from alpacare.config import HealthBenchConfig, JudgeConfig
    from alpacare.errors import SpendCapReached
    from alpacare.evaluation import healthbench as hb_eval
    from alpacare.llm.client import LLMClient, ResponseCache, endpoint_identity
    from alpacare.prompts.healthbench import load_protocol

    monkeypatch.setenv("ALPACARE_DATA_DIR", str(healthbench_data))
    predictions = tmp_path / "answers.jsonl"
    conversations = write_predictions(predictions)
    criteria = sum(len(c["rubrics"]) for c in conversations)
    protocol = load_protocol()
    pairs = hb_eval.align_predictions(predictions, "healthbench", None, None)
    subjects = hb_eval.rubric_subjects("healthbench", pairs, protocol)
    with OpenAITestServer(reply=lambda body: '{"criteria_met": true, "explanation": "ok"}') as server:
        def run(cap: float):
            cfg = OmegaConf.structured(JudgeConfig(name="test", model="test-grader", base_url=server.url, max_concurrency=1,
                                                   price_input_per_1m=100, max_cost_usd=cap))
            settings = hb_eval.grader_settings(cfg, OmegaConf.structured(HealthBenchConfig()), protocol, "healthbench")
            cache = ResponseCache(tmp_path / "cache.sqlite")
            try:
                return hb_eval.grade(subjects, protocol, settings, cfg, endpoint_identity(cfg, cfg.base_url),
                                     tmp_path / "requests.jsonl", tmp_path / "batches.jsonl",
                                     lambda: LLMClient(cfg, server.url, "not-needed", cache), "test")
            finally:
                cache.close()

        with pytest.raises(SpendCapReached, match="max_cost_usd=0.23"):
            run(0.23)
        paid = len(server.state.requests)
        assert 0 < paid < criteria
        assert len((tmp_path / "requests.jsonl").read_text().splitlines()) == paid  # every paid verdict kept
        graded = run(100.0)
        assert len(server.state.requests) == criteria  # nothing asked twice
        _, _, row = hb_eval.score_set("healthbench", pairs, graded.graded, 1000, 0)
        every_criterion_met = [sum(r["points"] for r in c["rubrics"]) / sum(r["points"] for r in c["rubrics"] if r["points"] > 0)
                               for c in conversations]
        assert row["score"] == pytest.approx(min(1.0, max(0.0, float(np.mean(every_criterion_met)))), abs=TOL)
        assert row["criteria_unparsed"] == 0


GRADE_SCRIPT = """
import sys
from omegaconf import OmegaConf
from alpacare.config import HealthBenchConfig, JudgeConfig
from alpacare.evaluation import healthbench as hb_eval
from alpacare.llm.client import LLMClient, ResponseCache, endpoint_identity
from alpacare.prompts.healthbench import load_protocol
url, predictions, work = sys.argv[1:4]
protocol = load_protocol()
cfg = OmegaConf.structured(JudgeConfig(name="test", model="test-grader", base_url=url, max_concurrency=1))
settings = hb_eval.grader_settings(cfg, OmegaConf.structured(HealthBenchConfig()), protocol, "healthbench")
pairs = hb_eval.align_predictions(predictions, "healthbench", None, None)
cache = ResponseCache(__import__("pathlib").Path(work) / "cache.sqlite")
graded = hb_eval.grade(hb_eval.rubric_subjects("healthbench", pairs, protocol), protocol, settings, cfg,
                       endpoint_identity(cfg, url), __import__("pathlib").Path(work) / "requests.jsonl",
                       __import__("pathlib").Path(work) / "batches.jsonl", lambda: LLMClient(cfg, url, "x", cache), "t")
print(sum(g.verdict is not None for g in graded.graded.values()))
"""


def test_kill_9_mid_grading_resumes_without_asking_again(tmp_path, healthbench_data):
    """A grading process killed with SIGKILL loses at most the request in flight; the rerun asks
    only what its work log lacks."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import REPO

    predictions = tmp_path / "answers.jsonl"
    conversations = write_predictions(predictions)
    criteria = sum(len(c["rubrics"]) for c in conversations)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "ALPACARE_DATA_DIR": str(healthbench_data), "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-c", GRADE_SCRIPT]
    with OpenAITestServer(reply=lambda body: '{"criteria_met": false}', delay_s=0.15) as server:
        args = [server.url, str(predictions), str(work)]
        proc = subprocess.Popen(command + args, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        log = work / "requests.jsonl"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not log.is_file() or len(log.read_text().splitlines()) < 5):
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        logged = len(log.read_text().splitlines())
        sent_before = server.state.received
        assert 5 <= logged < criteria and sent_before <= logged + 1  # one request in flight at most
        done = subprocess.run(command + args, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip() == str(criteria)
        # the rerun asks only what the work log lacks (the cache may already hold the one in flight)
        assert server.state.received - sent_before <= criteria - logged and server.state.received <= criteria + 1
        assert len(log.read_text().splitlines()) == criteria


def test_batch_api_grades_and_re_asks_in_a_second_batch(tmp_path, healthbench_data, monkeypatch):
    from omegaconf import OmegaConf

    from alpacare.config import HealthBenchConfig, JudgeConfig
    from alpacare.evaluation import healthbench as hb_eval
    from alpacare.llm.client import LLMClient, endpoint_identity
    from alpacare.prompts.healthbench import load_protocol

    monkeypatch.setenv("ALPACARE_DATA_DIR", str(healthbench_data))
    predictions = tmp_path / "answers.jsonl"
    conversations = write_predictions(predictions)
    criteria = sum(len(c["rubrics"]) for c in conversations)
    always_bad = sum(ALWAYS_BAD in r["criterion"] for c in conversations for r in c["rubrics"])
    bad_once = sum(BAD_ONCE in r["criterion"] for c in conversations for r in c["rubrics"])
    protocol = load_protocol()
    pairs = hb_eval.align_predictions(predictions, "healthbench", None, None)
    with OpenAITestServer(reply=Grader(), batch_run_s=0.1) as server:
        cfg = OmegaConf.structured(JudgeConfig(name="test", model="test-grader", base_url=server.url, batch=True,
                                               batch_poll_s=0.05, price_input_per_1m=1.0))
        settings = hb_eval.grader_settings(cfg, OmegaConf.structured(HealthBenchConfig(retries=1)), protocol, "healthbench")
        graded = hb_eval.grade(hb_eval.rubric_subjects("healthbench", pairs, protocol), protocol, settings, cfg,
                               endpoint_identity(cfg, cfg.base_url), tmp_path / "requests.jsonl", tmp_path / "batches.jsonl",
                               lambda: LLMClient(cfg, server.url, "not-needed", None), "test")
        assert len(server.state.batches) == 2  # the re-asks go in a second batch
        assert server.state.batch_lines_received == criteria + bad_once + always_bad
    assert sum(g.verdict is None for g in graded.graded.values()) == always_bad
    assert all(r["price_factor"] == 0.5 for r in graded.work_records)  # billed at the Batch API's price


def test_predictions_of_another_set_are_refused(tmp_path, healthbench_data, monkeypatch):
    from alpacare.errors import DataError
    from alpacare.evaluation.healthbench import align_predictions

    monkeypatch.setenv("ALPACARE_DATA_DIR", str(healthbench_data))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt_id": "not-a-conversation", "output": "hi"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl: record 1: prompt_id 'not-a-conversation' is not a healthbench conversation"):
        align_predictions(bad, "healthbench", None, None)
    conversation = json.loads((HEALTHBENCH_EXAMPLES / "healthbench.jsonl").read_text().splitlines()[1])
    bad.write_text(json.dumps({"prompt_id": conversation["prompt_id"], "output": "hi",
                               "messages": conversation["prompt"][1:]}) + "\n")
    with pytest.raises(DataError, match="its conversation differs from healthbench's hb-test-0002"):
        align_predictions(bad, "healthbench", None, None)


def test_request_shape_per_grader(healthbench_data, monkeypatch):
    """The embedded grader is held to the verdict schema (llama.cpp's dialect); a hosted grader gets
    simple-evals' request unchanged, in the fields its endpoint takes (gpt55: max_completion_tokens,
    no temperature)."""
    from omegaconf import OmegaConf

    from alpacare.evaluation import healthbench as hb_eval
    from alpacare.llm.client import LLMClient
    from alpacare.prompts.healthbench import VERDICT_SCHEMA, load_protocol
    from tests.test_train_support import compose

    monkeypatch.setenv("ALPACARE_DATA_DIR", str(healthbench_data))
    protocol = load_protocol()
    bodies = {}
    for preset in ("local", "gpt41", "gpt55"):
        cfg = compose([f"judge={preset}"])
        settings = hb_eval.grader_settings(cfg.judge, cfg.healthbench, protocol, "healthbench")
        judge = OmegaConf.to_container(cfg.judge)
        client = LLMClient(OmegaConf.create(judge), "http://127.0.0.1:9/v1", "not-needed", None)
        bodies[preset] = client.request_body(hb_eval._request("k", 0, protocol.messages("prompt"), settings))
    assert bodies["local"]["response_format"] == {"type": "json_object", "schema": VERDICT_SCHEMA}
    assert bodies["gpt41"]["model"] == protocol.model and "response_format" not in bodies["gpt41"]
    assert (bodies["gpt41"]["temperature"], bodies["gpt41"]["max_tokens"]) == (0.5, 2048)
    assert bodies["gpt55"]["max_completion_tokens"] == 2048 and "temperature" not in bodies["gpt55"]
    assert bodies["gpt41"]["messages"] == [{"role": "system", "content": "You are a helpful assistant."},
                                           {"role": "user", "content": "prompt"}]
