"""SLURM jobs on several nodes: what the real single-node cluster of tests/test_slurm.py cannot
show, so it runs on stand-in SLURM commands (tests/fake_slurm.py: ``sbatch``, ``srun``, ``scancel``,
``scontrol requeue`` on one machine, each "node" a set of processes with its SLURM_NODEID).

The README's job script of your own (no submitit: ``srun python -m alpacare ...``) on two nodes of
one task each: the ranks find each other from SLURM's variables, and the time-limit signal makes
the train stage checkpoint and run ``scontrol requeue`` itself; the requeued job resumes to the
weights of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, cli_env
from tests.fake_slurm import install
from tests.test_train_support import (  # noqa: F401  (fixtures)
    COMMON,
    NINE,
    USR2_AT_STEP_2,
    assert_same_weights,
    cache_dir,
    read_stats,
    run_train,
    smollm_tokenizer_dir,
    tiny_model_dir,
    train_cfg,
    write_records,
)

# Stands in for SLURM's `--signal=USR2@120` at the time limit: rank 0 asks scancel to signal every
# task of the job at step 2 of the first attempt (SLURM_RESTART_COUNT is set once requeued).


def _wait_until_done(slurm_dir: Path, timeout: float = 900) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        jobs = [json.loads(p.read_text()) for p in (slurm_dir / "jobs").glob("*.json")]
        if (jobs and all(j["state"] not in ("PENDING", "RUNNING") for j in jobs)) or time.monotonic() > deadline:
            return jobs
        time.sleep(1)


@pytest.mark.slow
def test_own_job_script_on_two_nodes_checkpoints_requeues_and_resumes(tmp_path, cache_dir, tiny_model_dir):
    data = write_records(tmp_path / "d.json", NINE * 2)  # 18 examples, 4 per step: 5 steps
    args = [*COMMON, "tuning=full", "train.save_every_n_steps=100"]  # the only mid-run checkpoint: the signal's
    single = tmp_path / "single"
    run_train(train_cfg(data, cache_dir, *args, model_dir=tiny_model_dir), single)

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(USR2_AT_STEP_2)
    run_dir = tmp_path / "run"
    overrides = " ".join(["stages=[train]", f"train.data={data}", f"model.path={tiny_model_dir}", f"cache_dir={cache_dir}",
                          *args, "logger=none", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=1",
                          "trainer.num_nodes=2", "trainer.precision=32-true", f"hydra.run.dir={run_dir}"])
    script = tmp_path / "train.sbatch"
    script.write_text(f"""#!/bin/bash
#SBATCH --job-name=alpacare-train
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --signal=USR2@120
#SBATCH --output={tmp_path}/slurm-%j.out
srun --kill-on-bad-exit=1 {sys.executable} -m alpacare {overrides}
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

    stats = read_stats(run_dir)
    assert (stats["world_size"], stats["num_nodes"], stats["devices_per_node"], stats["steps"]) == (2, 2, 1, 5)
    assert stats["resumed_from"].endswith("last.ckpt")
    assert_same_weights(single / "train" / "model", run_dir / "train" / "model")
