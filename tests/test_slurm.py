"""Issue 17: sweeps on SLURM through hydra-submitit-launcher.

- the ``hydra/launcher=slurm`` preset: tasks and GPUs per node follow ``trainer.devices``, nodes
  follow ``trainer.num_nodes``; ``trainer.devices=auto`` is one clear line;
- a sweep through ``hydra/launcher=submitit_local`` (the task function pickled into real jobs);
- with stand-in ``sbatch``/``srun``/``sacct``/``squeue``/``scancel``/``scontrol`` on PATH
  (tests/fake_slurm.py runs the job script submitit generates, with SLURM's variables), a job with two
  tasks trains with two ranks, and SLURM's time-limit signal makes it checkpoint, requeue and resume to
  the weights of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, cli_env, run_cli
from tests.fake_slurm import install
from tests.test_train_distributed import COMMON, NINE, _assert_same_weights, _weights
from tests.test_train_support import (  # noqa: F401  (fixtures)
    cache_dir,
    read_stats,
    run_train,
    smollm_tokenizer_dir,
    tiny_model_dir,
    train_cfg,
    write_records,
)


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
    assert gpu["_target_"].endswith("SlurmLauncher")
    assert (gpu["tasks_per_node"], gpu["gpus_per_node"], gpu["nodes"]) == (4, 4, 2)
    assert (gpu["partition"], gpu["account"], gpu["timeout_min"], gpu["mem_gb"], gpu["cpus_per_task"], gpu["setup"]) == \
        ("gpu", "lab", 600, 200, 8, ["module load cuda"])
    assert gpu["max_num_timeout"] > 0  # a job at its time limit is requeued, not dropped
    cpu = _launcher("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2")
    assert (cpu["tasks_per_node"], cpu["gpus_per_node"], cpu["nodes"]) == (2, None, 1)
    assert _launcher("trainer.devices=[0,1,2]")["tasks_per_node"] == 3


def test_slurm_preset_refuses_devices_auto_in_one_line(tmp_path):
    proc = run_cli(["-m", "hydra/launcher=slurm", "trainer=ddp", "stages=[report]", f"hydra.sweep.dir={tmp_path / 's'}"],
                   tmp_path, timeout=120, PATH=f"{install(tmp_path / 'bin')}{os.pathsep}{os.environ['PATH']}",
                   FAKE_SLURM_DIR=str(tmp_path / "slurm"))
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert "trainer.devices=auto: SLURM needs a count of devices per node; set trainer.devices=N" in lines[0]
    assert not (tmp_path / "slurm" / "jobs").exists() or not list((tmp_path / "slurm" / "jobs").iterdir())


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


# Stands in for SLURM's `--signal=USR2@120` at the time limit: rank 0 asks scancel to signal every
# task of the job at step 2 of the first attempt (SLURM_RESTART_COUNT is set once requeued).
_SIGNAL_AT_STEP_2 = '''
import os, subprocess
if os.environ.get("SLURM_JOB_ID") and not os.environ.get("SLURM_RESTART_COUNT"):
    import alpacare.training.module as _m

    def _time_limit(self, outputs, batch, batch_idx):
        if self.trainer.global_step == 2 and self.trainer.is_global_zero and not getattr(self, "_signalled", False):
            self._signalled = True
            subprocess.run(["scancel", "--signal=USR2", os.environ["SLURM_JOB_ID"]], check=True)
    _m.InstructionTuner.on_train_batch_end = _time_limit
'''


@pytest.mark.slow
def test_slurm_job_with_two_tasks_trains_two_ranks_and_resumes_after_requeue(tmp_path, cache_dir, tiny_model_dir):
    data = write_records(tmp_path / "d.json", NINE * 2)  # 18 examples, 4 per step: 5 steps
    # No periodic checkpoint: the only one mid-run is the one the signal makes.
    args = [f"train.data={data}", f"model.path={tiny_model_dir}", f"cache_dir={cache_dir}", *COMMON, "tuning=full",
            "train.save_every_n_steps=100"]
    single = tmp_path / "single"
    run_train(train_cfg(data, cache_dir, *args[3:], model_dir=tiny_model_dir), single)

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_SIGNAL_AT_STEP_2)
    env = cli_env(tmp_path, PATH=f"{install(tmp_path / 'bin')}{os.pathsep}{os.environ['PATH']}",
                  FAKE_SLURM_DIR=str(tmp_path / "slurm"),
                  PYTHONPATH=os.pathsep.join([str(hook), str(REPO), os.environ.get("PYTHONPATH", "")]))
    sweep = tmp_path / "sweep"
    # The README's SLURM command, with CPU DDP standing in for GPUs.
    cmd = [sys.executable, "-m", "alpacare", "-m", "hydra/launcher=slurm", "stages=[train]", *args, "logger=none",
           "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
           "hydra.launcher.timeout_min=60", f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=${hydra.job.num}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    logs = "\n".join(p.read_text(errors="replace") for p in sorted(sweep.glob(".submitit/*/*_log.*")))
    assert proc.returncode == 0, proc.stderr[-3000:] + logs[-5000:]

    script = next(sweep.glob(".submitit/*/*_submission.sh")).read_text()
    assert "#SBATCH --ntasks-per-node=2" in script and "#SBATCH --nodes=1" in script and "--signal=USR2@120" in script
    deadline = time.monotonic() + 60  # the results are in; the job script may still be exiting
    while True:
        jobs = [json.loads(p.read_text()) for p in (tmp_path / "slurm" / "jobs").glob("*.json")]
        if all(j["state"] != "RUNNING" for j in jobs) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert [(j["state"], j["restarts"]) for j in jobs] == [("COMPLETED", 1)]  # requeued once, then done
    assert "checkpointed step 3" in logs and "Requeued job" in logs

    _assert_resumed_two_rank_run(next(sweep.glob("*/train")).parent, single)


def _assert_resumed_two_rank_run(run_dir: Path, single: Path) -> None:
    stats = read_stats(run_dir)
    assert (stats["world_size"], stats["devices_per_node"], stats["steps"]) == (2, 2, 5)
    assert stats["resumed_from"].endswith("last.ckpt")
    _assert_same_weights(single / "train" / "model", run_dir / "train" / "model")


def _wait_until_done(slurm_dir: Path, timeout: float = 900) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        jobs = [json.loads(p.read_text()) for p in (slurm_dir / "jobs").glob("*.json")]
        if (jobs and all(j["state"] not in ("PENDING", "RUNNING") for j in jobs)) or time.monotonic() > deadline:
            return jobs
        time.sleep(1)


@pytest.mark.slow
def test_own_sbatch_script_with_srun_checkpoints_requeues_and_resumes(tmp_path, cache_dir, tiny_model_dir):
    """The README's job script of your own (no submitit): the train stage runs scontrol requeue itself."""
    data = write_records(tmp_path / "d.json", NINE * 2)
    args = [*COMMON, "tuning=full", "train.save_every_n_steps=100"]
    single = tmp_path / "single"
    run_train(train_cfg(data, cache_dir, *args, model_dir=tiny_model_dir), single)

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_SIGNAL_AT_STEP_2)
    run_dir = tmp_path / "run"
    overrides = " ".join(["stages=[train]", f"train.data={data}", f"model.path={tiny_model_dir}", f"cache_dir={cache_dir}",
                          *args, "logger=none", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                          "trainer.precision=32-true", f"hydra.run.dir={run_dir}"])
    script = tmp_path / "train.sbatch"
    script.write_text(f"""#!/bin/bash
#SBATCH --job-name=alpacare-train
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=2
#SBATCH --signal=USR2@120
#SBATCH --output={tmp_path}/slurm-%j.out
srun {sys.executable} -m alpacare {overrides}
""")
    slurm = tmp_path / "slurm"
    env = cli_env(tmp_path, PATH=f"{install(tmp_path / 'bin')}{os.pathsep}{os.environ['PATH']}", FAKE_SLURM_DIR=str(slurm),
                  PYTHONPATH=os.pathsep.join([str(hook), str(REPO), os.environ.get("PYTHONPATH", "")]))
    submitted = subprocess.run(["sbatch", str(script)], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert submitted.returncode == 0 and "Submitted batch job" in submitted.stdout, submitted.stderr
    jobs = _wait_until_done(slurm)
    log = "\n".join(p.read_text(errors="replace") for p in tmp_path.glob("slurm-*.out"))
    assert [(j["state"], j["restarts"]) for j in jobs] == [("COMPLETED", 1)], log[-5000:]
    assert "checkpointed step 3" in log and "requeued SLURM job" in log
    _assert_resumed_two_rank_run(run_dir, single)
