"""The Batch API path (alpacare/llm/batch.py) against the loopback server's files and batches
endpoints, through the real openai client: statuses, the error file, an expired batch's partial
output, a failed validation, output out of order, splitting, the discount, kill -9 while polling
and the rerun that re-attaches, Ctrl-C."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from alpacare.llm.batch import plan_chunks
from tests.conftest import REPO, cli_env, run_cli, teacher_args
from tests.openai_server import OpenAITestServer


def _client(server, tmp_path, **overrides):
    from omegaconf import OmegaConf

    from alpacare.config import EndpointConfig
    from alpacare.llm.client import LLMClient

    cfg = OmegaConf.structured(EndpointConfig(name="test", model="test-teacher", base_url=server.url, batch=True,
                                              batch_poll_s=0.05, price_input_per_1m=2.0, price_output_per_1m=4.0,
                                              batch_discount=0.5, **overrides))
    return LLMClient(cfg, server.url, "not-needed", cache=None)


def _ask(client, tmp_path, n=10):
    from alpacare.llm.client import Request

    results = {}
    requests = [Request(key=str(i), messages=({"role": "user", "content": f"Question {i}?"},), temperature=1.0,
                        top_p=1.0, max_tokens=50) for i in range(n)]
    client.run(requests, lambda r, c, e: results.__setitem__(r.key, (c, e)), desc="test",
               batch_log=tmp_path / "batches.jsonl")
    return results


def _journal(tmp_path):
    return [json.loads(x) for x in (tmp_path / "batches.jsonl").read_text().splitlines()]


def test_error_file_lines_are_resubmitted_and_output_joins_by_custom_id(tmp_path):
    with OpenAITestServer(batch_error_every=4, batch_finalize_s=0.3) as server:
        client = _client(server, tmp_path)
        results = _ask(client, tmp_path)
        state = server.state
    assert state.batches["batch_1"]["statuses"] == ["validating", "in_progress", "finalizing", "completed"]
    # every answer is the one for its own question, although the output came back shuffled
    assert all(c is not None and c.text.startswith(f"Answer: Question {k}?") for k, (c, e) in results.items())
    assert len(results) == 10 and not state.requests  # nothing went live
    closed = [r for r in _journal(tmp_path) if r["event"] == "closed"]
    assert [r["status"] for r in closed] == ["completed", "completed"]
    assert closed[0]["error_lines"] == 2 and state.batch_lines_received == 12  # 2 error lines resubmitted
    ledger = client.ledger
    assert ledger.requests == 10 and ledger.failed_attempts == {"batch 500": 2}
    live_price = ledger.cost_of(ledger.prompt_tokens, ledger.completion_tokens)
    assert ledger.cost_usd == pytest.approx(0.5 * live_price) and all(c.price_factor == 0.5 for c, _ in results.values())
    assert ledger.prompt_tokens == state.delivered["prompt_tokens"]


def test_an_expired_batch_keeps_its_partial_output_and_the_rest_is_resubmitted(tmp_path):
    with OpenAITestServer(batch_expire=(1,)) as server:
        client = _client(server, tmp_path)
        results = _ask(client, tmp_path)
        state = server.state
    assert all(c is not None for c, _ in results.values())
    closed = [r for r in _journal(tmp_path) if r["event"] == "closed"]
    assert closed[0]["status"] == "expired" and closed[0]["output_lines"] == 5 and closed[0]["missing"] == 5
    assert state.batch_lines_received == 15  # the 5 done lines were not asked again


def test_batch_retry_live_sends_the_leftovers_live(tmp_path):
    with OpenAITestServer(batch_expire=(1,)) as server:
        client = _client(server, tmp_path, batch_retry="live")
        results = _ask(client, tmp_path)
        state = server.state
    assert all(c is not None for c, _ in results.values())
    assert len(state.batches) == 1 and len(state.requests) == 5
    assert sorted(c.price_factor for c, _ in results.values()) == [0.5] * 5 + [1.0] * 5


def test_a_failed_validation_is_one_line_with_the_servers_errors(tmp_path):
    from alpacare.errors import EndpointError

    with OpenAITestServer(batch_enqueued_token_limit=10) as server:
        client = _client(server, tmp_path)
        with pytest.raises(EndpointError, match=r"failed validation: token_limit_exceeded: Enqueued token limit") as e:
            _ask(client, tmp_path)
    assert "\n" not in str(e.value) and "batch_max_enqueued_tokens" in str(e.value)
    assert client._reserved_usd == pytest.approx(0)


def test_batches_are_split_by_lines_and_by_the_enqueued_token_limit(tmp_path):
    with OpenAITestServer(batch_enqueued_token_limit=60, count_prompt_tokens=True) as server:  # ~6 prompt tokens each
        client = _client(server, tmp_path, batch_max_lines=4, batch_max_enqueued_tokens=40)
        results = _ask(client, tmp_path)
        sizes = [len(b["requests"]) for b in server.state.batches.values()]
    assert all(c is not None for c, _ in results.values())
    assert sum(sizes) == 10 and max(sizes) <= 4 and len(sizes) >= 3


def test_a_kill_between_creating_the_batch_and_recording_it_finds_the_batch_again(tmp_path, monkeypatch):
    import openai.resources.batches as batches

    create = batches.Batches.create

    def create_then_die(self, **kwargs):
        create(self, **kwargs)
        raise KeyboardInterrupt  # the process dies before the batch id reaches the batch log

    with OpenAITestServer() as server:
        monkeypatch.setattr(batches.Batches, "create", create_then_die)
        with pytest.raises(KeyboardInterrupt):
            _ask(_client(server, tmp_path), tmp_path)
        monkeypatch.setattr(batches.Batches, "create", create)
        results = _ask(_client(server, tmp_path), tmp_path)
        assert len(server.state.batches) == 1 and server.state.batch_lines_received == 10
    assert all(c is not None for c, _ in results.values())
    assert [r["event"] for r in _journal(tmp_path)] == ["file", "batch", "closed"]


def test_plan_chunks_respects_lines_bytes_and_tokens():
    keys = [str(i) for i in range(10)]
    size = {k: 100 for k in keys}
    tokens = {k: 10 for k in keys}
    assert [len(c) for c in plan_chunks(keys, size, tokens, 4, 10**9, None)] == [4, 4, 2]
    assert [len(c) for c in plan_chunks(keys, size, tokens, 50_000, 350, None)] == [3, 3, 3, 1]
    assert [len(c) for c in plan_chunks(keys, size, tokens, 50_000, 10**9, 25)] == [2, 2, 2, 2, 2]
    assert [len(c) for c in plan_chunks(keys[:2], size, {k: 99 for k in keys}, 9, 10**9, 25)] == [1, 1]


def test_the_spend_cap_counts_a_submitted_batch_as_billed(tmp_path):
    from alpacare.errors import SpendCapReached

    with OpenAITestServer(count_prompt_tokens=True) as server:
        # worst case per line: (16 + 5 prompt, 50 completion tokens) at $2/$4 per 1M, halved: ~$0.00012
        client = _client(server, tmp_path, max_cost_usd=0.0005)
        with pytest.raises(SpendCapReached):
            _ask(client, tmp_path)
        sizes = [len(b["requests"]) for b in server.state.batches.values()]
    assert sizes and sum(sizes) < 10 and client.ledger.cost_usd_possibly_billed <= 0.0005


def _write_instructions(path, n):
    path.write_text("".join(json.dumps({"id": f"t{i}", "instruction": f"Explain finding number {i} in a patient.",
                                        "input": "<noinput>"}) + "\n" for i in range(n)))


def _batch_args(server, run_dir, kept):
    return [*teacher_args(server), "stages=[responses]", f"responses.input={kept}", "teacher.batch=true",
            "teacher.batch_poll_s=0.2", "teacher.batch_discount=0.5", "teacher.price_input_per_1m=1",
            "teacher.price_output_per_1m=2", "logger=none", f"hydra.run.dir={run_dir}"]


def _start_cli(args, tmp_path):
    return subprocess.Popen([sys.executable, "-m", "alpacare", *args], cwd=REPO, env=cli_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_batch(run_dir, proc, timeout=60):
    log = run_dir / "responses" / "batches.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and any(json.loads(x)["event"] == "batch" for x in log.read_text().splitlines() if x.strip()):
            time.sleep(0.5)  # polling now
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    raise AssertionError("no batch submitted")


def test_kill_9_while_polling_then_the_rerun_reattaches_and_never_resubmits(tmp_path):
    kept = tmp_path / "kept.jsonl"
    _write_instructions(kept, 12)
    run_dir = tmp_path / "run"
    with OpenAITestServer(batch_run_s=6.0, count_prompt_tokens=True) as server:
        proc = _start_cli(_batch_args(server, run_dir, kept), tmp_path)
        _wait_for_batch(run_dir, proc)
        proc.kill()
        proc.wait()
        assert len(server.state.batches) == 1 and not (run_dir / "responses" / "train.json").exists()
        rerun = run_cli(_batch_args(server, run_dir, kept), tmp_path, timeout=120)
        state = server.state
    assert rerun.returncode == 0, rerun.stderr
    assert len(state.batches) == 1 and state.batch_lines_received == 12 and not state.requests
    train = json.loads((run_dir / "responses" / "train.json").read_text())
    assert len(train) == 12 and all(ex["output"].startswith("Answer: Explain finding number") for ex in train)
    answers = [json.loads(x) for x in (run_dir / "responses" / "answers.jsonl").read_text().splitlines()]
    assert all(a["price_factor"] == 0.5 and not a["cached"] for a in answers)
    stats = json.loads((run_dir / "responses" / "stats.json").read_text())
    tokens = state.delivered
    assert stats["cost_usd"] == pytest.approx(0.5 * (tokens["prompt_tokens"] * 1 + tokens["completion_tokens"] * 2) / 1e6)


def test_ctrl_c_leaves_the_batch_running_and_says_how_to_resume_or_cancel(tmp_path):
    kept = tmp_path / "kept.jsonl"
    _write_instructions(kept, 4)
    run_dir = tmp_path / "run"
    with OpenAITestServer(batch_run_s=30.0) as server:
        proc = _start_cli(_batch_args(server, run_dir, kept), tmp_path)
        _wait_for_batch(run_dir, proc)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 130
        assert "Traceback" not in stderr
        assert "batch_1 keep running" in stderr and "python -m alpacare.llm.batch cancel batch_1" in stderr
        cancel = subprocess.run([sys.executable, "-m", "alpacare.llm.batch", "cancel", "batch_1", "--base-url", server.url],
                                cwd=REPO, env=cli_env(tmp_path), capture_output=True, text=True, timeout=60)
        assert cancel.returncode == 0 and "batch_1: cancelled" in cancel.stdout
        # the rerun collects what the cancelled batch finished (nothing here) and resubmits the rest
        rerun = run_cli(_batch_args(server, run_dir, kept), tmp_path, timeout=120)
    assert rerun.returncode == 0, rerun.stderr


def test_batch_mode_runs_the_data_half_a_round_per_batch(tmp_path):
    run_dir = tmp_path / "run"
    with OpenAITestServer(batch_run_s=0.1) as server:
        proc = run_cli([*teacher_args(server), "stages=[instructions,dedup,responses]", "instructions.count=24",
                        "instructions.tasks_per_request=4", "dedup.threshold=0.9", "teacher.batch=true",
                        "teacher.batch_poll_s=0.05", "logger=none", f"hydra.run.dir={run_dir}"], tmp_path, timeout=240)
        state = server.state
    assert proc.returncode == 0, proc.stderr
    assert not state.requests  # no live request at all
    rounds = [json.loads(x) for x in (run_dir / "instructions" / "batches.jsonl").read_text().splitlines()]
    assert [r["lines"] for r in rounds if r["event"] == "file"] == [6]  # 24 tasks / 4 per request: one round
    train = json.loads((run_dir / "responses" / "train.json").read_text())
    kept = (run_dir / "dedup" / "kept.jsonl").read_text().splitlines()
    assert len(train) == len(kept) > 0


def _billed_usd(state, price_in, price_out, discount):
    """What the loopback server's own output lines bill: their usage x prices x the discount."""
    total = 0.0
    for f in state.files.values():
        if f["filename"] != "output.jsonl":
            continue
        for raw in f["data"].decode().splitlines():
            usage = json.loads(raw)["response"]["body"]["usage"]
            total += (usage["prompt_tokens"] * price_in + usage["completion_tokens"] * price_out) / 1e6 * discount
    return total


def test_batch_cost_is_the_servers_billed_lines_at_the_discount_and_a_rerun_counts_it_once(tmp_path):
    # No batch_discount given (as with teacher=openai_compatible): the Batch API's own half price applies.
    run_dir = tmp_path / "run"
    args = ["stages=[instructions,dedup,responses]", "instructions.count=24", "instructions.tasks_per_request=4",
            "dedup.threshold=0.9", "teacher.batch=true", "teacher.batch_poll_s=0.05",
            "teacher.price_input_per_1m=1", "teacher.price_output_per_1m=10", "logger=none", f"hydra.run.dir={run_dir}"]
    with OpenAITestServer(batch_run_s=0.1, count_prompt_tokens=True) as server:
        proc = run_cli([*teacher_args(server), *args], tmp_path, timeout=240)
        assert proc.returncode == 0, proc.stderr
        billed = _billed_usd(server.state, 1.0, 10.0, 0.5)
        first = json.loads((run_dir / "ledgers.json").read_text())["teacher"]
        assert first["cost_usd"] == pytest.approx(billed, abs=2e-6), (first, billed)
        rerun = run_cli([*teacher_args(server), *args], tmp_path, timeout=240)
        assert rerun.returncode == 0, rerun.stderr
        assert _billed_usd(server.state, 1.0, 10.0, 0.5) == pytest.approx(billed)  # nothing asked again
    assert billed > 0
    stats = {s: json.loads((run_dir / s / "stats.json").read_text()) for s in ("instructions", "responses")}
    assert stats["instructions"]["cost_usd"] + stats["responses"]["cost_usd"] == pytest.approx(billed, abs=2e-6)
    # ledgers.json is the last command's: the rerun paid nothing, and does not count the first run's spend again
    ledger = json.loads((run_dir / "ledgers.json").read_text())["teacher"]
    assert ledger["cost_usd"] == 0 and ledger["requests"] == 0
