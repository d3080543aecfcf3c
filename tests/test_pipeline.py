"""The data half of the pipeline through the real CLI, against a real OpenAI-compatible server on
127.0.0.1: outputs, retries, resume after kill -9, the spend cap, secrets, and bad input."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, cli_env, run_cli, teacher_args
from tests.openai_server import OpenAITestServer


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode != 0, proc.stdout + proc.stderr
    # Progress bars share stderr (a terminal redraws them in place); the error is everything else.
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "%|" not in ln]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_data_stages_end_to_end(tmp_path, openai_server):
    run_dir = tmp_path / "run"
    proc = run_cli([*teacher_args(openai_server), "stages=[instructions,dedup,responses]", "instructions.count=30",
                    "teacher.max_concurrency=4", f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    tasks = read_jsonl(run_dir / "instructions" / "instructions.jsonl")
    assert len(tasks) == 30 and len({t["id"] for t in tasks}) == 30
    assert all(set(t) >= {"type", "topic", "view", "difficulty", "instruction", "input"} for t in tasks)
    stats = json.loads((run_dir / "instructions" / "stats.json").read_text())
    assert stats["requests"] == 3 and stats["rejects"] == 0 and stats["completion_tokens"] > 0
    assert (run_dir / "instructions" / "distribution.png").stat().st_size > 0
    kept = read_jsonl(run_dir / "dedup" / "kept.jsonl")
    train = json.loads((run_dir / "responses" / "train.json").read_text())
    assert len(train) == len(kept) > 0
    assert all(ex["output"].startswith("Answer:") and {"instruction", "input", "output"} <= set(ex) for ex in train)
    assert all(ex["input"] != "<noinput>" for ex in train)  # Alpaca convention: "" when there is none
    # W&B: one real offline run per stage.
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 3
    assert f"outputs in {run_dir}" in proc.stdout


def test_retries_on_429_and_5xx(tmp_path):
    with OpenAITestServer(fail_first=3, fail_status=429) as server:
        proc = run_cli([*teacher_args(server), "stages=[instructions]", "instructions.count=12", "logger=none",
                        f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert server.state.served == 1 and len(server.state.requests) == 4
    with OpenAITestServer(fail_first=2, fail_status=503) as server:
        proc = run_cli([*teacher_args(server), "stages=[instructions]", "instructions.count=12", "logger=none",
                        f"hydra.run.dir={tmp_path / 'run2'}"], tmp_path)
        assert proc.returncode == 0, proc.stderr


def test_unparseable_output_goes_to_rejects(tmp_path):
    with OpenAITestServer(bad_json_every=2) as server:
        run_dir = tmp_path / "run"
        proc = run_cli([*teacher_args(server), "stages=[instructions]", "instructions.count=24",
                        "instructions.tasks_per_request=6", "logger=none", f"hydra.run.dir={run_dir}"], tmp_path)
        assert proc.returncode == 0, proc.stderr
        rejects = read_jsonl(run_dir / "instructions" / "rejects.jsonl")
        assert rejects and all(r["raw"] and "invalid JSON" in r["reason"] for r in rejects)
        stats = json.loads((run_dir / "instructions" / "stats.json").read_text())
        assert stats["rejects"] == len(rejects) and stats["tasks_kept"] == 24


def _wait_for_lines(path: Path, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} never reached {n} lines")


@pytest.mark.parametrize("stage_file", ["instructions/requests.jsonl", "responses/answers.jsonl"])
def test_resume_after_kill_loses_and_repeats_nothing(tmp_path, stage_file):
    run_dir = tmp_path / "run"
    with OpenAITestServer(delay_s=0.15) as server:
        args = [*teacher_args(server), "stages=[instructions,dedup,responses]", "instructions.count=45",
                "instructions.tasks_per_request=3", "teacher.max_concurrency=2", "logger=none",
                f"hydra.run.dir={run_dir}"]
        proc = subprocess.Popen([sys.executable, "-m", "alpacare", *args], cwd=REPO, env=cli_env(tmp_path),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_for_lines(run_dir / stage_file, 5)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        assert not (run_dir / "responses" / "train.json").exists()
        with open(run_dir / stage_file, "ab") as f:
            f.write(b'{"request": 99, "raw": "torn wri')  # a write cut short by the kill
        sent_before_resume = len(server.state.requests)

        proc = run_cli(args, tmp_path)
        assert proc.returncode == 0, proc.stderr

    requests = read_jsonl(run_dir / "instructions" / "requests.jsonl")
    assert sorted(r["request"] for r in requests) == list(range(15))
    tasks = read_jsonl(run_dir / "instructions" / "instructions.jsonl")
    assert len(tasks) == 45 and len({t["id"] for t in tasks}) == 45
    kept = read_jsonl(run_dir / "dedup" / "kept.jsonl")
    answers = read_jsonl(run_dir / "responses" / "answers.jsonl")
    assert sorted(a["id"] for a in answers) == sorted(str(k["id"]) for k in kept)
    train = json.loads((run_dir / "responses" / "train.json").read_text())
    assert len(train) == len(kept)
    # Paid work is not repeated: everything logged or cached before the kill is reused; only the
    # requests in flight at the moment of kill -9 (at most max_concurrency=2) are sent again.
    assert 15 + len(kept) <= server.state.served <= 15 + len(kept) + 2
    assert sent_before_resume > 0


def test_spend_cap_stops_cleanly_and_resumes(tmp_path, openai_server):
    run_dir = tmp_path / "run"
    # 1 USD per 1k tokens: each request's worst case (~1.1k prompt chars/2 + 3072) is ~3.6 USD.
    args = [*teacher_args(openai_server), "stages=[instructions]", "instructions.count=36", "logger=none",
            "teacher.price_input_per_1m=1000", "teacher.price_output_per_1m=1000", f"hydra.run.dir={run_dir}"]
    proc = run_cli([*args, "teacher.max_cost_usd=5"], tmp_path)
    line = assert_one_line_error(proc, "teacher.max_cost_usd=5")
    assert proc.returncode == 3, line
    logged = read_jsonl(run_dir / "instructions" / "requests.jsonl")
    assert len(logged) == 1
    assert not (run_dir / "instructions" / "instructions.jsonl").exists()
    spent = logged[0]["prompt_tokens"] + logged[0]["completion_tokens"]  # USD x 1000 at these prices

    # The cap spans resumes: the same cap again counts what the run dir already paid.
    proc = run_cli([*args, "teacher.max_cost_usd=5"], tmp_path)
    line = assert_one_line_error(proc, f"spent ${spent / 1000:.4f}")
    assert proc.returncode == 3 and openai_server.state.served == 1, line

    proc = run_cli([*args, "teacher.max_cost_usd=100"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(read_jsonl(run_dir / "instructions" / "requests.jsonl")) == 3
    assert openai_server.state.served == 3


def test_api_key_reaches_the_server_and_nothing_else(tmp_path):
    secret = "sk-test-" + os.urandom(12).hex()
    run_dir = tmp_path / "run"
    with OpenAITestServer(required_key=secret) as server:
        proc = run_cli([*teacher_args(server), "teacher.api_key_env=ALPACARE_TEST_KEY", "stages=[instructions]",
                        "instructions.count=12", f"hydra.run.dir={run_dir}"], tmp_path, ALPACARE_TEST_KEY=secret)
        assert proc.returncode == 0, proc.stderr
        assert f"Bearer {secret}" in server.state.auth_headers
    assert secret not in proc.stdout + proc.stderr
    leaked = [p for p in run_dir.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert leaked == []
    assert list((run_dir / "wandb").glob("offline-run-*"))


def test_wrong_api_key_is_one_line(tmp_path):
    with OpenAITestServer(required_key="sk-right") as server:
        proc = run_cli([*teacher_args(server), "teacher.api_key_env=ALPACARE_TEST_KEY", "stages=[instructions]",
                        "logger=none", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, ALPACARE_TEST_KEY="sk-wrong")
    assert_one_line_error(proc, "API key")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BAD_INPUT = {
    "missing seed file": (["instructions.seeds=/nonexistent/seeds.json"], ["/nonexistent/seeds.json"]),
    "threshold out of range": (["dedup.threshold=1.5"], ["dedup.threshold"]),
    "contamination threshold out of range": (["dedup.contamination_threshold=1.0"], ["dedup.contamination_threshold"]),
    "unknown contamination source": (["dedup.decontaminate=[all,medqa]"], ["dedup.decontaminate", "'medqa'"]),
    "negative count": (["instructions.count=-5"], ["instructions.count"]),
    "wrong type": (["instructions.count=many"], ["instructions.count"]),
    "unknown option": (["instructions.colour=red"], ["colour"]),
    "unknown group option": (["teacher=gpt5"], ["gpt5"]),
    "unknown stage": (["stages=[instructions,distill]"], ["distill"]),
    "dedup input missing": (["stages=[dedup]", "dedup.input=/nonexistent.jsonl"], ["dedup.input"]),
    "stage input not produced": (["stages=[responses]"], ["responses.input"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_config_fails_with_one_line(tmp_path, case):
    overrides, needles = BAD_INPUT[case]
    run_dir = tmp_path / "run"
    proc = run_cli(["logger=none", f"hydra.run.dir={run_dir}", "teacher=openai_compatible",
                    f"teacher.base_url=http://127.0.0.1:{_closed_port()}/v1", "teacher.model=x", *overrides], tmp_path)
    assert_one_line_error(proc, *needles)
    assert not list(run_dir.rglob("*.jsonl")) and not list(run_dir.rglob("stats.json"))


def test_malformed_seed_file_fails_with_one_line(tmp_path, openai_server):
    bad = tmp_path / "seeds.json"
    bad.write_text('[{"type": "Open Q&A", "instruction": "x"', "utf-8")
    proc = run_cli([*teacher_args(openai_server), "stages=[instructions]", f"instructions.seeds={bad}",
                    "logger=none", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert_one_line_error(proc, str(bad))
    assert openai_server.state.requests == []


def test_unreachable_endpoint_fails_fast_with_one_line(tmp_path):
    started = time.monotonic()
    proc = run_cli(["teacher=openai_compatible", f"teacher.base_url=http://127.0.0.1:{_closed_port()}/v1",
                    "teacher.model=x", "stages=[instructions]", "logger=none",
                    f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert_one_line_error(proc, "cannot reach", "127.0.0.1")
    assert time.monotonic() - started < 60
    assert not (tmp_path / "run" / "instructions" / "instructions.jsonl").exists()


def test_missing_api_key_names_the_variable(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    proc = subprocess.run([sys.executable, "-m", "alpacare", "teacher=gpt4", "stages=[instructions]", "logger=none",
                           f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, cwd=REPO,
                          env={**cli_env(tmp_path), **env, "OPENAI_API_KEY": ""}, timeout=120)
    assert_one_line_error(proc, "OPENAI_API_KEY")


def test_cache_key_tells_endpoints_apart_but_not_local_ports():
    """Two servers may serve one model name; the embedded server's port changes every run."""
    from types import SimpleNamespace

    from alpacare.llm.client import Request, endpoint_identity

    request = Request(key="0", messages=({"role": "user", "content": "hi"},), temperature=1.0, top_p=1.0,
                      max_tokens=8)
    remote = SimpleNamespace(launch_local=False, gguf=None)
    local = SimpleNamespace(launch_local=True, gguf=None)

    def key(cfg, url):
        return request.cache_key("t", "m", endpoint_identity(cfg, url))

    assert key(remote, "http://a:8000/v1") != key(remote, "http://b:8000/v1")
    assert key(local, "http://127.0.0.1:4001/v1") == key(local, "http://127.0.0.1:4002/v1")
    assert key(local, "x") != key(SimpleNamespace(launch_local=True, gguf="/other.gguf"), "x")
