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
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, cli_env, run_cli
from tests.test_train_support import (  # noqa: F401  (fixtures)
    COMMON,
    run_cli_killed_at_step,
    NINE,
    assert_same_weights as _assert_same_weights,
    cache_dir,
    cli_train_args as _cli_args,
    free_port as _free_port,
    weights as _weights,
    read_stats,
    run_train,
    smollm_tokenizer_dir,
    tiny_model_dir,
    train_cfg,
    write_records,
)

DDP_CPU = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true"]
FULL = ["tuning=full"]


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


@pytest.mark.slow
def test_ddp_killed_with_sigkill_at_step_k_resumes_to_the_same_weights(tmp_path, cache_dir, tiny_model_dir):
    """LoRA with dropout: each rank's RNG stream must survive the resume, not only rank 0's."""
    data = write_records(tmp_path / "d.json", NINE * 2)  # 18 examples, 5 steps
    args = ["tuning.lora_r=4", "tuning.lora_dropout=0.1", "train.save_every_n_steps=1", *DDP_CPU, "logger=none"]
    straight = run_cli(_cli_args(data, cache_dir, tiny_model_dir, tmp_path / "straight", *args), tmp_path)
    assert straight.returncode == 0, straight.stderr[-3000:]

    killed = tmp_path / "killed"
    proc = run_cli_killed_at_step(_cli_args(data, cache_dir, tiny_model_dir, killed, *args), 2, tmp_path)
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
