"""Issue 17: multi-process training proven on CPU (gloo), through the real CLI.

- two-process DDP (``trainer=ddp trainer.accelerator=cpu trainer.devices=2``, Lightning starts the
  second process) ends with the weights of one process accumulating over the same global batches;
- only rank 0 writes the model dir, stats, metrics, W&B runs, the invocation log and the report,
  and ``train/stats.json`` records the world size;
- kill -9 of every rank at step k, then a resume, ends with the weights of an uninterrupted run;
- the README's torchrun recipes (one node with two processes; two "nodes" of one process each on
  127.0.0.1) train the same weights.

The tiny random LLaMA of tests/test_train_support.py keeps each run to seconds. The data has 9
examples and the effective batch is 4, so the last optimizer step holds one example: with two
ranks, one of them computes a placeholder that counts zero (training/data.py).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, cli_env, run_cli
from tests.test_train_support import (  # noqa: F401  (fixtures)
    RECORDS,
    cache_dir,
    read_stats,
    run_train,
    smollm_tokenizer_dir,
    tiny_model_dir,
    train_cfg,
    write_records,
)

NINE = RECORDS + [{"instruction": "What is a normal body temperature?", "input": "",
                   "output": "About 37 degrees Celsius, varying by a few tenths over the day."}]
# Full tuning in fp32, 9 examples, 1 per micro-batch, 4 per step: 3 steps (4, 4, 1 examples).
COMMON = ["train.max_length=128", "train.micro_batch_size=1", "train.effective_batch_size=4", "train.epochs=1", "train.max_steps=-1",
          "train.lr=1e-3", "train.lr_scheduler=constant", "train.warmup_ratio=0", "trainer.enable_progress_bar=false"]
DDP_CPU = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true"]
FULL = ["tuning=full"]


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(model_dir.glob("*.safetensors"))
    assert files, f"no weights in {model_dir}"
    return {k: v for f in files for k, v in load_file(f).items()}


def _assert_same_weights(a: Path, b: Path, rtol=1e-5, atol=1e-5) -> None:
    """Equal within fp32 rounding. The sums over ranks run in another order than one process's
    accumulation; AdamW's first steps, m / (sqrt(v) + eps), turn that rounding on a near-zero gradient
    into a few 1e-6 on a weight, against updates of ~lr (1e-3) on every weight."""
    wa, wb = _weights(a), _weights(b)
    assert sorted(wa) == sorted(wb)
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=rtol, atol=atol, msg=name)


def _cli_args(data: Path, cache_dir: Path, model_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    return ["stages=[train]", f"train.data={data}", f"model.path={model_dir}", f"cache_dir={cache_dir}",
            f"hydra.run.dir={run_dir}", *COMMON, *extra]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def nine(tmp_path) -> Path:
    return write_records(tmp_path / "nine.json", NINE)


@pytest.mark.slow
def test_two_process_ddp_equals_one_process_and_only_rank_0_writes(tmp_path, nine, cache_dir, tiny_model_dir):
    # One process, accumulating 4 micro-batches per step (in-process, logger off).
    single = tmp_path / "single"
    run_train(train_cfg(nine, cache_dir, *COMMON, *FULL, model_dir=tiny_model_dir), single)

    # Two processes started by Lightning, 2 micro-batches each per step, W&B on (offline).
    ddp = tmp_path / "ddp"
    proc = run_cli(_cli_args(nine, cache_dir, tiny_model_dir, ddp, *FULL, *DDP_CPU, "logger=wandb"), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]

    _assert_same_weights(single / "train" / "model", ddp / "train" / "model")
    trained = _weights(ddp / "train" / "model")
    base = _weights(tiny_model_dir)
    assert any(not torch.equal(trained[k], base[k]) for k in base), "training changed nothing"

    stats = read_stats(ddp)
    assert (stats["world_size"], stats["num_nodes"], stats["devices_per_node"]) == (2, 1, 2)
    assert read_stats(single)["world_size"] == 1
    assert stats["steps"] == read_stats(single)["steps"] == 3
    # All ranks' tokens: the same data as the single process saw (one epoch, every example once).
    assert stats["tokens"] == read_stats(single)["tokens"] == stats["tokens_in_data"]

    # Rank 0 alone writes: one metrics line per step, one invocation, one W&B run, one summary.
    steps = [json.loads(line)["step"] for line in (ddp / "train" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    assert len((ddp / "invocations.jsonl").read_text().splitlines()) == 1
    assert len(list((ddp / "wandb").glob("offline-run-*"))) == 1
    assert proc.stdout.count("alpacare: outputs in") == 1
    assert not [p for p in ddp.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]


_KILLER = '''
import os, signal
_step = os.environ.get("ALPACARE_TEST_KILL_AT_STEP")
if _step:
    import alpacare.training.module as _m

    def _kill_after_checkpoint(self, outputs, batch, batch_idx):  # runs after ModelCheckpoint's hook
        if self.trainer.global_step == int(_step) and self.trainer.is_global_zero:
            os.killpg(os.getpgrp(), signal.SIGKILL)  # kill -9 of every rank at once
    _m.InstructionTuner.on_train_batch_end = _kill_after_checkpoint
'''


@pytest.mark.slow
def test_ddp_killed_with_sigkill_at_step_k_resumes_to_the_same_weights(tmp_path, cache_dir, tiny_model_dir):
    """LoRA with dropout: each rank's RNG stream must survive the resume, not only rank 0's."""
    data = write_records(tmp_path / "d.json", NINE * 2)  # 18 examples, 5 steps
    args = ["tuning.lora_r=4", "tuning.lora_dropout=0.1", "train.save_every_n_steps=1", *DDP_CPU, "logger=none"]
    straight = run_cli(_cli_args(data, cache_dir, tiny_model_dir, tmp_path / "straight", *args), tmp_path)
    assert straight.returncode == 0, straight.stderr[-3000:]

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_KILLER)
    killed = tmp_path / "killed"
    env = cli_env(tmp_path, ALPACARE_TEST_KILL_AT_STEP="2",
                  PYTHONPATH=os.pathsep.join([str(hook), str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "alpacare", *_cli_args(data, cache_dir, tiny_model_dir, killed, *args)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600, start_new_session=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert torch.load(killed / "train/checkpoints/last.ckpt", weights_only=False)["global_step"] == 2
    assert not (killed / "train" / "model").exists()

    resumed = run_cli(_cli_args(data, cache_dir, tiny_model_dir, killed, *args), tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert read_stats(killed)["resumed_from"].endswith("last.ckpt")
    assert read_stats(killed)["steps"] == read_stats(tmp_path / "straight")["steps"] == 5
    _assert_same_weights(tmp_path / "straight" / "train" / "model", killed / "train" / "model", rtol=0, atol=0)


def _torchrun(nnodes: int, node_rank: int, nproc: int, port: int, args: list[str], tmp_path: Path) -> subprocess.Popen:
    # The README's recipe: torchrun --nnodes=N --nproc-per-node=G ... -m alpacare stages=[train] ...
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nnodes}", f"--node-rank={node_rank}",
           f"--nproc-per-node={nproc}", "--master-addr=127.0.0.1", f"--master-port={port}", "-m", "alpacare", *args]
    return subprocess.Popen(cmd, cwd=REPO, env=cli_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


@pytest.mark.slow
def test_readme_torchrun_recipes_on_cpu_train_what_one_process_trains(tmp_path, nine, cache_dir, tiny_model_dir):
    single = tmp_path / "single"
    run_train(train_cfg(nine, cache_dir, *COMMON, *FULL, model_dir=tiny_model_dir), single)

    # One node, two processes.
    one_node = tmp_path / "one_node"
    args = _cli_args(nine, cache_dir, tiny_model_dir, one_node, *FULL, "trainer=ddp", "trainer.accelerator=cpu",
                     "trainer.devices=2", "trainer.precision=32-true", "logger=none")
    proc = _torchrun(1, 0, 2, _free_port(), args, tmp_path)
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out[-3000:]
    _assert_same_weights(single / "train" / "model", one_node / "train" / "model")

    # Two nodes of one process each, on one shared run dir (here both on 127.0.0.1).
    two_nodes = tmp_path / "two_nodes"
    args = _cli_args(nine, cache_dir, tiny_model_dir, two_nodes, *FULL, "trainer=ddp", "trainer.accelerator=cpu",
                     "trainer.devices=1", "trainer.num_nodes=2", "trainer.precision=32-true", "logger=none")
    port = _free_port()
    nodes = [_torchrun(2, rank, 1, port, args, tmp_path) for rank in (0, 1)]
    outs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [n.returncode for n in nodes] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    stats = read_stats(two_nodes)
    assert (stats["world_size"], stats["num_nodes"], stats["devices_per_node"]) == (2, 2, 1)
    _assert_same_weights(single / "train" / "model", two_nodes / "train" / "model")
