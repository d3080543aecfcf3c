"""Pipeline stages, one module each, run in ``STAGE_ORDER``.

Every stage module exposes ``run(ctx: StageContext) -> dict``: it reads its input (the previous
stage's artifact in the same run dir, or an explicit ``<stage>.input=FILE`` override), writes its
artifacts under ``ctx.dir`` (final files atomically, so a crash never leaves one that looks
complete), logs to ``ctx.tracker``, and returns a short summary for the console.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from omegaconf import DictConfig

from alpacare.errors import DataError
from alpacare.tracking import Tracker

if TYPE_CHECKING:
    from alpacare.llm.client import TeacherClient


@dataclass
class Resources:
    """Things several stages share within one job (the teacher and its local server)."""

    cfg: DictConfig
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    _teacher: Optional["TeacherClient"] = None

    def teacher(self) -> "TeacherClient":
        if self._teacher is None:
            from alpacare.llm.client import open_teacher

            self._teacher = self._stack.enter_context(open_teacher(self.cfg.teacher, Path(self.cfg.cache_dir)))
        return self._teacher

    def close(self) -> None:
        self._stack.close()


@dataclass
class StageContext:
    cfg: DictConfig
    run_dir: Path
    stage: str
    tracker: Tracker
    resources: Resources

    @property
    def dir(self) -> Path:
        d = self.run_dir / self.stage
        d.mkdir(parents=True, exist_ok=True)
        return d

    def input_path(self, override: Optional[str], key: str, producer: str, filename: str) -> Path:
        """The explicit ``key=FILE`` if given, else ``producer``'s artifact in this run dir."""
        if override:
            path = Path(override).expanduser()
            if not path.is_file():
                raise DataError(f"{key}={override}: no such file")
            return path
        path = self.run_dir / producer / filename
        if not path.is_file():
            raise DataError(
                f"{self.stage}: no input ({path} does not exist); run the {producer} stage first or set {key}=FILE"
            )
        return path

    def teacher(self) -> "TeacherClient":
        return self.resources.teacher()
