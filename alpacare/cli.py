"""The ``alpacare`` Hydra app: compose the config, validate it, run the selected stages in order.

    alpacare                                   # default pipeline on the embedded model
    alpacare stages=[dedup] dedup.input=FILE   # any stage alone
    alpacare -m dedup.threshold=0.5,0.7 ...    # a sweep: one run dir per job
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from alpacare.config import register_configs, validate
from alpacare.errors import AlpacareError
from alpacare.stages import Resources, StageContext, StageSpec, check_inputs, selected_stages
from alpacare.tracking import Tracker, process_rank

log = logging.getLogger("alpacare")

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

register_configs()


def _run_names() -> tuple[Path, str, str]:
    """This job's output dir, the W&B group (the sweep, or the run itself) and the run's name."""
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    # Default dirs end in DATE/TIME; both parts make the group unique across days.
    if hc.mode == RunMode.MULTIRUN:
        sweep = Path(hc.sweep.dir)
        group = f"{sweep.parent.name}_{sweep.name}"
        name = f"{group}-{hc.job.num}"
    else:
        group = name = f"{run_dir.parent.name}_{run_dir.name}"
    return run_dir, group, name


def run_stages(cfg: DictConfig) -> dict[str, Any]:
    validate(cfg)
    for noisy in ("httpx", "httpx2"):  # one INFO line per request drowns the progress bars
        logging.getLogger(noisy).setLevel(logging.WARNING)
    run_dir, group, run_name = _run_names()
    stages = selected_stages(cfg)
    rank = process_rank()
    if rank != 0:
        # A distributed launch (Lightning's launcher, torchrun, SLURM) starts this app once per
        # rank: only rank 0 talks to LLM endpoints and writes data; every rank trains.
        stages = [s for s in stages if s.all_ranks]
    check_before_running(cfg, run_dir, stages)
    if rank == 0:
        _record_invocation(cfg, run_dir, stages)
    resources = Resources(cfg)
    summaries: dict[str, Any] = {}
    try:
        for spec in stages:
            module = _stage_module(spec.name)
            tracker = Tracker(cfg, run_dir, spec.name, group, run_name)
            ctx = StageContext(cfg=cfg, run_dir=run_dir, spec=spec, tracker=tracker, resources=resources)
            log.info("stage %s: starting", spec.name)
            try:
                summary = module.run(ctx) or {}
            except BaseException:
                tracker.finish(exit_code=1)
                raise
            summary["seconds"] = round(time.perf_counter() - ctx.started, 1)
            tracker.summary(summary)
            tracker.summary(_headline_metrics(run_dir, spec.name))
            tracker.finish()
            summaries[spec.name] = summary
            log.info("stage %s: done in %.1fs", spec.name, summary["seconds"])
    finally:
        ledgers = resources.ledgers()
        resources.close()
        if rank == 0 and ledgers:
            _write_ledgers(run_dir, ledgers)
    if rank == 0:
        _print_summary(run_dir, summaries, ledgers)
    return summaries


def _record_invocation(cfg: DictConfig, run_dir: Path, stages: list[StageSpec]) -> None:
    """One line per command on this run dir (Hydra overwrites .hydra/ each time): alpacare/rundir.py."""
    from datetime import datetime, timezone

    from alpacare.data.jsonl import AppendLog
    from alpacare.rundir import INVOCATIONS_FILE
    from alpacare.tracking import redact

    with AppendLog(run_dir / INVOCATIONS_FILE) as record:
        record.append({"time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       "stages": [s.name for s in stages], "overrides": list(HydraConfig.get().overrides.task),
                       "config": redact(cfg)})


def _write_ledgers(run_dir: Path, ledgers: dict[str, dict[str, Any]]) -> None:
    from alpacare.data.jsonl import write_json_atomic
    from alpacare.rundir import LEDGERS_FILE, ledgers as read_ledgers

    write_json_atomic(run_dir / LEDGERS_FILE, {**read_ledgers(run_dir), **ledgers})


def _headline_metrics(run_dir: Path, stage: str) -> dict[str, Any]:
    """The stage's headline metrics under stable W&B names, ``<stage>/<name>`` (alpacare/stats_schema.py)."""
    from alpacare.stats_schema import StatsProblem, headline, read_stats

    try:
        stats = read_stats(run_dir, stage)
    except StatsProblem:
        return {}
    if not stats:
        return {}
    return {f"{stage}/{k}": v for k, v in {**headline(stage, stats), "seconds": stats.get("seconds")}.items()
            if v is not None}


def check_before_running(cfg: DictConfig, run_dir: Path, stages: list[StageSpec]) -> None:
    """What can fail cheaply fails before any slow or paid work: every stage is implemented,
    every input will exist, every endpoint role in use has its API key."""
    from alpacare.llm.client import api_key, warn_if_retired

    modules = [_stage_module(spec.name) for spec in stages]
    check_inputs(cfg, run_dir, stages)
    for module in modules:  # a stage's own cheap checks (known test set names, data present, ...)
        if hasattr(module, "check"):
            module.check(cfg)
    for role in sorted({role for spec in stages for role in spec.endpoints}):
        api_key(cfg[role], role)
        warn_if_retired(cfg[role], role)


def _stage_module(stage: str):
    try:
        return importlib.import_module(f"alpacare.stages.{stage}")
    except ModuleNotFoundError as e:
        if e.name == f"alpacare.stages.{stage}":
            raise AlpacareError(f"stages: the {stage!r} stage is not implemented yet") from None
        raise


def _print_summary(run_dir: Path, summaries: dict[str, Any], ledgers: dict[str, dict[str, Any]]) -> None:
    print(f"\nalpacare: outputs in {run_dir}")
    for stage, summary in summaries.items():
        fields = ", ".join(f"{k}={v}" for k, v in summary.items() if not isinstance(v, (dict, list)))
        print(f"  {stage:<13} {fields}")
    for role, ledger in ledgers.items():
        print(f"  {role + ' ledger':<13} requests={ledger['requests']}, cached={ledger['cached_requests']}, "
              f"failed={ledger['failed_requests']}, prompt_tokens={ledger['prompt_tokens']}, "
              f"completion_tokens={ledger['completion_tokens']}, cost_usd={ledger['cost_usd']}; "
              # Sent but never received (timed out, cut off): a real API may bill them.
              f"abandoned={ledger['abandoned_requests']} (up to {ledger['abandoned_prompt_tokens']} prompt + "
              f"{ledger['abandoned_completion_tokens']} completion tokens), "
              f"cost_usd_possibly_billed={ledger['cost_usd_possibly_billed']}")
    report = summaries.get("report", {}).get("html")
    if report:
        print(f"alpacare: report: {report}")
    sys.stdout.flush()


def _exit_with_one_line(prefix: str, message: str, code: int) -> None:
    """One line per problem (a sweep's failed jobs are one each: alpacare/training/slurm_launcher.py)."""
    for line in message.splitlines() or [""]:
        print(f"alpacare: {prefix}: {line}", file=sys.stderr)
    sys.exit(code)


def run_job(cfg: DictConfig) -> None:
    """Hydra's task function, once per job. Sweeps on the submitit launchers (hydra/launcher=slurm,
    submitit_local) pickle it into the job: it is a plain module-level function, pickled by
    reference, so nothing of this module's state travels (tests/test_slurm.py runs both)."""
    try:
        run_stages(cfg)
    except AlpacareError as e:
        if _wants_traceback():
            raise
        # Exit here, inside the job: Hydra would otherwise add its own "Error executing job" line.
        _exit_with_one_line("error", str(e), e.exit_code)


_hydra_app = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(run_job)


def _wants_traceback() -> bool:
    return os.environ.get("ALPACARE_TRACEBACK") == "1"


def _one_line(exc: BaseException) -> str:
    """Hydra and OmegaConf errors span several lines; keep the ones that name the problem."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    cause = exc.__cause__
    if cause is not None and str(cause).strip():
        cause_lines = [ln.strip() for ln in str(cause).splitlines() if ln.strip()]
        lines = lines[:1] + cause_lines[:1] + [ln for ln in cause_lines[1:] if ln.startswith("full_key")]
    return " ".join(lines[:3]) if lines else type(exc).__name__


def main() -> None:
    """Console entry point: user-fixable errors become one line on stderr and a non-zero exit."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        os.environ["ALPACARE_TRACEBACK"] = "1"
    # Let Hydra re-raise instead of printing its own multi-line report; we print one line below.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    # SIGTERM unwinds like Ctrl-C, so the local server stops and no half-written file is left.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        _hydra_app()
    except AlpacareError as e:  # raised outside a job (e.g. while building the sweep)
        if _wants_traceback():
            raise
        _exit_with_one_line("error", str(e), e.exit_code)
    except (HydraException, OmegaConfBaseException) as e:
        if _wants_traceback():
            raise
        _exit_with_one_line("config error", _one_line(e), 2)
    except KeyboardInterrupt:
        _exit_with_one_line("interrupted", "rerun with the same hydra.run.dir to resume", 130)


if __name__ == "__main__":
    main()
