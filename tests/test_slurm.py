"""Sweeps on SLURM through hydra-submitit-launcher (issues 17 and 25), against a real single-node
cluster: Debian's slurmctld, slurmd, slurmdbd on MariaDB and munge, brought up by
scripts/slurm_cluster.sh (tests/conftest.py's ``slurm_cluster`` fixture; skipped where the
packages are absent).

- the ``hydra/launcher=slurm`` preset: tasks and GPUs per node follow ``trainer.devices``, nodes
  follow ``trainer.num_nodes``; ``trainer.devices=auto`` is one clear line;
- a sweep through ``hydra/launcher=submitit_local`` (the task function pickled into real jobs);
- on the cluster: a dedup sweep, one of whose jobs has a bad value (one line, no traceback); a job
  with two tasks training two DDP ranks from an empty model cache (the embedded GGUF converted once
  per node); SLURM's time-limit signal making it checkpoint, requeue and resume to the weights of an
  uninterrupted run; one rank killed with SIGKILL, another raising, each ending its whole job
  within two minutes and reported in one line.

Several nodes are beyond one machine: tests/test_slurm_nodes.py runs those on stand-ins.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, cli_env, run_cli
from tests.test_train_support import (  # noqa: F401  (fixtures)
    COMMON,
    NINE,
    USR2_AT_STEP_2,
    assert_same_weights,
    RECORDS,
    cache_dir,
    read_stats,
    run_train,
    smollm_tokenizer_dir,
    tiny_model_dir,
    train_cfg,
    write_records,
)

DDP_CPU = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true"]


def _launcher(*overrides: str):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import alpacare.cli  # noqa: F401  (registers the schema and the resolvers)

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["hydra/launcher=slurm", *overrides], return_hydra_config=True)
    return OmegaConf.to_container(cfg.hydra.launcher, resolve=True)


def test_slurm_preset_follows_the_trainer():
    gpu = _launcher("trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2", "hydra.launcher.partition=gpu",
                    "hydra.launcher.account=lab", "hydra.launcher.timeout_min=600", "hydra.launcher.mem_gb=200",
                    "hydra.launcher.cpus_per_task=8", "hydra.launcher.setup=[module load cuda]")
    assert gpu["_target_"] == "hydra_plugins.alpacare_launcher.SlurmLauncher"
    assert (gpu["tasks_per_node"], gpu["gpus_per_node"], gpu["nodes"]) == (4, 4, 2)
    assert (gpu["partition"], gpu["account"], gpu["timeout_min"], gpu["mem_gb"], gpu["cpus_per_task"], gpu["setup"]) == \
        ("gpu", "lab", 600, 200, 8, ["module load cuda"])
    assert gpu["max_num_timeout"] > 0  # a job at its time limit is requeued, not dropped
    assert "--kill-on-bad-exit=1" in gpu["srun_args"]  # a failed rank ends its job's other ranks
    cpu = _launcher("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2")
    assert (cpu["tasks_per_node"], cpu["gpus_per_node"], cpu["nodes"]) == (2, None, 1)
    assert _launcher("trainer.devices=[0,1,2]")["tasks_per_node"] == 3


def test_slurm_preset_refuses_devices_auto_in_one_line(tmp_path):
    # Refused while the launcher's config resolves, before anything is submitted (no cluster needed).
    proc = run_cli(["-m", "hydra/launcher=slurm", "trainer=ddp", "stages=[report]", f"hydra.sweep.dir={tmp_path / 's'}"],
                   tmp_path, timeout=120)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert "trainer.devices=auto: SLURM needs a count of devices per node; set trainer.devices=N" in lines[0]
    assert not (tmp_path / "s" / ".submitit").exists()


DEDUP = [{"instruction": "Explain what myasthenia gravis is and how it is treated."},
         {"instruction": "Explain what myasthenia gravis is and its treatment."},
         {"instruction": "List three warning signs of a stroke."}]


def test_sweep_through_submitit_local(tmp_path):
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in DEDUP))
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", "hydra/launcher=submitit_local", "stages=[dedup]", f"dedup.input={data}",
                    "dedup.threshold=0.5,0.95", "logger=none", f"hydra.sweep.dir={sweep}"], tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/dedup/stats.json"))]
    assert [(s["threshold"], s["kept"]) for s in stats] == [(0.5, 2), (0.95, 3)]
    assert list(sweep.glob(".submitit/*/*_result.pkl"))  # the jobs ran under submitit


# -- on the real cluster ------------------------------------------------------------------------------


def _sweep(cluster, tmp_path: Path, args: list[str], sweep: Path, timeout: float = 600, wait=None, **env: str):
    """``alpacare -m hydra/launcher=slurm ...`` as a user types it; the jobs inherit this environment
    (sbatch's default --export=ALL: the same python, PYTHONPATH and caches). ``wait(proc)``, if
    given, runs while the command does."""
    cmd = [sys.executable, "-m", "alpacare", "-m", "hydra/launcher=slurm", *args, "logger=none",
           f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=${hydra.job.num}"]
    out, err = tmp_path / "alpacare.out", tmp_path / "alpacare.err"  # files: nothing blocks on a full pipe
    with open(out, "w") as stdout, open(err, "w") as stderr, \
            subprocess.Popen(cmd, cwd=REPO, env=cli_env(tmp_path, **cluster.env, **env), stdout=stdout,
                             stderr=stderr, text=True) as proc:
        try:
            if wait is not None:
                wait(proc)
            proc.wait(timeout=timeout)
        except BaseException:
            proc.kill()
            raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out.read_text(), err.read_text())


def _release_when_requeued(cluster, sweep: Path):
    """SLURM holds a requeued job for two minutes (its BeginTime: requeue + 120 s); release it at once,
    as `scontrol update StartTime=now` would by hand, so the test does not sit out the hold."""
    def wait(proc: subprocess.Popen) -> None:
        deadline = time.monotonic() + 600  # then _sweep's own timeout applies
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(1)
            try:
                job = _job_id(sweep)
            except (OSError, ValueError):  # not submitted yet
                continue
            info = cluster.run("scontrol", "show", "job", job, check=False)
            if "JobState=PENDING" in info and "Reason=BeginTime" in info:
                cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now")
    return wait


def _logs(sweep: Path) -> str:
    return "\n".join(f"== {p}\n" + p.read_text(errors="replace") for p in sorted(sweep.glob(".submitit/*/*_log.*")))


def _hook(tmp_path: Path, code: str) -> str:
    """PYTHONPATH with a sitecustomize.py that every process of the jobs imports first."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(code)
    return os.pathsep.join([str(hook), str(REPO), os.environ.get("PYTHONPATH", "")])


def _alpacare_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("alpacare:")]


@pytest.mark.slow
def test_dedup_sweep_on_slurm_reports_a_bad_value_in_one_line(slurm_cluster, tmp_path):
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in DEDUP))
    sweep = tmp_path / "sweep"
    started = time.perf_counter()
    proc = _sweep(slurm_cluster, tmp_path, ["stages=[dedup]", f"dedup.input={data}", "dedup.threshold=0.5,0.95,1.5"],
                  sweep)
    seconds = time.perf_counter() - started
    stats = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/dedup/stats.json"))]
    assert [(s["threshold"], s["kept"]) for s in stats] == [(0.5, 2), (0.95, 3)], proc.stderr[-3000:] + _logs(sweep)

    # The third job's bad value: one line naming the job, the rank, the error and the log; no traceback.
    assert proc.returncode != 0
    lines = _alpacare_lines(proc.stderr)
    assert len(lines) == 1 and "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert re.search(r"job #2 \(dedup\.threshold=1\.5; SLURM job \d+_2\) failed on rank 0: "
                     r"dedup\.threshold: must be in \[0, 1\], got 1\.5 \(log: (\S+)\)$", lines[0]), lines[0]
    assert Path(re.search(r"\(log: (\S+)\)$", lines[0]).group(1)).is_file()
    states = sorted(j["State"] for j in _ended_jobs(slurm_cluster, sweep))
    assert states == ["COMPLETED", "COMPLETED", "FAILED"]
    print(f"dedup sweep on SLURM: {seconds:.1f}s (cluster up in {slurm_cluster.up_seconds:.1f}s)")


def _ended_jobs(cluster, sweep: Path, timeout: float = 120) -> list[dict[str, str]]:
    """sacct's records of the sweep's jobs once none is running (its results can be in while the job
    is still completing)."""
    job = _job_id(sweep)
    deadline = time.monotonic() + timeout
    while True:
        records = [j for j in cluster.jobs() if j["JobID"].split("_")[0] == job]
        if all(j["State"] not in ("PENDING", "RUNNING", "COMPLETING", "REQUEUED") for j in records) \
                or time.monotonic() > deadline:
            return records
        time.sleep(1)


def _job_id(sweep: Path) -> str:
    """The SLURM job id of a sweep (its array; a one-job sweep is a plain job), from .submitit/ID[_INDEX]."""
    return min((p.name.split("_")[0] for p in (sweep / ".submitit").iterdir() if re.match(r"^\d+(_\d+)?$", p.name)),
               key=int)


@pytest.mark.slow
def test_ddp_job_from_an_empty_model_cache_converts_once_per_node(slurm_cluster, tmp_path):
    """Both ranks need the embedded model converted; before, both converted into the same cache dir at
    once and rank 0 died in safetensors (issue 25)."""
    data = write_records(tmp_path / "d.json", RECORDS)  # 8 examples, 4 per step: 2 steps
    cache = tmp_path / "empty-cache"
    sweep = tmp_path / "sweep"
    started = time.perf_counter()
    proc = _sweep(slurm_cluster, tmp_path, ["stages=[train]", f"train.data={data}", f"cache_dir={cache}", *COMMON,
                                            "tuning.lora_r=4", *DDP_CPU], sweep)
    seconds = time.perf_counter() - started
    logs = _logs(sweep)
    assert proc.returncode == 0, proc.stderr[-3000:] + logs[-6000:]
    stats = read_stats(sweep / "0")
    assert (stats["world_size"], stats["devices_per_node"], stats["steps"]) == (2, 2, 2)
    assert logs.count("converting ") == 1, logs[-6000:]  # one rank converted; the other waited and read it
    assert (cache / "models" / "smollm2_135m" / "config.json").is_file()
    assert not list((cache / "models").glob(".smollm2_135m.tmp-*"))
    print(f"DDP job from an empty cache on SLURM: {seconds:.1f}s")


# SLURM's signal before the time limit (sbatch --signal=USR2@signal_delay_s), sent the way slurmctld
# sends it, to every task of the job: rank 0 runs scancel at step 2 of the first attempt
# (SLURM_RESTART_COUNT is set once requeued).


@pytest.mark.slow
def test_time_limit_signal_checkpoints_requeues_and_resumes_to_the_same_weights(slurm_cluster, tmp_path, cache_dir,
                                                                                tiny_model_dir):
    data = write_records(tmp_path / "d.json", NINE * 2)  # 18 examples, 4 per step: 5 steps
    # No periodic checkpoint: the only one mid-run is the one the signal makes.
    args = [f"train.data={data}", f"model.path={tiny_model_dir}", f"cache_dir={cache_dir}", *COMMON, "tuning=full",
            "train.save_every_n_steps=100"]
    single = tmp_path / "single"
    run_train(train_cfg(data, cache_dir, *args[3:], model_dir=tiny_model_dir), single)

    sweep = tmp_path / "sweep"
    started = time.perf_counter()
    proc = _sweep(slurm_cluster, tmp_path, ["stages=[train]", *args, *DDP_CPU, "hydra.launcher.timeout_min=60"], sweep,
                  PYTHONPATH=_hook(tmp_path, USR2_AT_STEP_2), wait=_release_when_requeued(slurm_cluster, sweep))
    seconds = time.perf_counter() - started
    logs = _logs(sweep)
    assert proc.returncode == 0, proc.stderr[-3000:] + logs[-6000:]

    script = next(sweep.glob(".submitit/*/*_submission.sh")).read_text()
    assert "#SBATCH --ntasks-per-node=2" in script and "#SBATCH --nodes=1" in script and "--signal=USR2@120" in script
    job = _job_id(sweep)
    _ended_jobs(slurm_cluster, sweep)
    attempts = slurm_cluster.run("sacct", "-X", "-D", "-n", "--parsable2", "-o", "State", "-j", job).split()
    assert attempts == ["REQUEUED", "COMPLETED"], attempts  # requeued once, then done
    assert "checkpointed step 3" in logs and "Requeued job" in logs

    stats = read_stats(sweep / "0")
    assert (stats["world_size"], stats["devices_per_node"], stats["steps"]) == (2, 2, 5)
    assert stats["resumed_from"].endswith("last.ckpt")
    assert_same_weights(single / "train" / "model", sweep / "0" / "train" / "model")
    print(f"requeue on SLURM: {seconds:.1f}s")


# Rank 1 fails at step 2: killed with SIGKILL in sweep job 0, an exception in sweep job 1. It writes
# when, so the test can time how long the job's other rank lived on.
_RANK_1_FAILS_AT_STEP_2 = '''
import os, signal, time
if os.environ.get("SLURM_PROCID") == "1" and os.environ.get("ALPACARE_TEST_FAILURES"):
    import alpacare.training.module as _m
    _original = _m.InstructionTuner.on_train_batch_end

    def _fail(self, outputs, batch, batch_idx):
        _original(self, outputs, batch, batch_idx)
        if self.trainer.global_step == 2:
            how = "kill" if os.environ["SLURM_ARRAY_TASK_ID"] == "0" else "raise"
            with open(os.path.join(os.environ["ALPACARE_TEST_FAILURES"], how), "w") as f:
                f.write(str(time.time()))
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError("injected failure on rank 1 at step 2")
    _m.InstructionTuner.on_train_batch_end = _fail
'''


@pytest.mark.slow
def test_a_failed_rank_ends_its_job_within_two_minutes_in_one_line(slurm_cluster, tmp_path, cache_dir, tiny_model_dir):
    data = write_records(tmp_path / "d.json", NINE * 2)  # 5 steps; rank 1 fails at step 2
    failures = tmp_path / "failures"
    failures.mkdir()
    sweep = tmp_path / "sweep"
    started = time.perf_counter()
    proc = _sweep(slurm_cluster, tmp_path, ["stages=[train]", f"train.data={data}", f"model.path={tiny_model_dir}",
                                            f"cache_dir={cache_dir}", *COMMON, "tuning=full", *DDP_CPU,
                                            "train.seed=1,2"], sweep, timeout=420,
                  PYTHONPATH=_hook(tmp_path, _RANK_1_FAILS_AT_STEP_2), ALPACARE_TEST_FAILURES=str(failures))
    seconds = time.perf_counter() - started
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-5000:]
    lines = _alpacare_lines(proc.stderr)
    assert len(lines) == 2, proc.stderr[-5000:]
    killed, raised = lines
    assert re.search(r"job #0 \(train\.seed=1; SLURM job \d+_0\) failed on rank 1: .*Killed", killed), killed
    assert re.search(r"job #1 \(train\.seed=2; SLURM job \d+_1\) failed on rank 1: "
                     r"RuntimeError: injected failure on rank 1 at step 2 \(log: \S+_1_log\.err\)$", raised), raised

    # Each job ended (both ranks) within two minutes of its rank 1 failing, and failed.
    job = _job_id(sweep)
    ends = {j["JobID"]: j for j in _ended_jobs(slurm_cluster, sweep)}
    for index, how in ((0, "kill"), (1, "raise")):
        record = ends[f"{job}_{index}"]
        assert record["State"] == "FAILED", record
        failed_at = float((failures / how).read_text())
        ended = time.mktime(time.strptime(record["End"], "%Y-%m-%dT%H:%M:%S"))
        assert ended - failed_at < 120, (how, ended - failed_at)
        print(f"{how}: job ended {ended - failed_at:.0f}s after rank 1 failed")
    print(f"failed-ranks sweep on SLURM: {seconds:.1f}s")
