"""Issue 25: every FSDP path trains through Lightning's own FSDPStrategy, on two CPU processes (gloo).

``trainer=fsdp trainer.accelerator=cpu trainer.devices=2`` is Lightning's strategy with only the device
placement changed (alpacare/training/fsdp.py), started by Lightning's own launcher through the real CLI:

- full fine-tuning with the preset's gradient clipping ends with the weights (and logs the total
  gradient norm) of one process; rank 1 never holds the weights (meta device, rank 0's broadcast in);
- LoRA on a bf16 base and QLoRA (4-bit stored as bf16) under ``bf16-mixed``, with validation loss,
  sample answers and ``best.ckpt``; the exported adapter equals the weights the checkpoint holds;
- kill -9 of every rank at step 2 and a resume end with the weights of an uninterrupted run, from a
  sharded checkpoint that is written whole or not at all;
- ``experiment=paper_7b`` and ``paper_13b`` on the embedded model train two steps, otherwise unchanged.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch

from tests.conftest import run_cli
from tests.test_train_support import (  # noqa: F401  (fixtures)
    COMMON,
    NINE,
    assert_same_weights,
    cache_dir,
    cli_train_args,
    read_stats,
    run_cli_killed_at_step,
    run_train,
    smollm_tokenizer_dir,
    tiny_model_dir,
    train_cfg,
    weights,
    write_records,
)

FSDP_CPU = ["trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=2"]
# A clip that binds at every step of this data, so a wrong (per-shard) norm would change the weights.
FULL_FP32_CLIPPED = ["tuning=full", "trainer.precision=32-true", "trainer.gradient_clip_val=0.05"]


@pytest.fixture
def nine(tmp_path) -> Path:
    return write_records(tmp_path / "nine.json", NINE)


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "train" / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_fsdp_full_with_clipping_equals_one_process_and_rank_1_never_loads(tmp_path, nine, cache_dir, tiny_model_dir):
    single = tmp_path / "single"
    run_train(train_cfg(nine, cache_dir, *COMMON, *FULL_FP32_CLIPPED, model_dir=tiny_model_dir), single)

    sharded = tmp_path / "fsdp"
    proc = run_cli(cli_train_args(nine, cache_dir, tiny_model_dir, sharded, *FULL_FP32_CLIPPED, *FSDP_CPU, "logger=none"),
                   tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 1 builds the model on the meta device" in proc.stderr + proc.stdout

    # Same weights, tied embeddings written once, as save_pretrained writes them for one process.
    assert_same_weights(single / "train" / "model", sharded / "train" / "model")
    assert "lm_head.weight" not in weights(sharded / "train" / "model")
    # The norm clipped to is the total over both shards: what one process computes.
    one, two = _metrics(single), _metrics(sharded)
    assert [m["step"] for m in two] == [1, 2, 3]
    for a, b in zip(one, two):
        assert b["train/grad_norm"] == pytest.approx(a["train/grad_norm"], rel=1e-4)
        assert a["train/grad_norm"] > 0.05  # the clip was active
    assert read_stats(sharded)["world_size"] == 2
    # The sharded checkpoint is a directory Lightning reads back, and no partial one is left.
    assert (sharded / "train" / "checkpoints" / "last.ckpt" / "meta.pt").is_file()
    assert not [p for p in (sharded / "train" / "checkpoints").iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_fsdp_lora_and_qlora_under_bf16_mixed_validate_sample_and_export(tmp_path, nine, cache_dir, tiny_model_dir):
    from safetensors.torch import load_file

    validation = ["train.val_fraction=0.3", "train.val_every_n_steps=1", "train.sample_prompts=[What is HbA1c?]",
                  "train.template=chat", "logger=wandb"]
    for method in ("lora", "qlora"):
        run = tmp_path / method
        proc = run_cli(cli_train_args(nine, cache_dir, tiny_model_dir, run, f"tuning={method}", *FSDP_CPU, *validation),
                       tmp_path)
        assert proc.returncode == 0, f"{method}: {proc.stderr[-3000:]}"
        assert "bf16-mixed" in (run / "train" / "model" / "README.md").read_text()
        stats = read_stats(run)
        assert stats["best_val_step"] in (1, 2) and (run / "train" / "checkpoints" / "best.ckpt" / "meta.pt").is_file()
        assert all("val/loss" in m for m in _metrics(run))
        # The exported adapter holds the trained values: the final checkpoint's, gathered from both shards.
        adapter = load_file(run / "train" / "model" / "adapter_model.safetensors")
        assert adapter and all(k.endswith(("lora_A.weight", "lora_B.weight")) for k in adapter)
        assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k), f"{method}: lora_B never trained"
        assert all(v.dtype == torch.float32 for v in adapter.values())
        # W&B holds the sample answers, prompted with the chat template.
        records = b"".join(p.read_bytes() for p in (run / "wandb").rglob("*.wandb"))
        assert b"val/samples" in records


@pytest.mark.slow
def test_fsdp_killed_with_sigkill_at_step_2_resumes_to_the_same_weights(tmp_path, cache_dir, tiny_model_dir):
    data = write_records(tmp_path / "d.json", NINE * 2)  # 18 examples, 5 steps
    args = [*FULL_FP32_CLIPPED, "train.save_every_n_steps=1", *FSDP_CPU, "logger=none"]
    straight = run_cli(cli_train_args(data, cache_dir, tiny_model_dir, tmp_path / "straight", *args), tmp_path)
    assert straight.returncode == 0, straight.stderr[-3000:]

    killed = tmp_path / "killed"
    proc = run_cli_killed_at_step(cli_train_args(data, cache_dir, tiny_model_dir, killed, *args), 2, tmp_path)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    checkpoint = killed / "train" / "checkpoints" / "last.ckpt"
    assert torch.load(checkpoint / "meta.pt", weights_only=False)["global_step"] == 2
    assert not (killed / "train" / "model").exists()

    resumed = run_cli(cli_train_args(data, cache_dir, tiny_model_dir, killed, *args), tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert read_stats(killed)["resumed_from"].endswith("last.ckpt")
    assert read_stats(killed)["steps"] == read_stats(tmp_path / "straight")["steps"] == 5
    assert_same_weights(tmp_path / "straight" / "train" / "model", killed / "train" / "model", rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["paper_7b", "paper_13b"])
def test_paper_presets_train_two_steps_on_two_cpu_processes(tmp_path, experiment, nine, cache_dir):
    run = tmp_path / experiment
    proc = run_cli(["stages=[train]", f"experiment={experiment}", "model=smollm2_135m", "trainer.accelerator=cpu",
                    "trainer.devices=2", "train.max_steps=2", f"train.data={nine}", f"cache_dir={cache_dir}",
                    f"hydra.run.dir={run}", "logger=none", "trainer.enable_progress_bar=false"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = read_stats(run)
    assert (stats["steps"], stats["world_size"]) == (2, 2)
    card = (run / "train" / "model" / "README.md").read_text()
    assert "| precision | bf16-mixed |" in card and "| effective_batch_size | 128 |" in card
    assert all(m["train/grad_norm"] > 0 for m in _metrics(run))
