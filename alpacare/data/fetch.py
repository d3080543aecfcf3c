"""Download the data files the AlpaCare authors released, pinned by sha256.

The released files (seed tasks, MedInstruct-test, reference answers, released model
generations) live in the public GitHub repository ``XZhang97666/AlpaCare``. We fetch the raw
files of one pinned commit and check each against a sha256 recorded here, so a moved branch,
a truncated transfer or a tampered mirror can never feed a run silently different data.

Files land in a data directory laid out like the upstream ``data/`` folder (note: upstream
spells the folder ``model_ouputs``; locally it is ``model_outputs``), plus the few protocol files
of the release that a paper preset reads (the judge's prompt and script) under ``release/<upstream
path>``. Every download is
streamed to a temp file beside its target and renamed into place only once its hash matches,
so a data directory never holds a partial or unverified file.

Where a data file is looked up (``resolve_data_file``), first match wins:
an explicit path > ``$ALPACARE_DATA_DIR/<relpath>`` > ``<cache_dir>/data/<relpath>``, with
``cache_dir`` defaulting to ``$ALPACARE_CACHE_DIR`` or ``~/.cache/alpacare`` (the same default
as ``Config.cache_dir``).

The ``alpacare-fetch`` console script is alpacare/data/cli.py.
"""

from __future__ import annotations

import ast
import fnmatch
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable
from urllib.parse import quote

import httpx

from alpacare.errors import DataError

UPSTREAM_REPO = "XZhang97666/AlpaCare"
UPSTREAM_COMMIT = "b469c41bcd7ddd57dd0bc072ef99d017c5cb0e4b"
DEFAULT_BASE_URL = f"https://raw.githubusercontent.com/{UPSTREAM_REPO}/{UPSTREAM_COMMIT}/"

DATA_DIR_ENV = "ALPACARE_DATA_DIR"
CACHE_DIR_ENV = "ALPACARE_CACHE_DIR"

_CHUNK_BYTES = 1 << 16
# Generous read timeout: raw.githubusercontent.com can stall on cold files; connect fails fast.
HTTP_TIMEOUT = httpx.Timeout(60.0, connect=10.0)


@dataclass(frozen=True)
class ReleasedFile:
    """One released file: where it goes locally, where it lives upstream, and its pinned hash."""

    relpath: str
    upstream: str
    sha256: str
    # Optional files are nice to have but not needed by any stage: a 404 is reported, not fatal.
    optional: bool = False


# One row per released file, with the checksum the release's SHA256SUMS lists.
RELEASED_FILES: tuple[ReleasedFile, ...] = (
    ReleasedFile("med_seed.json", "data/med_seed.json",
                 "01626406491f59826f4a7111a25e9d7cf57d5dfdff0b50221e8c4cf6f4e8e7a2"),
    ReleasedFile("MedInstruct-test.jsonl", "data/MedInstruct-test.jsonl",
                 "cbcdbb18be6a1daf9899be9859170c75825c87e68e4b51d1bd5097a884a0f2c9"),
    ReleasedFile("reference_outputs/claude-2/iCliniq_output.jsonl",
                 "data/reference_outputs/claude-2/iCliniq_output.jsonl",
                 "6d2894827b6c8c41f97f7b2b11c90b00718b68830c298e6340861e1c51c91609"),
    ReleasedFile("reference_outputs/claude-2/medsi_output.jsonl",
                 "data/reference_outputs/claude-2/medsi_output.jsonl",
                 "5588699ebe7af791753217d829285b9911f09a29a3164ec9b91379d7c739bdab"),
    ReleasedFile("reference_outputs/gpt-3.5-turbo/iCliniq_output.jsonl",
                 "data/reference_outputs/gpt-3.5-turbo/iCliniq_output.jsonl",
                 "5a430f6361e92140b53c65777b40421c3882d76e1e4f57d83cdb2e558a4de1ab"),
    ReleasedFile("reference_outputs/gpt-3.5-turbo/medsi_output.jsonl",
                 "data/reference_outputs/gpt-3.5-turbo/medsi_output.jsonl",
                 "5d91f8aa6981a55ed091dc50f9b1366d4c8b3e2926701738b7f7cdc42748762f"),
    ReleasedFile("reference_outputs/gpt-4/iCliniq_output.jsonl",
                 "data/reference_outputs/gpt-4/iCliniq_output.jsonl",
                 "ac9fa72184ccca3b3e427b9d24b18b641207aec6f8e09e7369d7453520c52a86"),
    ReleasedFile("reference_outputs/gpt-4/medsi_output.jsonl",
                 "data/reference_outputs/gpt-4/medsi_output.jsonl",
                 "3a76d8c1ed3552b275eafe9d4037482961a712fe81c6e8f47d0d695c632635e5"),
    ReleasedFile("reference_outputs/text-davinci-003/iCliniq_output.jsonl",
                 "data/reference_outputs/text-davinci-003/iCliniq_output.jsonl",
                 "2a938e0a2d77f72e36fcc6ad954cf13aae0d6f7d5cfdd087ffd747a005310546"),
    ReleasedFile("reference_outputs/text-davinci-003/medsi_output.jsonl",
                 "data/reference_outputs/text-davinci-003/medsi_output.jsonl",
                 "66154b663cd53734f03defdb8f264c41b0b0acd8465a434155ab8cd82210b4b9"),
    ReleasedFile("model_outputs/AlpaCare-7b/alpaca_eval/seed_0.json",
                 "data/model_ouputs/AlpaCare-7b/alpaca_eval/seed_0.json",
                 "b0ef7e53dc7445aeedac7f7c448d52b8f686d4c5d04f6229fe02c44a6f662a9a"),
    ReleasedFile("model_outputs/AlpaCare-7b/iCliniq/seed_0.json",
                 "data/model_ouputs/AlpaCare-7b/iCliniq/seed_0.json",
                 "401dd95953e9f6011931691720896776cd95b78d3636a71e89c07e4175c2a41d"),
    ReleasedFile("model_outputs/AlpaCare-7b/medinstruct/seed_0.json",
                 "data/model_ouputs/AlpaCare-7b/medinstruct/seed_0.json",
                 "3cd82a189e8f0105233389ea663f84cd50dce68c9c0f1db1ae756335b0902513"),
    ReleasedFile("model_outputs/alpaca/alpaca_eval/seed_0.json",
                 "data/model_ouputs/alpaca/alpaca_eval/seed_0.json",
                 "a6c7dff313b0df123844ec6eea60f66059ad9d2d4ca11d294a8e7a9a59e51275"),
    ReleasedFile("model_outputs/alpaca/medinstruct/seed_0.json",
                 "data/model_ouputs/alpaca/medinstruct/seed_0.json",
                 "7a68fd7dadabed52700314deb6c8f401d63db7a9d238e53a8eea6a66c86a7998"),
    ReleasedFile("model_outputs/medalpaca-7b/alpaca_eval/seed_0.json",
                 "data/model_ouputs/medalpaca-7b/alpaca_eval/seed_0.json",
                 "2dbfce6117cf37fc5d137c283144c6c940f21a1bb126e021718b70884cbb0cf9"),
    ReleasedFile("model_outputs/medalpaca-7b/medinstruct/seed_0.json",
                 "data/model_ouputs/medalpaca-7b/medinstruct/seed_0.json",
                 "a009193812aff199f14ce7823534a964c49975d5433f20f2499f7ce7e2eb9ea1"),
    # The release's judge protocol (code license Apache-2.0), read by judge.prompt=paper
    # (alpacare/prompts/judge.py): the prompt file and the script that holds the system message.
    # Locally under release/<upstream path>, as in the data folder's release/ (ALPACARE_DATA_DIR).
    ReleasedFile("release/prompt/alpaca_eval_chat_gpt.txt", "prompt/alpaca_eval_chat_gpt.txt",
                 "c668196c3357383c3a8f5c8b5b61c5a4c254df400e5e04087d8913c83e629b8e"),
    ReleasedFile("release/evaluation/gpt_eval.py", "evaluation/gpt_eval.py",
                 "18a342baf5e99aa80ce75560ce82e33d33ce49489e9db558735d3dcca3a68910"),
    # The CC BY-NC 4.0 text that governs the files above. Its upstream location (repository
    # root, as in Stanford Alpaca) could not be verified offline, hence optional.
    ReleasedFile("DATA_LICENSE", "DATA_LICENSE",
                 "3711f963c05d0be80d53e5923308a6dee31b203da23435c9cfb7c7b6e4dd5e19", optional=True),
)


@dataclass(frozen=True)
class FetchResult:
    """What happened to one file: ``downloaded``, ``present`` (hash ok, skipped) or ``unavailable``;
    for HealthBench's data (alpacare/data/healthbench.py) also ``first_download`` (its sha256 recorded
    now) and ``recorded`` (present without a record: recorded now)."""

    relpath: str
    path: Path
    status: str
    size: int = 0


# ---------------------------------------------------------------------------------------------
# Where data files are looked up
# ---------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$ALPACARE_CACHE_DIR`` or ``~/.cache/alpacare`` (an empty variable counts as unset)."""
    return Path(os.environ.get(CACHE_DIR_ENV) or "~/.cache/alpacare").expanduser()


def default_data_dir(cache_dir: str | Path | None = None) -> Path:
    """Where ``alpacare-fetch`` puts files unless told otherwise: ``<cache_dir>/data``."""
    return (Path(cache_dir).expanduser() if cache_dir else default_cache_dir()) / "data"


def labelled_data_dir_candidates(cache_dir: str | Path | None = None) -> list[tuple[str, Path]]:
    """Data directories in lookup order, each with a label saying why it is searched."""
    candidates = []
    env_dir = os.environ.get(DATA_DIR_ENV)
    if env_dir:
        candidates.append((f"${DATA_DIR_ENV}", Path(env_dir).expanduser()))
    candidates.append(("cache", default_data_dir(cache_dir)))
    return candidates


def data_dir_candidates(cache_dir: str | Path | None = None) -> list[Path]:
    """Data directories in lookup order: ``$ALPACARE_DATA_DIR`` (if set), then ``<cache>/data``."""
    return [path for _, path in labelled_data_dir_candidates(cache_dir)]


def locate_data_file(
    relpath: str, explicit: str | Path | None = None, cache_dir: str | Path | None = None
) -> tuple[Path, str] | None:
    """Like ``resolve_data_file`` but also says where the file was found ("explicit", ...)."""
    if explicit is not None:
        path = Path(explicit).expanduser()
        # The user named this file: falling back to another copy would hide their typo.
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        return path, "explicit"
    for label, directory in labelled_data_dir_candidates(cache_dir):
        path = directory / relpath
        if path.is_file():
            return path, label
    return None


def resolve_data_file(
    relpath: str, explicit: str | Path | None = None, cache_dir: str | Path | None = None
) -> Path | None:
    """Find a data file: explicit path > ``$ALPACARE_DATA_DIR`` > ``<cache>/data``; None if nowhere.

    A missing explicit path is a DataError; a directory that lacks the file is skipped.
    """
    found = locate_data_file(relpath, explicit, cache_dir)
    return found[0] if found else None


def released_file(relpath: str) -> ReleasedFile:
    """The pinned table's row for ``relpath``."""
    released = next((f for f in RELEASED_FILES if f.relpath == relpath), None)
    if released is None:
        raise DataError(f"{relpath}: not a pinned release file")
    return released


def verified_release_file(relpath: str, cache_dir: str | Path | None = None) -> Path:
    """A pinned file whose exact bytes matter (a protocol file read as text): found like
    ``resolve_data_file`` and checked against its sha256 on every read, so an edited copy can
    never stand in for the release's wording. DataError when missing or different."""
    return verified_pinned_file(released_file(relpath), cache_dir, f"alpacare-fetch --only {relpath}")


def verified_pinned_file(released: ReleasedFile, cache_dir: str | Path | None, fetch_command: str) -> Path:
    """``released`` found like ``resolve_data_file`` and checked against its pinned sha256;
    DataError naming ``fetch_command`` when missing or different."""
    relpath = released.relpath
    path = resolve_data_file(relpath, cache_dir=cache_dir)
    if path is None:
        raise DataError(f"{relpath}: not found in ${DATA_DIR_ENV} or the data cache; run `{fetch_command}`")
    got = file_sha256(path)
    if got != released.sha256:
        raise DataError(f"{path}: differs from the pinned release file (sha256 {got[:12]}..., expected "
                        f"{released.sha256[:12]}...); delete it and run `{fetch_command}`")
    return path


def assigned_string(path: Path, variable: str) -> str:
    """The string a pinned script assigns to ``variable`` at any level (exactly one such
    assignment): a literal, or a literal's ``.strip()`` (``X = '''...'''.strip()``). How the project
    reads a protocol's wording without copying it."""
    values = [value for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
              if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == variable for t in node.targets)
              and (value := literal_string(node.value)) is not None]
    if len(values) != 1:
        raise DataError(f"{path}: expected one string assigned to {variable}, found {len(values)}")
    return values[0]


_STRING_METHODS = {"strip": str.strip, "lstrip": str.lstrip, "rstrip": str.rstrip}


def literal_string(node: ast.AST) -> str | None:
    """The value of a string literal node, or of ``"...".strip()`` (no arguments); else None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if (isinstance(node, ast.Call) and not node.args and not node.keywords and isinstance(node.func, ast.Attribute)
            and node.func.attr in _STRING_METHODS and isinstance(node.func.value, ast.Constant)
            and isinstance(node.func.value.value, str)):
        return _STRING_METHODS[node.func.attr](node.func.value.value)
    return None


# ---------------------------------------------------------------------------------------------
# Downloading
# ---------------------------------------------------------------------------------------------


def select_files(patterns: Iterable[str] | None = None) -> list[ReleasedFile]:
    """The released files matching any pattern (exact relpath, folder prefix or glob); all if None."""
    if patterns is None:
        return list(RELEASED_FILES)
    selected: list[ReleasedFile] = []
    for pattern in patterns:
        matches = [f for f in RELEASED_FILES if _matches(f.relpath, pattern)]
        if not matches:
            raise DataError(f"file pattern {pattern!r} matches no released file (alpacare-fetch --list shows them)")
        selected.extend(m for m in matches if m not in selected)
    return selected


def _matches(relpath: str, pattern: str) -> bool:
    folder = pattern.rstrip("/") + "/"
    return relpath == pattern or relpath.startswith(folder) or fnmatch.fnmatchcase(relpath, pattern)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def upstream_url(base_url: str, released: ReleasedFile) -> str:
    return base_url.rstrip("/") + "/" + quote(released.upstream)


def _download_verified(client: httpx.Client, url: str, target: Path, released: ReleasedFile) -> int | None:
    """Stream ``url`` into a temp file beside ``target``, check its sha256, rename it into place.

    Returns the byte count, or None when an optional file is not found upstream.
    """
    landed = download(client, url, target, released.relpath, released.sha256, optional=released.optional)
    return None if landed is None else landed[0]


def download(client: httpx.Client, url: str, target: Path, name: str, expected_sha256: str | None,
             optional: bool = False, mismatch_hint: str = "") -> tuple[int, str] | None:
    """Stream ``url`` into a temp file beside ``target`` and rename it into place once its sha256
    equals ``expected_sha256`` (any, when None); (bytes, sha256), or None for a 404 of an optional
    file. A failed transfer or a mismatch raises DataError naming ``name`` and leaves nothing."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        size = 0
        with os.fdopen(fd, "wb") as out, client.stream("GET", url) as response:
            if response.status_code == 404 and optional:
                return None
            if response.status_code != 200:
                raise DataError(f"{name}: download failed: HTTP {response.status_code} from {url}")
            for chunk in response.iter_bytes(_CHUNK_BYTES):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        got = digest.hexdigest()
        if expected_sha256 is not None and got != expected_sha256:
            raise DataError(f"{name}: sha256 mismatch (expected {expected_sha256}, got {got}) from {url}{mismatch_hint}")
        os.replace(tmp, target)
        return size, got
    except (httpx.HTTPError, httpx.InvalidURL) as e:
        raise DataError(f"{name}: download failed: {_describe_http_error(e)} ({url})") from None
    finally:
        # After a successful rename the temp name is gone; otherwise nothing partial survives.
        tmp.unlink(missing_ok=True)


def _describe_http_error(error: Exception) -> str:
    text = str(error).strip() or type(error).__name__
    return " ".join(text.split())  # keep the error to one line


def print_progress(enabled: bool, line: str) -> None:
    if enabled:
        print(line, flush=True)


def fetch_files(
    dest: str | Path | None = None,
    base_url: str = DEFAULT_BASE_URL,
    files: Iterable[str] | None = None,
    progress: bool = True,
) -> list[FetchResult]:
    """Download (or confirm) the selected released files into ``dest``; one result per file."""
    dest = Path(dest).expanduser() if dest is not None else default_data_dir()
    selected = select_files(files)
    results: list[FetchResult] = []
    with httpx.Client(follow_redirects=True, timeout=HTTP_TIMEOUT) as client:
        for released in selected:
            result = fetch_one(client, dest, base_url, released)
            print_progress(progress, describe_result(result))
            results.append(result)
    return results


def fetch_one(client: httpx.Client, dest: Path, base_url: str, released: ReleasedFile) -> FetchResult:
    target = dest / released.relpath
    if target.is_file() and file_sha256(target) == released.sha256:
        return FetchResult(released.relpath, target, "present", target.stat().st_size)
    # A present file with the wrong hash (older release, hand edit) is replaced, never trusted.
    size = _download_verified(client, upstream_url(base_url, released), target, released)
    if size is None:
        return FetchResult(released.relpath, target, "unavailable")
    return FetchResult(released.relpath, target, "downloaded", size)


def describe_result(result: FetchResult) -> str:
    if result.status == "downloaded":
        return f"downloaded   {result.relpath} ({result.size:,} bytes, sha256 ok)"
    if result.status == "present":
        return f"present      {result.relpath} (sha256 ok, skipped)"
    return f"unavailable  {result.relpath} (optional, not found upstream)"


def fetch(
    dest: str | Path | None = None,
    base_url: str = DEFAULT_BASE_URL,
    files: Iterable[str] | None = None,
    progress: bool = True,
) -> list[Path]:
    """Download the released files into ``dest`` (default ``<cache>/data``), verified by sha256.

    ``files``: relpaths, folder prefixes or globs (``"reference_outputs/gpt-4"``,
    ``"model_outputs/*/medinstruct/*"``); None = all. Files already present with the right
    hash are skipped. Returns the local paths of the files now present. A failed transfer or a
    hash mismatch raises DataError and leaves no file behind.
    """
    results = fetch_files(dest, base_url, files, progress)
    return [r.path for r in results if r.status != "unavailable"]
