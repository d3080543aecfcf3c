"""Fetching the released data: pinned hashes, atomic landing, skip-if-present, one-line failures.

Downloads run against a real HTTP server on 127.0.0.1 serving a temp directory laid out like
the upstream repository (``data/...``, with its ``model_ouputs`` spelling), filled at test time
from a couple of the shared released files.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from alpacare.data import fetch as fetch_mod
from alpacare.data.cli import main
from alpacare.data.fetch import (
    RELEASED_FILES,
    data_dir_candidates,
    fetch,
    fetch_files,
    resolve_data_file,
    select_files,
)
from alpacare.errors import DataError
from tests.conftest import static_http_server

pytestmark = pytest.mark.timeout(60)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "alpacare-data"
SEED = "med_seed.json"
MODEL_OUTPUT = "model_outputs/alpaca/medinstruct/seed_0.json"
SERVED = (SEED, MODEL_OUTPUT)

needs_released = pytest.mark.skipif(
    not all((SHARED_DATA / rel).is_file() for rel in SERVED), reason="released AlpaCare data not available"
)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """No proxy between us and the loopback server, and no real data dir or cache."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("ALPACARE_DATA_DIR", raising=False)
    monkeypatch.setenv("ALPACARE_CACHE_DIR", str(tmp_path / "cache"))


def released(relpath: str):
    return next(f for f in RELEASED_FILES if f.relpath == relpath)


@pytest.fixture
def upstream(tmp_path) -> Path:
    """A directory laid out like the upstream repository, holding two released files."""
    root = tmp_path / "upstream"
    for rel in SERVED:
        source = SHARED_DATA / rel
        if not source.is_file():
            pytest.skip("released AlpaCare data not available")
        target = root / released(rel).upstream
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return root


@pytest.fixture
def server(upstream):
    """Serve ``upstream`` on an ephemeral loopback port; yields (base_url, request log)."""
    with static_http_server(upstream) as served:
        yield served


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []


# --- the pinned table ------------------------------------------------------------------------


@pytest.mark.skipif(not (SHARED_DATA / "SHA256SUMS").is_file(), reason="released AlpaCare data not available")
def _sums(path: Path, prefix: str = "") -> dict[str, str]:
    sums = {}
    for line in path.read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        sums[prefix + name.removeprefix("./")] = digest
    return sums


def test_table_pins_every_file_of_the_release():
    data = {f.relpath: f.sha256 for f in RELEASED_FILES if not f.relpath.startswith("release/")}
    assert data == _sums(SHARED_DATA / "SHA256SUMS")
    # The protocol files the project reads carry the sums of the release's own SHA256SUMS.
    protocol = {f.relpath: f.sha256 for f in RELEASED_FILES if f.relpath.startswith("release/")}
    assert protocol and protocol.items() <= _sums(SHARED_DATA / "release" / "SHA256SUMS", "release/").items()


def test_upstream_paths_use_the_upstream_spelling():
    for f in RELEASED_FILES:
        if f.relpath.startswith("model_outputs/"):
            assert f.upstream == "data/model_ouputs/" + f.relpath.removeprefix("model_outputs/")
        elif f.relpath.startswith("release/"):  # the release's protocol files: repository root
            assert f.upstream == f.relpath.removeprefix("release/")
        elif f.relpath != "DATA_LICENSE":
            assert f.upstream == "data/" + f.relpath
    assert fetch_mod.DEFAULT_BASE_URL.endswith("/b469c41bcd7ddd57dd0bc072ef99d017c5cb0e4b/")


def test_select_files_by_name_folder_and_glob():
    assert [f.relpath for f in select_files([SEED])] == [SEED]
    assert len(select_files(["reference_outputs/gpt-4"])) == 2
    assert len(select_files(["model_outputs/*/medinstruct/*"])) == 3
    assert len(select_files(None)) == len(RELEASED_FILES)
    with pytest.raises(DataError, match="'nope.json' matches no released file"):
        select_files(["nope.json"])


# --- downloading -----------------------------------------------------------------------------


@needs_released
def test_good_download_verifies_and_lands(tmp_path, server):
    base_url, requests = server
    dest = tmp_path / "data"
    paths = fetch(dest, base_url=base_url, files=list(SERVED), progress=False)
    assert paths == [dest / SEED, dest / MODEL_OUTPUT]
    for rel in SERVED:
        assert sha256(dest / rel) == released(rel).sha256
    assert files_under(dest) == sorted(paths)  # no temp files left behind
    assert "/data/model_ouputs/alpaca/medinstruct/seed_0.json" in requests


@needs_released
def test_rerun_skips_present_files_without_a_request(tmp_path, server):
    base_url, requests = server
    dest = tmp_path / "data"
    fetch(dest, base_url=base_url, files=list(SERVED), progress=False)
    requests.clear()
    results = fetch_files(dest, base_url=base_url, files=list(SERVED), progress=False)
    assert [r.status for r in results] == ["present", "present"]
    assert requests == []


@needs_released
def test_corrupted_file_raises_and_leaves_nothing(tmp_path, server, upstream):
    base_url, _ = server
    served = upstream / released(SEED).upstream
    served.write_bytes(served.read_bytes().replace(b"Patient", b"Patiant", 1))
    dest = tmp_path / "data"
    with pytest.raises(DataError) as err:
        fetch(dest, base_url=base_url, files=[SEED], progress=False)
    message = str(err.value)
    assert message.startswith(f"{SEED}: sha256 mismatch")
    assert released(SEED).sha256 in message and sha256(served) in message
    assert "\n" not in message
    assert files_under(dest) == []


@needs_released
def test_stale_local_file_is_replaced(tmp_path, server):
    base_url, _ = server
    dest = tmp_path / "data"
    (dest / SEED).parent.mkdir(parents=True)
    (dest / SEED).write_text("[]", encoding="utf-8")
    results = fetch_files(dest, base_url=base_url, files=[SEED], progress=False)
    assert results[0].status == "downloaded"
    assert sha256(dest / SEED) == released(SEED).sha256


@needs_released
def test_missing_upstream_file_is_an_error_but_optional_license_is_not(tmp_path, server):
    base_url, _ = server
    dest = tmp_path / "data"
    with pytest.raises(DataError, match=r"^MedInstruct-test\.jsonl: download failed: HTTP 404"):
        fetch(dest, base_url=base_url, files=["MedInstruct-test.jsonl"], progress=False)
    assert files_under(dest) == []
    results = fetch_files(dest, base_url=base_url, files=["DATA_LICENSE", SEED], progress=False)
    assert [r.status for r in results] == ["unavailable", "downloaded"]
    assert files_under(dest) == [dest / SEED]


def test_connection_refused_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match=rf"^{SEED}: download failed: "):
        fetch(tmp_path / "data", base_url=f"http://127.0.0.1:{closed_port()}/", files=[SEED], progress=False)
    assert files_under(tmp_path / "data") == []


# --- where data files are found --------------------------------------------------------------


def test_resolve_data_file_order(tmp_path, monkeypatch):
    explicit = tmp_path / "x.json"
    explicit.write_text("[]")
    env_dir, cache = tmp_path / "env", tmp_path / "cache"
    for directory in (env_dir, cache / "data"):
        directory.mkdir(parents=True)
        (directory / SEED).write_text("[]")
    monkeypatch.setenv("ALPACARE_DATA_DIR", str(env_dir))

    assert resolve_data_file(SEED, explicit=explicit, cache_dir=cache) == explicit
    assert resolve_data_file(SEED, cache_dir=cache) == env_dir / SEED
    assert data_dir_candidates(cache) == [env_dir, cache / "data"]
    (env_dir / SEED).unlink()
    assert resolve_data_file(SEED, cache_dir=cache) == cache / "data" / SEED
    (cache / "data" / SEED).unlink()
    assert resolve_data_file(SEED, cache_dir=cache) is None
    with pytest.raises(DataError, match="no such file"):
        resolve_data_file(SEED, explicit=tmp_path / "missing.json")


def test_default_cache_comes_from_env(tmp_path):
    assert data_dir_candidates() == [tmp_path / "cache" / "data"]


# --- the console script ----------------------------------------------------------------------


@needs_released
def test_main_prints_one_line_per_file_and_a_summary(tmp_path, server, capsys):
    base_url, _ = server
    dest = tmp_path / "data"
    argv = ["--dest", str(dest), "--base-url", base_url, "--only", SEED, "--only", MODEL_OUTPUT]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[0].startswith("downloaded") and SEED in lines[0]
    assert lines[-1] == f"2 files in {dest}: 2 downloaded, 0 already present"
    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"2 files in {dest}: 0 downloaded, 2 already present"


def test_main_bad_base_url_exits_2_with_one_line(tmp_path, capsys):
    argv = ["--dest", str(tmp_path / "d"), "--base-url", f"http://127.0.0.1:{closed_port()}/", "--only", SEED]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("alpacare-fetch: ")
    assert "Traceback" not in captured.err


def test_console_script_exits_2_without_traceback(tmp_path):
    script = Path(sys.executable).with_name("alpacare-fetch")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "alpacare.data.cli"]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    argv = ["--dest", str(tmp_path / "d"), "--base-url", f"http://127.0.0.1:{closed_port()}/", "--only", SEED]
    proc = subprocess.run(command + argv, capture_output=True, text=True, env=env, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stdout == ""
