"""Shared test fixtures: the real CLI in a subprocess, offline, with per-test caches."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.openai_server import OpenAITestServer

REPO = Path(__file__).resolve().parents[1]
SLURM_CLUSTER_SCRIPT = REPO / "scripts" / "slurm_cluster.sh"
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


@dataclass
class SlurmCluster:
    """A real single-node SLURM cluster (scripts/slurm_cluster.sh) and the variables its clients need."""

    dir: Path
    env: dict[str, str]
    up_seconds: float

    def run(self, *command: str, check: bool = True) -> str:
        """A SLURM client command (sacct, scontrol...) against this cluster; its stdout."""
        proc = subprocess.run(command, env={**os.environ, **self.env}, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 or not check, f"{command}: {proc.stderr}"
        return proc.stdout

    def jobs(self) -> list[dict[str, str]]:
        """sacct's view of every job (no steps): JobID, State, ExitCode, Start, End."""
        fields = ["JobID", "State", "ExitCode", "Start", "End"]
        out = self.run("sacct", "-X", "-n", "--parsable2", "-o", ",".join(fields))
        return [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line]


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """Brought up once per session from Debian's packages (`scripts/slurm_cluster.sh install`; .ci/run
    installs them) and stopped through the PIDs the script recorded. Skips where they are absent."""
    check = subprocess.run([str(SLURM_CLUSTER_SCRIPT), "check"], capture_output=True, text=True)
    if check.returncode:
        pytest.skip(check.stderr.strip())
    # Short: munge's socket path must fit in a unix socket name (108 bytes).
    state = tmp_path_factory.mktemp("slurm")
    started = time.perf_counter()
    up = subprocess.run([str(SLURM_CLUSTER_SCRIPT), "up", str(state)], capture_output=True, text=True, timeout=180)
    up_seconds = time.perf_counter() - started
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield SlurmCluster(state, {"SLURM_CONF": str(state / "etc" / "slurm.conf")}, up_seconds)
    finally:
        subprocess.run([str(SLURM_CLUSTER_SCRIPT), "down", str(state)], capture_output=True, timeout=180)
