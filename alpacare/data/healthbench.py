"""HealthBench (OpenAI, May 2025): the data files and the pinned simple-evals protocol files.

HealthBench is 5,000 multi-turn health conversations, each with physician-written rubric criteria
worth points (negative for unwanted behaviour); Hard (1,000) and Consensus are subsets, and the
meta-eval set holds physicians' own binary labels of criteria on answers, to check a grader
against. The reference implementation is ``openai/simple-evals`` at ``SIMPLE_EVALS_COMMIT`` (MIT).

Two kinds of files, both under ``<data dir>`` (found like every data file: ``$ALPACARE_DATA_DIR``,
then ``<cache>/data``; alpacare/data/fetch.py):

- ``simple-evals/<upstream path>``: the protocol files (``healthbench_eval.py``,
  ``healthbench_meta_eval.py``, the grader's sampler), pinned by sha256 like the AlpaCare release
  files. The project never copies their text: it reads what it needs from them (the data URLs
  here; the grader template and request in alpacare/prompts/healthbench.py).
- ``healthbench/<name>.jsonl``: the data, downloaded from the URLs those files assign
  (``INPUT_PATH``...). OpenAI publishes no checksums for them, so the first download records each
  file's sha256 in ``healthbench/SHA256SUMS`` beside it (sha256sum's format) and every later
  download, and every read, must match it: a file that changed upstream or on disk is refused
  with one line instead of silently changing a score.

``alpacare-fetch healthbench`` runs ``fetch_healthbench`` (alpacare/data/cli.py).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional
from urllib.parse import urlparse

import httpx

from alpacare.data.fetch import (
    DATA_DIR_ENV,
    HTTP_TIMEOUT,
    FetchResult,
    ReleasedFile,
    assigned_string,
    default_data_dir,
    describe_result,
    download,
    fetch_one,
    file_sha256,
    print_progress,
    resolve_data_file,
    verified_pinned_file,
)
from alpacare.data.jsonl import iter_jsonl, write_bytes_atomic
from alpacare.errors import DataError

SIMPLE_EVALS_REPO = "openai/simple-evals"
SIMPLE_EVALS_COMMIT = "ee3b0318d8d1d9d72755a4120879be65f7c07e9e"
SIMPLE_EVALS_BASE_URL = f"https://raw.githubusercontent.com/{SIMPLE_EVALS_REPO}/{SIMPLE_EVALS_COMMIT}/"
FETCH_COMMAND = "alpacare-fetch healthbench"

EVAL_SCRIPT = "simple-evals/healthbench_eval.py"
META_EVAL_SCRIPT = "simple-evals/healthbench_meta_eval.py"
SAMPLER_SCRIPT = "simple-evals/sampler/chat_completion_sampler.py"

# The protocol files, with the checksums of the pinned commit (the shared reference copy's SHA256SUMS).
SIMPLE_EVALS_FILES: tuple[ReleasedFile, ...] = (
    ReleasedFile(EVAL_SCRIPT, "healthbench_eval.py",
                 "89909957f005762edaded2f0e39fc9b3b242edd55e3ac0ce4c8dd886ac59d167"),
    ReleasedFile(META_EVAL_SCRIPT, "healthbench_meta_eval.py",
                 "2e7ff3cebdd37018655fbe45725add3d79142460813f53195b9a91ddfc4153aa"),
    ReleasedFile(SAMPLER_SCRIPT, "sampler/chat_completion_sampler.py",
                 "d9d7568ad5b04379342b7f269a6028c6945c518bc8baa56969aad035afc8d435"),
    ReleasedFile("simple-evals/LICENSE", "LICENSE",
                 "d831db55645e47ca8e491c5a0e37f1ee744d7b10bf5aa8d50146c795ac0176c0", optional=True),
)

SUMS_FILE = "healthbench/SHA256SUMS"


@dataclass(frozen=True)
class HealthBenchSet:
    """One data file: its local name and the pinned script variable that holds its URL."""

    name: str
    script: str
    variable: str
    description: str

    @property
    def relpath(self) -> str:
        return f"healthbench/{self.name}.jsonl"


HEALTHBENCH_SETS: dict[str, HealthBenchSet] = {s.name: s for s in (
    HealthBenchSet("healthbench", EVAL_SCRIPT, "INPUT_PATH", "HealthBench: 5,000 conversations, 48,562 rubric criteria"),
    HealthBenchSet("healthbench_hard", EVAL_SCRIPT, "INPUT_PATH_HARD", "HealthBench Hard: 1,000 conversations"),
    HealthBenchSet("healthbench_consensus", EVAL_SCRIPT, "INPUT_PATH_CONSENSUS",
                   "HealthBench Consensus: 34 physician-validated behaviours"),
    HealthBenchSet("healthbench_meta", META_EVAL_SCRIPT, "INPUT_PATH",
                   "HealthBench meta-eval: physicians' binary labels of criteria on answers"),
)}
# The sets a model answers (the meta-eval set is for checking graders).
CONVERSATION_SETS = ("healthbench", "healthbench_hard", "healthbench_consensus")
META_SET = "healthbench_meta"
ROLES = ("system", "user", "assistant", "developer")


def is_healthbench(name: str) -> bool:
    return name in CONVERSATION_SETS


def pinned_file(relpath: str, cache_dir: str | Path | None = None) -> Path:
    """A simple-evals protocol file, checked against its pinned sha256 on every read."""
    released = next((f for f in SIMPLE_EVALS_FILES if f.relpath == relpath), None)
    if released is None:
        raise DataError(f"{relpath}: not a pinned simple-evals file")
    return verified_pinned_file(released, cache_dir, FETCH_COMMAND)


# ---------------------------------------------------------------------------------------------
# Recorded checksums (trust on first download)
# ---------------------------------------------------------------------------------------------


def read_sums(path: Path) -> dict[str, str]:
    """``file name -> sha256`` from a sha256sum-style file (empty when absent)."""
    if not path.is_file():
        return {}
    sums = {}
    for lineno, line in enumerate(path.read_text("utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or len(parts[0]) != 64:
            raise DataError(f"{path}:{lineno}: not a '<sha256>  <file>' line")
        sums[parts[1].strip().lstrip("*")] = parts[0]
    return sums


def _write_sums(path: Path, sums: dict[str, str]) -> None:
    """sha256sum's own format, so ``sha256sum -c SHA256SUMS`` in that folder checks the files too."""
    lines = "".join(f"{digest}  {name}\n" for name, digest in sorted(sums.items()))
    write_bytes_atomic(path, lines.encode("utf-8"))


def _differs(path: Path, recorded: str, got: str, sums_path: Path) -> DataError:
    return DataError(f"{path}: sha256 {got[:12]}... differs from the {recorded[:12]}... recorded at its first download "
                     f"({sums_path}); the data changed since: to accept the new file, delete it and its line in "
                     f"{sums_path.name}, then run `{FETCH_COMMAND}` (scores of the two versions do not compare)")


def data_file(name: str, cache_dir: str | Path | None = None) -> Path:
    """The local file of HealthBench set ``name``, checked against the sha256 recorded beside it
    (a file placed by hand, with no record, is taken as it is)."""
    hb = HEALTHBENCH_SETS[name]
    path = resolve_data_file(hb.relpath, cache_dir=cache_dir)
    if path is None:
        raise DataError(f"{hb.relpath}: not found in ${DATA_DIR_ENV} or the data cache; run `{FETCH_COMMAND}`")
    sums_path = path.parent / Path(SUMS_FILE).name
    recorded = read_sums(sums_path).get(path.name)
    if recorded is not None:
        got = file_sha256(path)
        if got != recorded:
            raise _differs(path, recorded, got, sums_path)
    return path


# ---------------------------------------------------------------------------------------------
# Fetching
# ---------------------------------------------------------------------------------------------


def data_url(hb: HealthBenchSet, dest: Path, mirror: Optional[str] = None) -> str:
    """The set's URL as the pinned script assigns it; with ``mirror``, the same path on that host."""
    url = assigned_string(dest / hb.script, hb.variable)
    if mirror:
        return mirror.rstrip("/") + urlparse(url).path
    return url


def select_sets(names: Optional[Iterable[str]]) -> list[HealthBenchSet]:
    if names is None:
        return list(HEALTHBENCH_SETS.values())
    unknown = [n for n in names if n not in HEALTHBENCH_SETS]
    if unknown:
        raise DataError(f"unknown HealthBench set(s) {unknown}; choose from {list(HEALTHBENCH_SETS)}")
    return [HEALTHBENCH_SETS[n] for n in dict.fromkeys(names)]


def fetch_healthbench(dest: str | Path | None = None, sets: Optional[Iterable[str]] = None,
                      base_url: str = SIMPLE_EVALS_BASE_URL, mirror: Optional[str] = None,
                      progress: bool = True) -> list[FetchResult]:
    """The pinned protocol files (sha256 checked), then each selected data set from the URL its
    script assigns (sha256 recorded at the first download, checked at every later one)."""
    dest = Path(dest).expanduser() if dest is not None else default_data_dir()
    selected = select_sets(sets)
    results: list[FetchResult] = []
    with httpx.Client(follow_redirects=True, timeout=HTTP_TIMEOUT) as client:
        for released in SIMPLE_EVALS_FILES:
            result = fetch_one(client, dest, base_url, released)
            print_progress(progress, describe_result(result))
            results.append(result)
        sums_path = dest / SUMS_FILE
        for hb in selected:
            result = _fetch_data(client, dest, hb, mirror, sums_path)
            print_progress(progress, _describe(result))
            results.append(result)
    return results


def _fetch_data(client: httpx.Client, dest: Path, hb: HealthBenchSet, mirror: Optional[str], sums_path: Path) -> FetchResult:
    target = dest / hb.relpath
    sums = read_sums(sums_path)
    recorded = sums.get(target.name)
    if target.is_file():
        got = file_sha256(target)
        if recorded is None:  # placed by hand or by an older alpacare: its hash is recorded now
            _write_sums(sums_path, {**sums, target.name: got})
            return FetchResult(hb.relpath, target, "recorded", target.stat().st_size)
        if got != recorded:
            raise _differs(target, recorded, got, sums_path)
        return FetchResult(hb.relpath, target, "present", target.stat().st_size)
    url = data_url(hb, dest, mirror)
    hint = f"; {sums_path} recorded the first download's sha256, so this file changed since (a new version?)"
    size, got = download(client, url, target, hb.relpath, recorded, mismatch_hint=hint)  # type: ignore[misc]
    if recorded is None:
        _write_sums(sums_path, {**read_sums(sums_path), target.name: got})
        return FetchResult(hb.relpath, target, "first_download", size)
    return FetchResult(hb.relpath, target, "downloaded", size)


def _describe(result: FetchResult) -> str:
    if result.status == "first_download":
        return f"downloaded   {result.relpath} ({result.size:,} bytes, first download: sha256 recorded in {SUMS_FILE})"
    if result.status == "recorded":
        return f"present      {result.relpath} (no sha256 on record: recorded now in {SUMS_FILE})"
    if result.status == "present":
        return f"present      {result.relpath} (sha256 matches the record, skipped)"
    return f"downloaded   {result.relpath} ({result.size:,} bytes, sha256 matches the record)"


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def _messages(value: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: 'prompt' must be a non-empty list of messages")
    for m in value:
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: every message needs a role ({', '.join(ROLES)}) and text content")
    if value[-1]["role"] != "user":
        raise DataError(f"{where}: the conversation must end with a user turn")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _rubrics(value: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: 'rubrics' must be a non-empty list")
    for r in value:
        points = r.get("points") if isinstance(r, dict) else None
        if (not isinstance(r, dict) or not isinstance(r.get("criterion"), str)
                or isinstance(points, bool) or not isinstance(points, (int, float))
                or not isinstance(r.get("tags", []), list)):
            raise DataError(f"{where}: every rubric item needs a criterion (text), points (a number) and tags (a list)")
    if not any(r["points"] > 0 for r in value):
        raise DataError(f"{where}: no rubric item has positive points (the score would be undefined)")
    return [{"criterion": r["criterion"], "points": r["points"], "tags": list(r.get("tags", []))} for r in value]


def load_conversations(name: str, cache_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Set ``name``'s conversations in file order: ``{index, id, prompt_id, prompt, rubrics,
    example_tags}``; a malformed line is a DataError naming file and line."""
    path = data_file(name, cache_dir)
    examples = []
    for index, record in enumerate(iter_jsonl(path)):
        where = f"{path}: record {index + 1}"
        prompt_id = record.get("prompt_id")
        if not isinstance(prompt_id, str) or not prompt_id:
            raise DataError(f"{where}: no prompt_id")
        tags = record.get("example_tags", [])
        if not isinstance(tags, list) or len(set(tags)) != len(tags):
            raise DataError(f"{where}: 'example_tags' must be a list without duplicates")
        examples.append({"index": index, "id": prompt_id, "prompt_id": prompt_id,
                         "prompt": _messages(record.get("prompt"), where),
                         "rubrics": _rubrics(record.get("rubrics"), where), "example_tags": tags})
    if not examples:
        raise DataError(f"{path}: no conversations (empty file)")
    return examples


def subset(examples: list[dict[str, Any]], limit: Optional[int], seed: int) -> list[dict[str, Any]]:
    """``limit`` conversations drawn as simple-evals draws them (``random.Random(seed).sample``,
    seed 0 there), in the drawn order; all of them, in file order, when ``limit`` is None or larger."""
    if limit is not None and limit < len(examples):
        return random.Random(seed).sample(examples, limit)
    return examples


def load_meta_examples(cache_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """The meta-eval set: ``{index, prompt, completion, rubric, category, binary_labels,
    anonymized_physician_ids}`` per labelled (conversation, answer, criterion)."""
    path = data_file(META_SET, cache_dir)
    rows = []
    for index, record in enumerate(iter_jsonl(path)):
        where = f"{path}: record {index + 1}"
        labels, physicians = record.get("binary_labels"), record.get("anonymized_physician_ids")
        if not isinstance(labels, list) or not labels or not all(isinstance(x, bool) for x in labels):
            raise DataError(f"{where}: 'binary_labels' must be a non-empty list of true/false")
        if not isinstance(physicians, list) or len(physicians) != len(labels):
            raise DataError(f"{where}: 'anonymized_physician_ids' must name one physician per label")
        for key in ("completion", "rubric", "category"):
            if not isinstance(record.get(key), str):
                raise DataError(f"{where}: no {key!r} text")
        rows.append({"index": index, "prompt": _messages_any_end(record.get("prompt"), where),
                     "completion": record["completion"], "rubric": record["rubric"], "category": record["category"],
                     "binary_labels": labels, "anonymized_physician_ids": [str(p) for p in physicians],
                     "prompt_id": record.get("prompt_id"), "completion_id": record.get("completion_id")})
    if not rows:
        raise DataError(f"{path}: no labelled rows (empty file)")
    return rows


def _messages_any_end(value: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value or not all(
            isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in value):
        raise DataError(f"{where}: 'prompt' must be a non-empty list of messages with a role and text content")
    return [{"role": m["role"], "content": m["content"]} for m in value]
