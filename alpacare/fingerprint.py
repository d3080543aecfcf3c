"""Settings fingerprints: a run dir's work is continued only under the settings that produced it.

Every stage that resumes (instructions and responses from their work logs, train from its
checkpoint) records the settings that decide what it produces, as flat ``key: value`` pairs named
like the config keys (``teacher.model``, ``train.lr``). On resume the recorded and the current
settings are compared; a difference is one clear error naming each change
(``teacher.model: gpt-4 -> gpt-3.5-turbo``) and the two ways on: a new ``hydra.run.dir`` to start
fresh, or ``<stage>.allow_changed_settings=true`` to continue deliberately (the change is then
recorded next to the earlier settings, so the mix stays visible).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Mapping, Optional

from alpacare.errors import ConfigError

log = logging.getLogger(__name__)

SETTINGS_FILE = "settings.json"


def fingerprint(settings: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(dict(settings), sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_digest(path: str | Path) -> str:
    """Content hash of a file (seed file, training data): a changed file is a changed setting."""
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``key: old -> new`` for every setting that differs (a missing one shows as None)."""
    return [f"{k}: {old.get(k)} -> {new.get(k)}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def mismatch_error(what: str, diff: list[str], continue_hint: str) -> ConfigError:
    shown = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
    return ConfigError(f"{what} was made with other settings ({shown}); to start fresh use a new "
                       f"hydra.run.dir, or {continue_hint}")


def check_settings(stage_dir: Path, settings: Mapping[str, Any], *, stage: str, has_work: bool,
                   allow_changed: bool) -> Optional[list[str]]:
    """Compare ``settings`` with ``<stage_dir>/settings.json`` and record them there.

    No earlier work: the settings are (re)written. Same settings: nothing to do. Changed settings
    with earlier work: ConfigError, unless ``allow_changed`` (then a warning, and the earlier
    settings are kept under "earlier"). Returns the changes that were allowed, if any."""
    from alpacare.data.jsonl import write_json_atomic

    path = Path(stage_dir) / SETTINGS_FILE
    settings = dict(settings)
    record = {"fingerprint": fingerprint(settings), "settings": settings, "earlier": []}
    old = json.loads(path.read_text("utf-8")) if path.is_file() else None
    if old is not None and old.get("fingerprint") == record["fingerprint"]:
        return None
    diff = None
    if old is not None and has_work:
        diff = changes(old.get("settings", {}), settings)
        if not allow_changed:
            raise mismatch_error(f"{stage}: the work in {stage_dir}", diff,
                                 f"set {stage}.allow_changed_settings=true to continue it deliberately "
                                 f"(both settings mixed in one dataset)")
        log.warning("%s: continuing work made with other settings (%s), as %s.allow_changed_settings=true asks",
                    stage, "; ".join(diff), stage)
        record["earlier"] = old.get("earlier", []) + [old.get("settings", {})]
    elif old is None and has_work:
        log.warning("%s: %s has work but no %s (written by an older version); recording the current settings",
                    stage, stage_dir, SETTINGS_FILE)
    write_json_atomic(path, record)
    return diff
