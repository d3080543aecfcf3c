"""Per-step training metrics to a plain JSONL file (``train/metrics.jsonl``), alongside W&B.

The report plots the loss curve from this file: it needs no W&B run to parse and survives
``logger=none``. One line per optimizer step, rank 0 only: ``{"step", "train/loss", "train/lr",
"train/tokens_per_s", ...}`` (whatever ``train/*`` scalars Lightning holds at that step). Appended
and fsync'd like the other work logs, so a resumed run continues the same file; readers keep the
last line per step. With validation on (train.val_fraction / train.val_data), the line of a step
that validated also has ``val/loss`` (``validation`` is the Validation callback, listed before
this one so its hook runs first at the same step).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as L


class MetricsFile(L.Callback):
    def __init__(self, path: Path, validation: Optional[Any] = None) -> None:
        self.path = Path(path)
        self.validation = validation
        self._log = None
        self._last_step = -1

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            from alpacare.data.jsonl import AppendLog

            self._log = AppendLog(self.path)
        self._last_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._log is None or trainer.global_step == self._last_step:
            return  # not the micro-batch that completed an optimizer step
        self._last_step = trainer.global_step
        row: dict[str, Any] = {"step": trainer.global_step, "epoch": trainer.current_epoch}
        for key, value in trainer.callback_metrics.items():
            if key.startswith("train/"):
                try:
                    row[key] = round(float(value), 6)
                except (TypeError, ValueError):
                    continue
        last = self.validation.last if self.validation is not None else None
        if last and last["step"] == trainer.global_step:
            row["val/loss"] = round(last["val/loss"], 6)
        self._log.append(row)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.on_train_end(trainer, pl_module)
