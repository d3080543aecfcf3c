"""Reading a run directory after the fact: which jobs a path holds, what each was run with.

A run dir is what one Hydra job writes (``hydra.run.dir``, or ``multirun/DATE/TIME/N_overrides/``
in a sweep): ``.hydra/`` (Hydra's ``config.yaml`` and ``overrides.yaml`` of the *latest* invocation
on that dir), one folder per stage with its ``stats.json``, and two files the CLI adds:

- ``invocations.jsonl``: one line per invocation on this dir (time, stages, overrides, redacted
  config), so a dir built by several commands (data with one teacher, answers with another, then
  ``stages=[report]``) still says what produced each stage; Hydra overwrites ``.hydra/`` each time.
- ``ledgers.json``: tokens and USD per LLM role (teacher, judge) of the latest invocation that used one.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator, Optional

import yaml

INVOCATIONS_FILE = "invocations.jsonl"
LEDGERS_FILE = "ledgers.json"
# Overrides that say where files are, not what was run: never a compared parameter.
_LOCATION_KEYS = ("hydra.run.dir", "hydra.sweep.dir", "hydra.sweep.subdir")


def is_run_dir(path: Path) -> bool:
    from alpacare.stages import STAGE_ORDER, STATS_FILE

    path = Path(path)
    return path.is_dir() and ((path / ".hydra").is_dir() or (path / INVOCATIONS_FILE).is_file()
                              or any((path / s / STATS_FILE).is_file() for s in STAGE_ORDER))


def _natural(p: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


def job_dirs(root: Path, depth: int = 3) -> Iterator[Path]:
    """``root`` if it is a run dir, else the run dirs below it (a sweep ``multirun/DATE/TIME``,
    or ``multirun/DATE`` holding several sweeps), in job-number order."""
    root = Path(root)
    if is_run_dir(root):
        yield root
        return
    if depth <= 0 or not root.is_dir():
        return
    for child in sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=_natural):
        yield from job_dirs(child, depth - 1)


def _parse_override(text: str) -> Optional[tuple[str, str]]:
    text = str(text).strip()
    if "=" not in text:
        return None
    key, value = text.split("=", 1)
    return key.lstrip("+~").strip(), value.strip()


def invocations(run_dir: Path) -> list[dict[str, Any]]:
    """The CLI's record of every command run on this dir (oldest first); [] for older dirs."""
    path = Path(run_dir) / INVOCATIONS_FILE
    out = []
    if path.is_file():
        for line in path.read_text("utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line of a killed run
            if isinstance(record, dict):
                out.append(record)
    return out


def hydra_overrides(run_dir: Path) -> list[str]:
    """Hydra's ``.hydra/overrides.yaml`` of the latest invocation ([] when absent or unreadable)."""
    path = Path(run_dir) / ".hydra" / "overrides.yaml"
    try:
        data = yaml.safe_load(path.read_text("utf-8")) if path.is_file() else []
    except (OSError, yaml.YAMLError):
        return []
    return [str(x) for x in data] if isinstance(data, list) else []


def overrides(run_dir: Path) -> dict[str, str]:
    """What the job was run with, ``{key: value}`` as typed on the command line. With several
    invocations, those that ran a stage besides ``report`` count, later ones winning per key;
    ``stages`` lists every stage run. Location keys (``hydra.run.dir``...) are left out."""
    records = [r for r in invocations(run_dir) if [s for s in r.get("stages", []) if s != "report"]]
    lists = [r.get("overrides", []) for r in records] or [hydra_overrides(run_dir)]
    merged: dict[str, str] = {}
    stages: list[str] = []
    for items in lists:
        for text in items:
            kv = _parse_override(text)
            if kv is None or kv[0] in _LOCATION_KEYS:
                continue
            if kv[0] == "stages":
                stages += [s.strip() for s in kv[1].strip("[]").split(",") if s.strip() and s.strip() not in stages]
                continue
            merged[kv[0]] = kv[1]
    if stages:
        merged = {"stages": "[" + ",".join(stages) + "]", **merged}
    return merged


def config(run_dir: Path, stage: Optional[str] = None) -> dict[str, Any]:
    """The (redacted) config the given stage last ran with (from ``invocations.jsonl``), else
    Hydra's ``.hydra/config.yaml``; {} when neither is readable."""
    from alpacare.tracking import redact

    for record in reversed(invocations(run_dir)):
        if isinstance(record.get("config"), dict) and (stage is None or stage in record.get("stages", [])):
            return redact(record["config"])
    path = Path(run_dir) / ".hydra" / "config.yaml"
    try:
        data = yaml.safe_load(path.read_text("utf-8")) if path.is_file() else {}
    except (OSError, yaml.YAMLError):
        return {}
    return redact(data) if isinstance(data, dict) else {}


def ledgers(run_dir: Path) -> dict[str, dict[str, Any]]:
    path = Path(run_dir) / LEDGERS_FILE
    try:
        data = json.loads(path.read_text("utf-8")) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def select(cfg: dict[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node
