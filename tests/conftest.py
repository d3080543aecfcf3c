"""Shared test fixtures: the real CLI in a subprocess, offline, with per-test caches."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from tests.openai_server import OpenAITestServer

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "alpacare-data"
# simple-evals' HealthBench files at the pinned commit (read-only reference copy), and our own
# few conversations in HealthBench's format (never OpenAI's data).
SHARED_SIMPLE_EVALS = REPO.parent / "shared" / "simple-evals"
HEALTHBENCH_EXAMPLES = REPO / "tests" / "data" / "healthbench"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
if SHARED_DATA.is_dir():
    os.environ.setdefault("ALPACARE_DATA_DIR", str(SHARED_DATA))


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1",
           "ALPACARE_CACHE_DIR": str(tmp_path / "cache"), **extra}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def run_cli(args: list[str], tmp_path: Path, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alpacare", *args], capture_output=True, text=True, cwd=REPO,
                          env=cli_env(tmp_path, **env), timeout=timeout)


def teacher_args(server: OpenAITestServer) -> list[str]:
    return ["teacher=openai_compatible", f"teacher.base_url={server.url}", "teacher.model=test-teacher"]


@pytest.fixture
def openai_server():
    with OpenAITestServer() as server:
        yield server


needs_simple_evals = pytest.mark.skipif(not (SHARED_SIMPLE_EVALS / "healthbench_eval.py").is_file(),
                                        reason="needs ../shared/simple-evals")


@pytest.fixture
def healthbench_data(tmp_path) -> Path:
    """A data dir as ``alpacare-fetch healthbench`` leaves it: the shared simple-evals files under
    ``simple-evals/`` (a link to the reference copy) and our example sets under ``healthbench/``."""
    if not (SHARED_SIMPLE_EVALS / "healthbench_eval.py").is_file():
        pytest.skip("needs ../shared/simple-evals")
    data = tmp_path / "hb_data"
    (data / "healthbench").mkdir(parents=True)
    (data / "simple-evals").symlink_to(SHARED_SIMPLE_EVALS)
    for f in HEALTHBENCH_EXAMPLES.glob("*.jsonl"):
        (data / "healthbench" / f.name).write_bytes(f.read_bytes())
    return data


class _RecordingFiles(SimpleHTTPRequestHandler):
    requests: list[str]

    def do_GET(self):
        self.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):  # keep pytest output clean
        pass


@contextlib.contextmanager
def static_http_server(directory: Path) -> Iterator[tuple[str, list[str]]]:
    """Serve ``directory`` on an ephemeral loopback port: (base URL with a trailing slash, the
    paths requested so far)."""
    requests: list[str] = []
    handler = type("Handler", (_RecordingFiles,), {"requests": requests})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(directory)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", requests
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
