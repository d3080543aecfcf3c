"""SLURM time limits and preemption: one owner for the requeue.

Two parties could requeue a SLURM job: Lightning's ``SLURMEnvironment(auto_requeue=True)`` (on
SIGUSR1 it saves ``hpc_ckpt_N.ckpt`` from inside the signal handler, whatever the ranks are doing,
and runs ``scontrol requeue``) and submitit, which the ``hydra/launcher=slurm`` sweeps run on (on
its signal, SIGUSR2 by default, rank 0 rewrites the job's pickle, runs ``scontrol requeue`` and
exits; it counts time-outs against ``max_num_timeout`` and knows array job ids). If both acted,
a job would be requeued twice and resume from a checkpoint the train stage does not read.

So Lightning's auto-requeue is off in every SLURM job (``slurm_plugins``) and the signal goes to
``PreemptionCheckpoint``: it only raises a flag; at the end of the optimizer step the ranks agree
(one all-reduce of a boolean, so a rank that got the signal a moment later agrees too), every rank
joins ``trainer.save_checkpoint`` of ``train/checkpoints/last.ckpt`` (the file ``train.resume=auto``
reads), and then the requeue is handed to submitit's own handler when the job runs under submitit,
or done with ``scontrol requeue`` in a job script of your own. The requeued job reruns the same
command on the same run dir, and training continues from that step exactly (module.py: weights,
optimizer, schedule, data position and every rank's RNG).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as L

log = logging.getLogger(__name__)


def in_slurm_job() -> bool:
    """Tasks started by srun in a SLURM job (Lightning's own test: SLURM_NTASKS set, job not
    named bash/interactive); tracking.process_rank reads the rank the same way."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return SLURMEnvironment.detect()


def under_submitit() -> bool:
    return os.environ.get("SUBMITIT_EXECUTOR") == "slurm"


def preemption_signal() -> signal.Signals:
    """submitit's signal (``SUBMITIT_PREEMPT_SIGNAL``, default USR2), sent by SLURM
    ``signal_delay_s`` before the time limit (``#SBATCH --signal=USR2@120``) and on preemption
    where the cluster signals it. USR1 is avoided: NCCL may catch it."""
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper()
    return getattr(signal, name if name.startswith("SIG") else f"SIG{name}")


def slurm_plugins() -> list[Any]:
    """Lightning's SLURM environment without its auto-requeue (see the module docstring)."""
    if not in_slurm_job():
        return []
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)]


class Preempted(SystemExit):
    """Raised on every rank after the checkpoint, so no rank trains on into a collective its peers left."""

    def __init__(self) -> None:
        super().__init__(f"train: preempted; checkpointed and requeued (signal {preemption_signal().name})")


class PreemptionCheckpoint(L.Callback):
    def __init__(self, checkpoint_path: Path) -> None:
        self.path = Path(checkpoint_path)
        self.signum = preemption_signal()
        self.requested = False
        self._previous: Any = None
        self._installed = False
        self._last_step = -1

    def on_train_start(self, trainer, pl_module) -> None:
        self._last_step = trainer.global_step
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(self.signum, self._request)
            self._installed = True

    def _request(self, signum, frame) -> None:
        log.warning("train: got %s: checkpointing at the end of this optimizer step, then requeueing",
                    signal.Signals(signum).name)
        self.requested = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self._last_step:
            return  # mid-accumulation: not a step boundary
        self._last_step = trainer.global_step
        if not trainer.strategy.reduce_boolean_decision(self.requested, all=False):
            return
        trainer.save_checkpoint(self.path)
        log.warning("train: checkpointed step %d to %s", trainer.global_step, self.path)
        self._hand_over(trainer.is_global_zero)

    def _hand_over(self, rank_zero: bool) -> None:
        previous = self._restore()
        # The requeue ends the job with SIGTERM: from here on it must not reach Lightning's handler,
        # which broadcasts to ranks that may already be gone (an error instead of a clean exit).
        signal.signal(signal.SIGTERM, lambda signum, frame: log.info("train: SIGTERM after the checkpoint: exiting"))
        if callable(previous):
            # submitit's handler: on rank 0 it requeues and exits; on the others it returns.
            previous(self.signum, None)
        elif rank_zero:
            requeue_this_job()
        raise Preempted()

    def _restore(self) -> Optional[Any]:
        previous, self._previous = self._previous, None
        if self._installed:
            signal.signal(self.signum, previous if previous is not None else signal.SIG_DFL)
            self._installed = False
        return previous if previous not in (signal.SIG_DFL, signal.SIG_IGN) else None

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.strategy.reduce_boolean_decision(self.requested, all=False):
            # Signalled during the last step: the model dir may not be written before the limit, so
            # checkpoint the final step and requeue; the rerun trains no more and writes it.
            trainer.save_checkpoint(self.path)
            self._hand_over(trainer.is_global_zero)
        self._restore()  # a signal from now on (model dir being written) goes to its owner again

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._restore()


def requeue_this_job() -> None:
    """``scontrol requeue`` for a job script without submitit (as Lightning would, minus the second owner)."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array else os.environ["SLURM_JOB_ID"]
    result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    if result.returncode:
        log.error("train: scontrol requeue %s failed: %s", job, result.stderr.strip())
    else:
        log.warning("train: requeued SLURM job %s", job)
