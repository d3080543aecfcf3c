"""Shared test fixtures: the real CLI in a subprocess, offline, with per-test caches."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from tests.openai_server import OpenAITestServer

REPO = Path(__file__).resolve().parents[1]
SLURM_CLUSTER_SCRIPT = REPO / "scripts" / "slurm_cluster.sh"
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


@pytest.fixture(scope="session")
def simple_evals():
    """The shared simple-evals modules, imported as a package (``simple_evals.healthbench_eval``,
    ``simple_evals.healthbench_meta_eval``) for tests that check our numbers against theirs. Their
    imports that the functions under test do not use (the report helpers in ``common``, the data
    reader ``blobfile``) get small stand-ins; the result types are plain dataclasses."""
    import dataclasses
    import importlib
    import types

    if not (SHARED_SIMPLE_EVALS / "healthbench_eval.py").is_file():
        pytest.skip("needs ../shared/simple-evals")

    @dataclasses.dataclass
    class EvalResult:
        score: object = None
        metrics: object = None
        htmls: object = None
        convos: object = None
        metadata: object = None

    @dataclasses.dataclass
    class SingleEvalResult:
        score: object = None
        metrics: object = dataclasses.field(default_factory=dict)
        html: object = None
        convo: object = None
        example_level_metadata: object = None

    class SamplerBase:
        def __call__(self, message_list):
            raise NotImplementedError

    @dataclasses.dataclass
    class SamplerResponse:
        response_text: str
        actual_queried_message_list: list
        response_metadata: dict

    class _Template:
        def render(self, **kwargs):
            return ""

    stand_ins = {
        "simple_evals.types": dict(Eval=object, EvalResult=EvalResult, SingleEvalResult=SingleEvalResult,
                                   SamplerBase=SamplerBase, SamplerResponse=SamplerResponse, MessageList=list),
        "simple_evals.common": dict(HTML_JINJA="", jinja_env=types.SimpleNamespace(from_string=lambda s: _Template()),
                                    map_with_progress=lambda fn, xs, num_threads=None, pbar=False: [fn(x) for x in xs],
                                    aggregate_results=lambda results, default_stats=(): EvalResult(metrics={})),
        "blobfile": dict(BlobFile=None),
    }
    saved = {name: sys.modules.get(name) for name in [*stand_ins, "simple_evals", "simple_evals.sampler"]}
    package = types.ModuleType("simple_evals")
    package.__path__ = [str(SHARED_SIMPLE_EVALS)]
    sys.modules["simple_evals"] = package
    for name, attrs in stand_ins.items():
        if name == "blobfile" and saved[name] is not None:
            continue
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        sys.modules[name] = module
    try:
        yield types.SimpleNamespace(eval=importlib.import_module("simple_evals.healthbench_eval"),
                                    meta=importlib.import_module("simple_evals.healthbench_meta_eval"),
                                    SingleEvalResult=SingleEvalResult, SamplerResponse=SamplerResponse)
    finally:
        for name in [m for m in sys.modules if m == "simple_evals" or m.startswith("simple_evals.")]:
            del sys.modules[name]
        for name, module in saved.items():
            if module is not None:
                sys.modules[name] = module
            else:
                sys.modules.pop(name, None)
