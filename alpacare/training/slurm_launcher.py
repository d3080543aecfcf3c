"""The ``hydra/launcher=slurm`` launcher: hydra-submitit-launcher's, failing whole, fast and in one line.

A sweep job on SLURM runs one task per rank (srun). The plugin as it comes left a failed rank's
peers waiting in a collective for its 30-minute timeout, and then showed the wrong error:

- Hydra's ``run_job`` keeps a task function's exception in the ``JobReturn``; the plugin returned
  that as the task's result, so the task exited 0 ("Job completed successfully") and srun saw
  nothing wrong. Here the task raises it again: it exits non-zero, submitit records the traceback,
  and srun's ``--kill-on-bad-exit=1`` (``srun_args``, conf/hydra/launcher/slurm.yaml) ends the
  job's other tasks (SIGTERM, SIGKILL after the cluster's KillWait), as it does when a task dies
  from a signal. SLURM marks the job FAILED.
- ``alpacare -m`` waited on each job in turn and the first failure ended it in submitit's
  ``UncompletedJobError``: a traceback carrying the whole log of task 0, often not the task that
  failed. Here every job is waited for, and each failed one is one line: the job, the rank that
  failed first (srun's own report of the first bad task), that rank's first error and its log.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import OmegaConf

from alpacare.errors import AlpacareError

log = logging.getLogger(__name__)

# srun's report of a task that ended badly: "srun: error: NODE: task 1: Killed",
# "srun: error: NODE: tasks 0-1: Exited with exit code 2".
_SRUN_BAD_TASK = re.compile(r"^srun: error: \S+: tasks? ([\d,\-]+): (.+)$")
# Each attempt of a job (requeues append to the same logs) starts with this line of submitit's.
_ATTEMPT_START = "Starting with JobEnvironment"
# cli.run_job's one line for an error the user can fix (alpacare/errors.py).
_ONE_LINE_ERROR = re.compile(r"^alpacare: (?:[\w ]+ )?error: (.+)$")
_MAX_ERROR_CHARS = 300
# How often a sweep asks sacct about its jobs at least: gentle on slurmdbd (one call for all the
# sweep's jobs), and a job that ended without a result is seen within this.
SACCT_EVERY_S = 20


class JobsFailed(AlpacareError):
    """Sweep jobs that failed on SLURM: one line each (the message has one line per job)."""

    exit_code = 1


class FailFastSlurmLauncher(submitit_launcher.SlurmLauncher):
    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
        """In the job, once per task (rank)."""
        result = super().__call__(*args, **kwargs)
        if result.status == JobStatus.FAILED:
            # Exit non-zero, so that srun ends the other ranks and SLURM fails the job.
            raise result._return_value
        return result

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        jobs = self._submit(job_overrides, initial_job_idx)
        shared = set.intersection(*(set(o) for o in job_overrides))  # a job is named by what the sweep varies
        returns, failures = [], []
        for num, (job, overrides) in enumerate(zip(jobs, job_overrides), start=initial_job_idx):
            result = rank_zero_result(job)
            if result is None:
                wait_until_ended(job)
                failures.append(describe_failure(job, num, [o for o in overrides if o not in shared]))
            else:
                returns.append(result)
        if failures:
            raise JobsFailed("\n".join(failures))
        return returns

    def _submit(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list:
        """The plugin's ``launch`` (hydra-submitit-launcher 1.2) up to the submission: the executor
        from the launcher's parameters, one array job for the sweep."""
        import submitit

        assert self.config is not None
        init_keys = {"submitit_folder", "max_num_timeout"}
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, folder=self.params["submitit_folder"],
                                         slurm_max_num_timeout=self.params["max_num_timeout"])
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in base else f"{self._EXECUTOR}_{k}": v
                                      for k, v in self.params.items() if k not in init_keys})
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        log.info("Submitit '%s' sweep output dir : %s", self._EXECUTOR, sweep_dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        params = []
        for num, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info("\t#%d : %s", num, " ".join(filter_overrides(overrides)))
            params.append((list(overrides), "hydra.sweep.dir", num, f"job_id_for_{num}", Singleton.get_state()))
        return executor.map_array(self, *zip(*params))


def rank_zero_result(job: Any) -> Optional[JobReturn]:
    """Rank 0's JobReturn once every rank is done; None if the job failed (a rank recorded an
    error, or submitit found a task without a result)."""
    if not wait_for_results(job):
        return None
    try:
        return job.results()[0]
    except Exception:  # submitit's UncompletedJobError / FailedJobError, or a job it lost track of
        return None


def wait_for_results(job: Any) -> bool:
    """Wait as submitit's ``job.wait()`` does (every task's result file, checked each second, or
    sacct saying the job is over), asking sacct at least every ``SACCT_EVERY_S`` (submitit backs
    off to 10 minutes) and stopping early, False, once a rank has recorded an error."""
    last_sacct = time.monotonic()
    while not job.done():
        if any(_recorded_error(job.task(i).paths.result_pickle) for i in range(job.num_tasks)):
            return False
        if time.monotonic() - last_sacct > SACCT_EVERY_S:
            job.watcher.update()  # one sacct call for every job of the sweep
            last_sacct = time.monotonic()
        time.sleep(1)
    return True


def wait_until_ended(job: Any, timeout_s: float = 300) -> None:
    """A task's result can be in before SLURM has ended the job's other tasks and srun has written
    which task failed: wait for sacct to say the job is over (KillWait, 30 s by default, and a
    little more), asking every few seconds, only for jobs that failed."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not job.watcher.is_done(job.job_id, mode="force"):
        time.sleep(3)


def describe_failure(job: Any, num: int, overrides: Sequence[str]) -> str:
    """One line: the sweep job (``overrides``: what the sweep varies), its SLURM job, the rank that
    failed first, that rank's first error, its log."""
    swept = " ".join(filter_overrides(overrides))
    what = f"job #{num} ({swept + '; ' if swept else ''}SLURM job {job.job_id})"
    tasks = [job.task(i) for i in range(job.num_tasks)]
    # srun writes its report into the job's batch log, which is task 0's.
    ranks, srun_says = first_bad_tasks(_last_attempt(_read(tasks[0].paths.stderr)))
    ranks = [r for r in ranks if r < len(tasks)]
    # srun reports tasks that ended together in one line: the first to fail recorded its error first.
    rank = min(ranks, key=lambda r: _error_time(tasks[r])) if ranks else None
    task = tasks[rank] if rank is not None else tasks[0]
    error = task_error(task) or (f"no error in its log; srun: {srun_says}" if srun_says else None)
    if rank is None:
        return f"{what} ended {_state(job)}: {error or 'no error in its log'} (log: {task.paths.stderr})"
    return f"{what} failed on rank {rank}: {error} (log: {task.paths.stderr})"


def first_bad_tasks(batch_log: str) -> tuple[list[int], Optional[str]]:
    """The tasks of srun's first report of tasks that ended badly (the others were ended for
    them), and how they ended."""
    for line in batch_log.splitlines():
        match = _SRUN_BAD_TASK.match(line.strip())
        if match:
            return _task_ids(match.group(1)), match.group(2).strip()
    return [], None


def _task_ids(spec: str) -> list[int]:
    """srun's "0-1,3" as [0, 1, 3]."""
    ids: list[int] = []
    for part in spec.split(","):
        first, _, last = part.partition("-")
        ids.extend(range(int(first), int(last or first) + 1))
    return ids


def _error_time(task: Any) -> float:
    """When the task recorded its error (submitit's result file); never, for a task without one."""
    try:
        return task.paths.result_pickle.stat().st_mtime
    except OSError:
        return float("inf")


def task_error(task: Any) -> Optional[str]:
    """A task's first error: its one-line alpacare error, else the exception submitit recorded,
    else the last exception in its log."""
    stderr = _last_attempt(_read(task.paths.stderr))
    one_liners = [m.group(1) for m in map(_ONE_LINE_ERROR.match, stderr.splitlines()) if m]
    if one_liners:
        return _clip(one_liners[0])
    trace = _recorded_error(task.paths.result_pickle)
    line = (exception_line(trace) if trace else None) or exception_line(stderr)
    return _clip(line) if line else None


def exception_line(text: str) -> Optional[str]:
    """``Type: message`` of the last Python traceback in ``text`` (its first line)."""
    lines = text.splitlines()
    starts = [i for i, ln in enumerate(lines) if ln.startswith("Traceback (most recent call last):")]
    if not starts:
        return None
    for line in lines[starts[-1] + 1:]:
        if line.strip() and not line.startswith((" ", "\t")):
            return line.strip()
    return None


def _recorded_error(result_pickle: Path) -> Optional[str]:
    """The traceback submitit stored for a task that raised (``("error", trace)``)."""
    if not result_pickle.exists():
        return None
    from submitit.core.utils import pickle_load

    try:
        outcome, value = pickle_load(result_pickle)
    except Exception:  # a half-written or foreign file: fall back to the log
        return None
    return str(value) if outcome == "error" else None


def _last_attempt(log_text: str) -> str:
    """A requeued job appends to the same logs: keep its last attempt."""
    start = log_text.rfind(_ATTEMPT_START)
    return log_text[log_text.rfind("\n", 0, start) + 1:] if start >= 0 else log_text


def _read(path: Path) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def _state(job: Any) -> str:
    try:
        return job.state
    except Exception:
        return "UNKNOWN"


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_ERROR_CHARS else text[:_MAX_ERROR_CHARS - 3] + "..."
