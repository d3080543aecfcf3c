"""The predict stage on HealthBench conversations: the seeded subset simple-evals draws, every
earlier turn kept (the tokenizer's chat template, or our Alpaca rendering), answers in the drawn
order carrying their conversation, resume by conversation; then the judge stage grades them from
the run dir."""

from __future__ import annotations

import json
import random

import pytest

from alpacare.data.eval_sets import load_test_items
from alpacare.prompts.alpaca import format_prompt
from alpacare.prompts.chat import format_conversation
from tests.conftest import HEALTHBENCH_EXAMPLES, run_cli
from tests.openai_server import OpenAITestServer
from tests.test_train_support import smollm_tokenizer_dir, tiny_model_dir  # noqa: F401  (fixtures)

CONVERSATIONS = [json.loads(line) for line in (HEALTHBENCH_EXAMPLES / "healthbench.jsonl").read_text().splitlines()]


def test_subset_is_the_one_simple_evals_draws(healthbench_data, monkeypatch):
    monkeypatch.setenv("ALPACARE_DATA_DIR", str(healthbench_data))
    for limit, seed in ((4, 0), (2, 5), (None, 0), (99, 0)):
        items = load_test_items("healthbench", limit, seed)
        drawn = random.Random(seed).sample(CONVERSATIONS, limit) if limit and limit < len(CONVERSATIONS) else CONVERSATIONS
        assert [it["prompt_id"] for it in items] == [c["prompt_id"] for c in drawn]  # simple-evals' rng.sample
        assert [it["messages"] for it in items] == [c["prompt"] for c in drawn]
        assert all(CONVERSATIONS[it["index"]]["prompt_id"] == it["prompt_id"] for it in items)


def test_a_conversation_becomes_one_prompt_with_every_turn(smollm_tokenizer_dir):
    from transformers import AutoTokenizer

    multi = CONVERSATIONS[1]["prompt"]  # system, user, assistant, user
    assert [m["role"] for m in multi] == ["system", "user", "assistant", "user"]
    earlier = "\n\n".join(f"{m['role']}: {m['content']}" for m in multi[:-1])
    assert format_conversation("alpaca", None, multi) == format_prompt(multi[-1]["content"], earlier)
    single = CONVERSATIONS[0]["prompt"]
    assert format_conversation("alpaca", None, single) == format_prompt(single[0]["content"])
    tokenizer = AutoTokenizer.from_pretrained(smollm_tokenizer_dir)
    chat = format_conversation("chat", tokenizer, multi)
    assert chat == tokenizer.apply_chat_template(multi, tokenize=False, add_generation_prompt=True)
    positions = [chat.index(m["content"]) for m in multi]
    assert positions == sorted(positions)  # every turn, in order, the system turn included


@pytest.mark.timeout(300)
def test_predict_then_judge_from_the_run_dir_and_resume(tmp_path, tiny_model_dir, healthbench_data):
    run_dir = tmp_path / "run"
    base = ["stages=[predict,judge]", f"predict.model={tiny_model_dir}", "predict.test_sets=[healthbench]",
            "predict.template=chat", "predict.max_new_tokens=4", "predict.batch_size=2", "logger=none",
            f"hydra.run.dir={run_dir}"]
    with OpenAITestServer(reply=lambda body: '{"explanation": "ok", "criteria_met": false}') as server:
        judge = ["judge=openai_compatible", f"judge.base_url={server.url}", "judge.model=test-grader"]
        proc = run_cli([*base, "predict.limit=4", *judge], tmp_path, ALPACARE_DATA_DIR=str(healthbench_data))
        assert proc.returncode == 0, proc.stderr[-3000:]
        records = [json.loads(line) for line in (run_dir / "predict" / "healthbench.jsonl").read_text().splitlines()]
        drawn = random.Random(0).sample(CONVERSATIONS, 4)
        assert [r["prompt_id"] for r in records] == [c["prompt_id"] for c in drawn]
        assert [r["messages"] for r in records] == [c["prompt"] for c in drawn]
        assert all(isinstance(r["output"], str) for r in records)
        assert len(server.state.requests) == sum(len(c["rubrics"]) for c in drawn)
        assert all(r["messages"][1]["content"].count("\n\nassistant: ") >= 1 for r in server.state.requests)
        row, = json.loads((run_dir / "judge" / "stats.json").read_text())["healthbench"]
        assert row["conversations"] == 4 and row["score"] == 0.0  # no criterion met
        # One more conversation: the four answered are kept, only the new one is generated.
        proc = run_cli(["stages=[predict]", *base[1:], "predict.limit=5"], tmp_path,
                       ALPACARE_DATA_DIR=str(healthbench_data))
        assert proc.returncode == 0, proc.stderr[-3000:]
        stats = json.loads((run_dir / "predict" / "stats.json").read_text())["test_sets"]["healthbench"]
        assert stats["items"] == 5 and stats["generated"] == 1 and stats["resumed"] == 4
