"""``alpacare-fetch healthbench``: the simple-evals protocol files pinned by sha256, the data from
the URLs those files assign, each data file's sha256 recorded at its first download and a later
file that differs refused (at fetch time and at read time), with one line and nothing left behind.

A loopback HTTP server plays both hosts: the simple-evals repository at the pinned commit (the
shared reference copy) and the blob store (our own example sets under the upstream paths)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest

from alpacare.data.cli import main
from alpacare.data.healthbench import (HEALTHBENCH_SETS, SIMPLE_EVALS_FILES, SUMS_FILE, data_url,
                                       fetch_healthbench, load_conversations, read_sums)
from alpacare.errors import DataError
from tests.conftest import HEALTHBENCH_EXAMPLES, SHARED_SIMPLE_EVALS, needs_simple_evals, static_http_server

pytestmark = [pytest.mark.timeout(60), needs_simple_evals]


def _sums(path: Path) -> dict[str, str]:
    return {name: digest for digest, name in (line.split() for line in path.read_text().splitlines())}


def test_pinned_table_matches_the_reference_copy():
    shared = _sums(SHARED_SIMPLE_EVALS / "SHA256SUMS")
    assert {f.upstream: f.sha256 for f in SIMPLE_EVALS_FILES}.items() <= shared.items()
    # the URLs are read from the pinned scripts, one per set, all distinct and on OpenAI's blob store
    urls = [data_url(hb, SHARED_SIMPLE_EVALS.parent) for hb in HEALTHBENCH_SETS.values()]
    assert len(set(urls)) == 4 and all(u.startswith("https://openaipublic.blob.core.windows.net/") for u in urls)


@pytest.fixture
def upstream(tmp_path, monkeypatch) -> Path:
    """The repository at the pinned commit under repo/, the blob store's paths under the root."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    root = tmp_path / "upstream"
    for f in SIMPLE_EVALS_FILES:
        (root / "repo" / f.upstream).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SHARED_SIMPLE_EVALS / f.upstream, root / "repo" / f.upstream)
    for hb in HEALTHBENCH_SETS.values():
        served = root / urlparse(data_url(hb, SHARED_SIMPLE_EVALS.parent)).path.lstrip("/")
        served.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(HEALTHBENCH_EXAMPLES / f"{hb.name}.jsonl", served)
    return root


def _served(root: Path, name: str) -> Path:
    return root / urlparse(data_url(HEALTHBENCH_SETS[name], SHARED_SIMPLE_EVALS.parent)).path.lstrip("/")


def test_first_download_records_sha256_and_a_changed_file_is_refused(tmp_path, upstream, monkeypatch):
    dest = tmp_path / "data"
    with static_http_server(upstream) as (base, requests):
        results = fetch_healthbench(dest, None, base_url=base + "repo/", mirror=base, progress=False)
        assert {r.status for r in results[:3]} == {"downloaded"}
        assert [r.status for r in results[len(SIMPLE_EVALS_FILES):]] == ["first_download"] * 4
        sums = read_sums(dest / SUMS_FILE)
        for name in HEALTHBENCH_SETS:
            local = dest / "healthbench" / f"{name}.jsonl"
            assert sums[local.name] == hashlib.sha256(local.read_bytes()).hexdigest()
            assert local.read_bytes() == (HEALTHBENCH_EXAMPLES / f"{name}.jsonl").read_bytes()
        assert not list(dest.rglob(".*.part"))

        # Rerun: nothing downloaded again.
        requests.clear()
        again = fetch_healthbench(dest, None, base_url=base + "repo/", mirror=base, progress=False)
        assert {r.status for r in again} == {"present"} and requests == []

        # Upstream changes the file; the local copy is gone: the new download is refused, nothing lands.
        served = _served(upstream, "healthbench_hard")
        served.write_bytes(served.read_bytes().replace(b"Should I worry?", b"Should I panic?"))
        (dest / "healthbench" / "healthbench_hard.jsonl").unlink()
        with pytest.raises(DataError) as err:
            fetch_healthbench(dest, ["healthbench_hard"], base_url=base + "repo/", mirror=base, progress=False)
        assert "sha256 mismatch" in str(err.value) and "recorded the first download" in str(err.value)
        assert "\n" not in str(err.value)
        assert not (dest / "healthbench" / "healthbench_hard.jsonl").exists()
        assert read_sums(dest / SUMS_FILE) == sums  # the record stands

    # A local file edited after its first download is refused when fetched again and when read.
    local = dest / "healthbench" / "healthbench.jsonl"
    local.write_bytes(local.read_bytes().replace(b"20 minutes", b"2 hours"))
    with pytest.raises(DataError, match="differs from the .* recorded at its first download"):
        fetch_healthbench(dest, ["healthbench"], base_url="http://127.0.0.1:9/", progress=False)
    monkeypatch.setenv("ALPACARE_DATA_DIR", str(dest))
    assert len(load_conversations("healthbench_consensus")) == 2  # unchanged files still read
    with pytest.raises(DataError, match="differs from the .* recorded at its first download"):
        load_conversations("healthbench")


def test_an_edited_protocol_file_is_refused(healthbench_data, tmp_path, monkeypatch):
    from alpacare.prompts.healthbench import load_protocol

    data = tmp_path / "edited"
    shutil.copytree(healthbench_data, data, symlinks=False)
    script = data / "simple-evals" / "healthbench_eval.py"
    script.chmod(0o644)
    script.write_text(script.read_text().replace("rubric item", "rubric line", 1))
    monkeypatch.setenv("ALPACARE_DATA_DIR", str(data))
    with pytest.raises(DataError, match=r"differs from the pinned release file .*alpacare-fetch healthbench"):
        load_protocol()


def test_cli_prints_each_file_and_a_summary_then_exits_2_on_a_changed_file(tmp_path, upstream, capsys):
    dest = tmp_path / "data"
    with static_http_server(upstream) as (base, _):
        argv = ["healthbench", "--dest", str(dest), "--base-url", base + "repo/", "--mirror", base, "--only", "healthbench"]
        assert main(argv) == 0
        out = capsys.readouterr().out.splitlines()
        assert any("first download: sha256 recorded" in line for line in out)
        assert out[-1] == f"{len(SIMPLE_EVALS_FILES) + 1} files in {dest}: {len(SIMPLE_EVALS_FILES) + 1} downloaded, 0 already present"
        (dest / "healthbench" / "healthbench.jsonl").unlink()
        served = _served(upstream, "healthbench")
        served.write_bytes(served.read_bytes() + b"\n")
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("alpacare-fetch: healthbench/healthbench.jsonl: sha256 mismatch")


def test_missing_data_is_one_line_naming_the_fetch_command(tmp_path, monkeypatch):
    from alpacare.data.eval_sets import check_eval_set
    from alpacare.prompts.healthbench import load_protocol

    monkeypatch.setenv("ALPACARE_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("ALPACARE_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(DataError, match=r"^healthbench/healthbench_hard.jsonl: not found .*run `alpacare-fetch healthbench`$"):
        check_eval_set("healthbench_hard", "predict.test_sets", str(tmp_path / "cache"))
    with pytest.raises(DataError, match=r"^simple-evals/healthbench_eval.py: not found .*run `alpacare-fetch healthbench`$"):
        load_protocol(str(tmp_path / "cache"))
