"""Issue 25: what is built on first use is built once per node, whatever number of processes start
at once. The ranks of a job all load the embedded model; with an empty cache each converted the
GGUF into the same directory, and one deleted another's half-written copy (rank 0 died in
safetensors: "No such file or directory")."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

# One rank: imports first (as a rank would have by then), then converts when the test says go.
_RANK = '''
import logging, sys, time
from pathlib import Path
logging.basicConfig(level=logging.INFO, format="%(message)s")
from alpacare.training.models import convert_gguf, embedded_gguf_path
import transformers.models.llama  # noqa: F401
dest, ready, go = map(Path, sys.argv[1:4])
ready.touch()
while not go.exists():
    time.sleep(0.01)
gguf = embedded_gguf_path()
print(convert_gguf(gguf.parent, gguf.name, dest))
'''


@pytest.mark.slow
def test_concurrent_conversions_into_an_empty_cache_convert_once(tmp_path):
    from safetensors.torch import load_file

    dest = tmp_path / "cache" / "models" / "smollm2_135m"
    go = tmp_path / "go"
    ranks = [subprocess.Popen([sys.executable, "-c", _RANK, str(dest), str(tmp_path / f"ready{i}"), str(go)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)) and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()
    outs = [rank.communicate(timeout=300) for rank in ranks]

    assert [rank.returncode for rank in ranks] == [0, 0], outs
    assert [out.strip() for out, _ in outs] == [str(dest), str(dest)]
    logs = "".join(err for _, err in outs)
    assert logs.count("converting ") == 1, logs  # one converted; the other waited, then read its copy
    assert "waiting for another process to finish" in logs
    weights = load_file(dest / "model.safetensors")
    assert weights and (dest / "config.json").is_file() and (dest / "tokenizer.json").is_file()
    assert sorted(p.name for p in dest.parent.iterdir()) == [".smollm2_135m.lock", "smollm2_135m"]
