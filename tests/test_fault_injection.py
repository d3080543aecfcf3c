"""A misbehaving endpoint: 30% of attempts fault (429 with Retry-After, 500, 503, a reply after the
client's timeout, a body cut short, a 200 without choices, an answer cut at max_tokens). The data
half must still deliver exactly what was asked, with nothing duplicated, no cut answer in the
training set, and a ledger that agrees with the server's own books."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import run_cli, teacher_args
from tests.openai_server import FAULTS, OpenAITestServer


def _jsonl(path):
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def _ledger(stdout: str) -> dict[str, int]:
    line = next(ln for ln in stdout.splitlines() if "teacher ledger" in ln)
    fields = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)\b(?![.])", line)}
    upto = re.search(r"abandoned=(\d+) \(up to (\d+) prompt \+ (\d+) completion tokens\)", line)
    fields.update(abandoned=int(upto.group(1)), abandoned_prompt=int(upto.group(2)), abandoned_completion=int(upto.group(3)))
    return fields


def test_data_half_survives_a_faulty_endpoint_and_the_ledger_matches_the_server(tmp_path):
    run_dir = tmp_path / "run"
    with OpenAITestServer(fault_rate=0.3, fault_seed=7, late_reply_s=1.5, count_prompt_tokens=True) as server:
        proc = run_cli([*teacher_args(server), "stages=[instructions,dedup,responses]", "instructions.count=40",
                        "instructions.tasks_per_request=4", "dedup.threshold=0.9", "teacher.max_concurrency=4", "teacher.max_retries=10",
                        "teacher.timeout_s=1.0", "logger=none", f"hydra.run.dir={run_dir}"], tmp_path, timeout=240)
        state = server.state
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    # Every kind of fault happened (the first seven faults take each kind in turn).
    assert set(state.faults) == set(FAULTS), state.faults

    # Exactly the requested count, no duplicates by request or by content.
    requests = _jsonl(run_dir / "instructions" / "requests.jsonl")
    assert len({r["request"] for r in requests}) == len(requests)
    tasks = _jsonl(run_dir / "instructions" / "instructions.jsonl")
    assert len(tasks) == 40 and len({t["instruction"] for t in tasks}) == 40
    answers = _jsonl(run_dir / "responses" / "answers.jsonl")
    kept = _jsonl(run_dir / "dedup" / "kept.jsonl")
    assert sorted(a["id"] for a in answers) == sorted(k["id"] for k in kept)
    train = json.loads((run_dir / "responses" / "train.json").read_text())
    assert len({ex["instruction"] for ex in train}) == len(train)

    # Answers cut at max_tokens are out of the training set, kept apart with the reason, counted.
    cut_ids = {a["id"] for a in answers if a["finish_reason"] == "length"}
    truncated = _jsonl(run_dir / "responses" / "truncated.jsonl")
    assert {t["id"] for t in truncated} == cut_ids and all("max_tokens" in t["reason"] for t in truncated)
    assert cut_ids.isdisjoint(ex["id"] for ex in train)
    stats = json.loads((run_dir / "responses" / "stats.json").read_text())
    assert stats["truncated_excluded"] == len(cut_ids)
    assert len(train) + len(truncated) + stats["failed"] == len(kept)

    # The ledger: what was received equals what the server delivered; what was abandoned equals
    # what the server finished and never delivered, and its bound covers those tokens.
    ledger = _ledger(proc.stdout)
    assert ledger["prompt_tokens"] == state.delivered["prompt_tokens"]
    assert ledger["completion_tokens"] == state.delivered["completion_tokens"]
    assert ledger["abandoned"] == state.undelivered["replies"] > 0
    assert ledger["abandoned_completion"] >= state.undelivered["completion_tokens"]
    assert ledger["abandoned_prompt"] >= state.undelivered["prompt_tokens"]
    logged = sum(r["abandoned_attempts"] for r in requests + answers)
    assert logged == state.undelivered["replies"]  # persisted in the work logs, so the cap spans resumes


# -- the client alone, one fault at a time (seconds) -------------------------------------------

def _client(server, **overrides):
    from omegaconf import OmegaConf

    from alpacare.config import EndpointConfig
    from alpacare.llm.client import LLMClient

    cfg = OmegaConf.structured(EndpointConfig(name="test", model="test-teacher", base_url=server.url,
                                              max_retries=3, timeout_s=0.5, **overrides))
    return LLMClient(cfg, server.url, "not-needed", cache=None)


def _ask(client, n=1):
    from alpacare.llm.client import Request

    results = []
    requests = [Request(key=str(i), messages=({"role": "user", "content": f"Question {i}?"},), temperature=1.0,
                        top_p=1.0, max_tokens=50) for i in range(n)]
    client.run(requests, lambda r, c, e: results.append((r.key, c, e)), desc="test")
    return results


def test_a_reply_without_choices_is_a_failed_attempt_retried_never_a_crash():
    with OpenAITestServer(fail_first=2, fail_kind="empty") as server:
        client = _client(server)
        [(_, completion, error)] = _ask(client)
    assert completion is not None and completion.text.startswith("Answer:") and error == ""
    assert client.ledger.failed_attempts == {"empty choices": 2} and client.ledger.failed_requests == 0
    with OpenAITestServer(fail_first=99, fail_kind="empty") as server:
        client = _client(server)
        [(_, completion, error)] = _ask(client)  # every attempt empty: recorded as failed, no exception
    assert completion is None and "no choices" in error
    assert client.ledger.failed_requests == 1 and client.ledger.failed_attempts == {"empty choices": 4}


def test_abandoned_attempts_are_counted_as_possibly_billed_and_the_cap_uses_them():
    from alpacare.errors import SpendCapReached

    with OpenAITestServer(fail_first=2, fail_kind="cut", late_reply_s=1.0) as server:
        client = _client(server, price_input_per_1m=1000.0, price_output_per_1m=1000.0)
        [(_, completion, _)] = _ask(client)
    ledger = client.ledger
    assert completion.abandoned_attempts == 2 and ledger.abandoned_requests == 2
    assert ledger.failed_attempts == {"cut off": 2}
    assert ledger.abandoned_completion_tokens == 2 * 50
    assert ledger.cost_usd_possibly_billed > ledger.cost_usd > 0
    with OpenAITestServer(fail_first=1, fail_kind="late", late_reply_s=1.0) as server:
        client = _client(server)
        _ask(client)
    assert client.ledger.failed_attempts == {"timeout": 1} and client.ledger.abandoned_requests == 1
    # The cap counts the cautious figure: room for one more request at the received cost, not at
    # the possibly billed one.
    with OpenAITestServer() as server:
        capped = _client(server, price_input_per_1m=1000.0, price_output_per_1m=1000.0)
        capped.ledger = ledger
        worst = ledger.cost_of(40, 50)
        capped.max_cost_usd = ledger.cost_usd + worst + 0.001
        with pytest.raises(SpendCapReached):
            _ask(capped)
