"""JSONL and JSON files that survive kill -9.

Two kinds of files:
- work logs (``AppendLog``): one JSON record per line, flushed and fsync'd per record, so a
  killed run loses at most the line being written; on reopen a torn last line is cut off
  before appending, so no half-written record is ever read back or followed by new ones.
- final artifacts (``write_json_atomic`` / ``write_jsonl_atomic``): written to a temp file in
  the same directory and renamed into place, so they either exist complete or not at all.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from alpacare.errors import DataError


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL file of objects; a bad line is a DataError naming file and line."""
    return list(iter_jsonl(path))


def iter_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    raise DataError(f"{path}:{lineno}: not valid UTF-8") from None
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
                if not isinstance(record, dict):
                    raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
                yield record
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a file") from None


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Read records from a .json list (Alpaca format) or a .jsonl file."""
    path = Path(path)
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
        except FileNotFoundError:
            raise DataError(f"{path}: no such file") from None
        except UnicodeDecodeError:
            raise DataError(f"{path}: not valid UTF-8") from None
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise DataError(f"{path}: expected a JSON list of objects")
        return data
    return read_jsonl(path)


def read_json_or_jsonl(path: str | Path) -> Any:
    """A JSON document, or the records of a JSONL file (``.jsonl``, or JSON that does not parse
    whole and starts with an object); the content decides, not the suffix. [] for an empty file."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a file") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not valid UTF-8") from None
    stripped = text.lstrip()
    if not stripped:
        return []
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        if stripped.startswith("{"):
            return read_jsonl(path)  # JSONL under another suffix: one object per line
        raise DataError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None


# Logs appended to inside ``deferred_fsync`` (None outside it).
_deferred: Optional[list["AppendLog"]] = None


@contextlib.contextmanager
def deferred_fsync() -> Iterator[None]:
    """Appends inside are written and flushed (a killed process loses none) but fsync'd once per
    log at the end, not per record. For callers that record their own completion after the block
    (a Batch API batch is closed in its batch log only after its results are in the work log), so
    a machine crash inside loses only work the rerun redoes: 50,000 answers of one batch cost one
    fsync instead of ~80 s of them (1.6 ms each, measured on the test machine)."""
    global _deferred
    outer, _deferred = _deferred, []
    try:
        yield
    finally:
        logs, _deferred = _deferred, outer
        for log in {id(x): x for x in logs}.values():
            if not log._f.closed:
                os.fsync(log._f.fileno())


class AppendLog:
    """Append-only JSONL log that resumes after a crash without losing or duplicating records."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records = self._recover()
        self._f = open(self.path, "ab")

    def _recover(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1  # everything after the last newline is a torn write
        records = []
        for lineno, raw in enumerate(data[:end].splitlines(), 1):
            if raw.strip():
                try:
                    records.append(json.loads(raw))
                except json.JSONDecodeError:
                    raise DataError(f"{self.path}:{lineno}: corrupt work log line; delete the file to start over") from None
        if end < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(end)
        return records

    def append(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")
        self._f.flush()
        if _deferred is None:
            os.fsync(self._f.fileno())
        else:
            _deferred.append(self)
        self.records.append(record)

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "AppendLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_bytes_atomic(path: Path, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_bytes_atomic(Path(path), (json.dumps(obj, ensure_ascii=False, indent=2) + "\n").encode("utf-8"))


def write_jsonl_atomic(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    write_bytes_atomic(Path(path), ("\n".join(lines) + ("\n" if lines else "")).encode("utf-8"))
