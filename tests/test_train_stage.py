"""The train stage end to end: outputs, reproducibility, resume, bad input, and real training.

Fast tests train a tiny random LLaMA for a few steps (seconds). Slow tests train the embedded
SmolLM2-135M: it must learn to answer a training question verbatim and stop at EOS; QLoRA and
full tuning must run; and a CLI run killed with kill -9 must resume to the same final step.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
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

from alpacare.errors import ConfigError, DataError
from alpacare.prompts.alpaca import format_prompt

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


@pytest.fixture
def data(tmp_path) -> Path:
    return write_records(tmp_path / "train.json")


def _no_pickles(model_dir: Path) -> None:
    files = [p.name for p in model_dir.iterdir()]
    assert not [f for f in files if f.endswith(PICKLE_SUFFIXES)], files
    assert any(f.endswith(".safetensors") for f in files), files


# -- loss --------------------------------------------------------------------------------------


@pytest.mark.parametrize("tuning", ["full", "lora"])
@pytest.mark.parametrize("packed", [False, True])
def test_response_loss_equals_the_models_own_loss_and_gradients(cache_dir, tiny_model_dir, tuning, packed):
    """The chunked response-only loss is the labels= loss of transformers, value and gradients."""
    from alpacare.training import models
    from alpacare.training.data import LOSS_CHUNK_TOKENS, collate_rows, response_loss, tokenize_examples

    cfg = train_cfg(Path("unused.json"), cache_dir, f"tuning={tuning}", "tuning.lora_r=4", model_dir=tiny_model_dir)
    tokenizer = models.load_tokenizer(cfg.model, cfg.cache_dir)
    torch.manual_seed(0)
    model = models.load_model(cfg.model, cfg.tuning, cfg.cache_dir, tokenizer=tokenizer).train()
    for module in model.modules():  # dropout off: both passes must see the same network
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    examples, _ = tokenize_examples(RECORDS * 8, tokenizer, 128)
    rows = [examples[:3], examples[3:6]] if packed else [[e] for e in examples]
    batch = collate_rows(rows, tokenizer.pad_token_id)
    learned = int((batch["labels"][:, 1:] != -100).sum())
    assert packed or learned > LOSS_CHUNK_TOKENS, "the batch should span several loss chunks"

    def loss_and_grads(fn):
        model.zero_grad()
        loss = fn()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    ours, ours_grads = loss_and_grads(lambda: response_loss(model, batch))
    theirs, their_grads = loss_and_grads(lambda: model(
        input_ids=batch["input_ids"], labels=batch["labels"], attention_mask=batch.get("attention_mask"),
        position_ids=batch.get("position_ids"), use_cache=False).loss)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    for name, grad in their_grads.items():
        torch.testing.assert_close(ours_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


# -- outputs -----------------------------------------------------------------------------------


def test_full_tuning_writes_a_loadable_model_dir_card_and_stats(tmp_path, data, cache_dir, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = train_cfg(data, cache_dir, "tuning=full", "train.max_steps=3", "train.save_every_n_steps=2",
                    model_dir=tiny_model_dir)
    summary = run_train(cfg, tmp_path / "run")
    out = tmp_path / "run" / "train"
    assert summary["steps"] == 3 and summary["examples"] == len(RECORDS)
    stats = read_stats(tmp_path / "run")
    assert set(stats) >= {"examples", "truncated", "steps", "tokens", "tokens_per_s", "final_loss", "seconds", "peak_rss_gb"}
    assert stats["tokens"] > 0 and stats["tokens_per_s"] > 0 and stats["final_loss"] > 0
    _no_pickles(out / "model")
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    assert tokenizer.pad_token_id != tokenizer.eos_token_id == model.generation_config.eos_token_id
    card = (out / "model" / "README.md").read_text()
    assert f"base_model: {tiny_model_dir}" in card and "| lr | 2e-05 |" in card and "final_loss" in card
    # Saved every 2 steps and at the end (step 3): resume starts from the final state.
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 3
    assert not list(out.glob(".model.tmp-*"))


def test_lora_writes_an_adapter_that_loads_and_merges(tmp_path, data, cache_dir, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    cfg = train_cfg(data, cache_dir, "train.max_steps=2", "tuning.merge_adapter=true", "tuning.lora_r=4",
                    "train.lr=1e-2", model_dir=tiny_model_dir)
    run_train(cfg, tmp_path / "run")
    out = tmp_path / "run" / "train"
    assert (out / "model" / "adapter_config.json").is_file() and not (out / "model" / "config.json").exists()
    _no_pickles(out / "model")
    _no_pickles(out / "model_merged")
    ids = torch.tensor([[1, 200, 300, 400]])
    with torch.no_grad():
        adapted = AutoModelForCausalLM.from_pretrained(out / "model")(ids).logits  # peft: base + adapter
        merged = AutoModelForCausalLM.from_pretrained(out / "model_merged")(ids).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)(ids).logits
    torch.testing.assert_close(adapted, merged, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(adapted, base, atol=1e-4)  # the adapter learned something
    # The checkpoint holds the adapter and optimizer state, not a copy of the frozen base.
    state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert state and all("lora_" in k for k in state)


def test_adapter_with_an_added_pad_token_is_refused(tmp_path, data, cache_dir, tiny_model_dir):
    """A new token means resized embeddings, which an adapter dir cannot bring to the base."""
    cfg = train_cfg(data, cache_dir, "model.pad_token='[PAD]'", "train.max_steps=1", model_dir=tiny_model_dir)
    with pytest.raises(ConfigError, match=r"model.pad_token=\[PAD\]: adds a token"):
        run_train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "train" / "model").exists()


def test_long_examples_are_reported_in_stats(tmp_path, cache_dir, tiny_model_dir):
    records = RECORDS + [{"instruction": "Explain sepsis.", "input": "", "output": "Sepsis is an emergency. " * 60}]
    cfg = train_cfg(write_records(tmp_path / "d.json", records), cache_dir, "train.max_steps=1",
                    model_dir=tiny_model_dir)
    summary = run_train(cfg, tmp_path / "run")
    assert summary["truncated"] == 1 and read_stats(tmp_path / "run")["truncated"] == 1


# -- reproducibility and resume ----------------------------------------------------------------


def test_same_seed_repeats_exactly_on_cpu(tmp_path, data, cache_dir, tiny_model_dir):
    # LoRA dropout on, so the check covers the RNG stream and not just the data order.
    args = ("train.max_steps=3", "tuning.lora_dropout=0.1", "train.lr=1e-3")
    losses = [run_train(train_cfg(data, cache_dir, *args, model_dir=tiny_model_dir), tmp_path / f"r{i}")["final_loss"]
              for i in range(2)]
    other = run_train(train_cfg(data, cache_dir, *args, "train.seed=1", model_dir=tiny_model_dir), tmp_path / "r2")
    assert losses[0] == losses[1]
    assert other["final_loss"] != losses[0]


class Crash(Exception):
    """Stands in for kill -9 in-process: the run dies right after a checkpoint."""


@pytest.mark.parametrize("packing", [False, True])
def test_resume_continues_with_the_same_step_schedule_and_data(tmp_path, data, cache_dir, tiny_model_dir, packing,
                                                               monkeypatch):
    from alpacare.training.module import InstructionTuner

    # micro 2, effective 4: a checkpoint every step lands mid-epoch; dropout exercises the saved RNG.
    args = ["train.lr=1e-3", "tuning.lora_dropout=0.1", "train.save_every_n_steps=1", f"train.packing={packing}",
            "train.max_length=96", "train.max_steps=5"]
    if packing:
        args += ["train.micro_batch_size=1", "train.effective_batch_size=2"]
    cfg = train_cfg(data, cache_dir, *args, model_dir=tiny_model_dir)
    straight = run_train(cfg, tmp_path / "a")

    def crash_after_step_3(self, outputs, batch, batch_idx):  # runs after ModelCheckpoint's hook
        if self.trainer.global_step == 3:
            raise Crash
    with monkeypatch.context() as patch:
        patch.setattr(InstructionTuner, "on_train_batch_end", crash_after_step_3, raising=False)
        with pytest.raises(Crash):
            run_train(cfg, tmp_path / "b")
    assert torch.load(tmp_path / "b/train/checkpoints/last.ckpt", weights_only=False)["global_step"] == 3
    resumed = run_train(cfg, tmp_path / "b")
    assert read_stats(tmp_path / "b")["resumed_from"].endswith("last.ckpt")
    assert resumed["steps"] == straight["steps"] == 5
    assert resumed["final_loss"] == pytest.approx(straight["final_loss"], rel=1e-5)


def test_resume_refuses_a_checkpoint_from_other_data(tmp_path, data, cache_dir, tiny_model_dir):
    run_train(train_cfg(data, cache_dir, "train.max_steps=1", model_dir=tiny_model_dir), tmp_path / "run")
    other = write_records(tmp_path / "other.json", RECORDS[:4])
    with pytest.raises(ConfigError, match=r"train.resume: the checkpoint was made with other settings \(train.data: sha256:"):
        run_train(train_cfg(other, cache_dir, "train.max_steps=2", model_dir=tiny_model_dir), tmp_path / "run")
    fresh = run_train(train_cfg(other, cache_dir, "train.max_steps=2", "train.resume=never", model_dir=tiny_model_dir),
                      tmp_path / "run")
    assert fresh["steps"] == 2


# -- bad input ---------------------------------------------------------------------------------


def test_bad_input_raises_one_clear_error(tmp_path, cache_dir, tiny_model_dir):
    empty = write_records(tmp_path / "empty.json", [])
    with pytest.raises(DataError, match="empty.json: no training examples"):
        run_train(train_cfg(empty, cache_dir, model_dir=tiny_model_dir), tmp_path / "run")
    data = write_records(tmp_path / "d.json")
    with pytest.raises(ConfigError, match="model.path=/nowhere/model: not found locally"):
        run_train(train_cfg(data, cache_dir, "model.path=/nowhere/model"), tmp_path / "run")
    with pytest.raises(DataError, match="no input"):
        run_train(compose_without_data(cache_dir), tmp_path / "run2")
    with pytest.raises(ConfigError, match=r"^trainer: "):
        run_train(train_cfg(data, cache_dir, "trainer=gpu", model_dir=tiny_model_dir), tmp_path / "run3")


def compose_without_data(cache_dir):
    from tests.test_train_support import compose

    return compose([f"cache_dir={cache_dir}", "logger=none"])


def _assert_one_line_error(proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode != 0, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "%|" not in ln]
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0] and "Traceback" not in proc.stderr, lines[0]


@pytest.mark.slow
def test_cli_bad_input_exits_non_zero_with_one_line(tmp_path, cache_dir, tiny_model_dir):
    base = ["stages=[train]", "logger=none", f"cache_dir={cache_dir}", f"hydra.run.dir={tmp_path / 'run'}"]
    records = [dict(r) for r in RECORDS]
    del records[2]["output"]
    cases = [
        ([f"train.data={write_records(tmp_path / 'empty.json', [])}", f"model.path={tiny_model_dir}"],
         "empty.json: no training examples"),
        ([f"train.data={write_records(tmp_path / 'bad.json', records)}", f"model.path={tiny_model_dir}"],
         "bad.json: record 3 is missing the field 'output'"),
        ([f"train.data={write_records(tmp_path / 'ok.json')}", "model.path=/nowhere/llama"],
         "model.path=/nowhere/llama: not found locally"),
        ([f"train.data={write_records(tmp_path / 'ok.json')}", "model.path=meta-llama/Llama-2-7b-hf"],
         "model.path=meta-llama/Llama-2-7b-hf: not found locally and the hub is offline"),
    ]
    for args, needle in cases:
        _assert_one_line_error(run_cli(base + args, tmp_path), needle)


# -- the embedded model ------------------------------------------------------------------------

MEMORIZE = RECORDS[:2]


@pytest.mark.slow
def test_embedded_model_learns_a_response_verbatim_and_stops(tmp_path, cache_dir):
    """Full tuning (converges in fewer steps than LoRA here) on two examples, then greedy decoding."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = write_records(tmp_path / "mem.json", MEMORIZE)
    cfg = train_cfg(data, cache_dir, "tuning=full", "train.lr=1e-4", "train.lr_scheduler=constant",
                    "train.warmup_ratio=0", "train.epochs=100", "train.max_steps=8", "train.effective_batch_size=2",
                    "train.save_every_n_steps=100")
    summary = run_train(cfg, tmp_path / "run")
    assert summary["final_loss"] < 0.05
    model_dir = tmp_path / "run" / "train" / "model"
    model, tokenizer = AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    for record in MEMORIZE:
        prompt = tokenizer(format_prompt(record["instruction"], record["input"]), return_tensors="pt").input_ids
        out = model.generate(prompt, max_new_tokens=48, do_sample=False)[0, prompt.shape[1]:]
        assert out[-1] == tokenizer.eos_token_id  # stopped by itself
        assert tokenizer.decode(out[:-1]) == record["output"]


@pytest.mark.slow
def test_embedded_qlora_smoke(tmp_path, data, cache_dir):
    from transformers import AutoModelForCausalLM

    cfg = train_cfg(data, cache_dir, "tuning=qlora", "train.max_steps=2", "train.max_length=64", "tuning.lora_r=8",
                    "tuning.merge_adapter=true")
    summary = run_train(cfg, tmp_path / "run")
    assert summary["steps"] == 2 and summary["final_loss"] > 0
    out = tmp_path / "run" / "train"
    _no_pickles(out / "model")
    assert json.loads((out / "model" / "adapter_config.json").read_text())["r"] == 8
    AutoModelForCausalLM.from_pretrained(out / "model_merged")


@pytest.mark.slow
def test_cli_resume_after_kill_9_ends_at_the_same_step(tmp_path, cache_dir):
    data = write_records(tmp_path / "train.json", RECORDS * 2)
    args = ["stages=[train]", f"train.data={data}", "logger=none", f"cache_dir={cache_dir}",
            "train.max_length=96", "train.micro_batch_size=2", "train.effective_batch_size=2",
            "train.max_steps=10", "train.save_every_n_steps=2", "tuning.lora_r=8", "trainer.enable_progress_bar=false"]

    straight = run_cli(args + [f"hydra.run.dir={tmp_path / 'straight'}"], tmp_path)
    assert straight.returncode == 0, straight.stderr

    run_dir = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "alpacare", *args, f"hydra.run.dir={run_dir}"], cwd=REPO,
                            env=cli_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = run_dir / "train" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert checkpoint.exists() and not (run_dir / "train" / "model").exists(), "killed too late to test resume"
    killed_at = torch.load(checkpoint, weights_only=False)["global_step"]
    assert 0 < killed_at < 10

    resumed = run_cli(args + [f"hydra.run.dir={run_dir}", "train.resume=auto"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    a, b = read_stats(tmp_path / "straight"), read_stats(run_dir)
    assert b["resumed_from"] and a["steps"] == b["steps"] == 10
    assert b["final_loss"] == pytest.approx(a["final_loss"], rel=1e-4)
