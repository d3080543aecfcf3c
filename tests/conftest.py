"""Shared test fixtures: the real CLI in a subprocess, offline, with per-test caches."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.openai_server import OpenAITestServer

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "alpacare-data"

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
