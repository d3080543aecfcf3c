"""Validation during training: the held-out split, val/loss every N steps and at the end (W&B
and metrics.jsonl), the best checkpoint, resume, and the config errors. Tiny random LLaMA (seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

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
from alpacare.training.data import split_validation

# LoRA dropout on: validation must not consume the random numbers that training uses.
ARGS = ["train.lr=1e-2", "tuning.lora_dropout=0.1", "train.max_length=96", "train.max_steps=5",
        "train.val_every_n_steps=2", "train.save_every_n_steps=1"]


def test_split_is_by_record_content_not_by_position():
    records = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(400)]
    train, val = split_validation(records, 0.25, seed=7)
    assert 60 < len(val) < 140 and len(train) + len(val) == 400
    # A record's side does not depend on the others: a shuffled subset splits the same way.
    subset = records[::3][::-1]
    sub_train, sub_val = split_validation(subset, 0.25, seed=7)
    assert sorted(r["instruction"] for r in sub_val) == sorted(r["instruction"] for r in val if r in subset)
    assert split_validation(records, 0.25, seed=8)[1] != val  # the seed picks another split


def test_val_loss_every_n_steps_and_at_the_end_best_checkpoint_and_same_training(tmp_path, cache_dir, tiny_model_dir):
    from alpacare.training import models
    from alpacare.training.data import collate_rows, response_loss, tokenize_examples

    data = write_records(tmp_path / "train.json", RECORDS)
    val = write_records(tmp_path / "val.json", RECORDS[:3])
    plain = run_train(train_cfg(data, cache_dir, *ARGS, "tuning=full", model_dir=tiny_model_dir), tmp_path / "plain")
    cfg = train_cfg(data, cache_dir, *ARGS, "tuning=full", f"train.val_data={val}", model_dir=tiny_model_dir)
    out = run_train(cfg, tmp_path / "run")
    assert out["final_loss"] == plain["final_loss"]  # validation left training untouched

    rows = [json.loads(line) for line in (tmp_path / "run/train/metrics.jsonl").read_text().splitlines()]
    val_rows = {r["step"]: r["val/loss"] for r in rows if "val/loss" in r}
    assert sorted(val_rows) == [2, 4, 5]  # every 2 steps and the last
    stats = read_stats(tmp_path / "run")
    assert stats["val_examples"] == 3 and stats["best_val_loss"] == round(min(val_rows.values()), 4)
    assert val_rows[stats["best_val_step"]] == min(val_rows.values())
    best = torch.load(tmp_path / "run/train/checkpoints/best.ckpt", weights_only=False)
    assert best["global_step"] == stats["best_val_step"]

    # The final val/loss is the response-token mean over the whole split, recomputed on model/.
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run/train/model").eval()
    tokenizer = models.load_tokenizer(cfg.model, cfg.cache_dir)
    examples, _ = tokenize_examples(RECORDS[:3], tokenizer, 96)
    with torch.no_grad():
        total = sum(float(response_loss(model, collate_rows([[e]], tokenizer.pad_token_id), "sum")) for e in examples)
    tokens = sum(int((e.labels[1:] != -100).sum()) for e in examples)
    assert val_rows[5] == pytest.approx(total / tokens, rel=1e-4)
    assert stats["val_loss"] == pytest.approx(total / tokens, abs=1e-4)


class Crash(Exception):
    pass


def test_resume_keeps_the_best_and_ends_the_same(tmp_path, cache_dir, tiny_model_dir, monkeypatch):
    from alpacare.training.module import InstructionTuner

    data = write_records(tmp_path / "train.json", RECORDS * 3)
    cfg = train_cfg(data, cache_dir, *ARGS, "train.val_fraction=0.3", model_dir=tiny_model_dir)
    straight = run_train(cfg, tmp_path / "a")

    def crash_after_step_3(self, outputs, batch, batch_idx):
        if self.trainer.global_step == 3:
            raise Crash
    with monkeypatch.context() as patch:
        patch.setattr(InstructionTuner, "on_train_batch_end", crash_after_step_3, raising=False)
        with pytest.raises(Crash):
            run_train(cfg, tmp_path / "b")
    resumed = run_train(cfg, tmp_path / "b")
    assert resumed["final_loss"] == pytest.approx(straight["final_loss"], rel=1e-5)
    a, b = read_stats(tmp_path / "a"), read_stats(tmp_path / "b")
    assert b["resumed_from"].endswith("last.ckpt")
    for key in ("val_examples", "best_val_step", "best_val_loss", "val_loss"):
        assert b[key] == pytest.approx(a[key], rel=1e-4), key
    assert a["examples"] + a["val_examples"] == a["records_in"] == len(RECORDS) * 3


def test_validation_config_errors(tmp_path, cache_dir, tiny_model_dir):
    from alpacare.config import validate
    from alpacare.stages.train import check

    data = write_records(tmp_path / "train.json", RECORDS)
    with pytest.raises(ConfigError, match="train.val_fraction: and train.val_data are mutually exclusive"):
        validate(train_cfg(data, cache_dir, "train.val_fraction=0.2", f"train.val_data={data}"))
    with pytest.raises(ConfigError, match=r"train.val_fraction: must be in \[0, 1\)"):
        validate(train_cfg(data, cache_dir, "train.val_fraction=1.0"))
    with pytest.raises(DataError, match="train.val_data=.*nope.json: no such file"):
        check(train_cfg(data, cache_dir, f"train.val_data={tmp_path / 'nope.json'}"))
    with pytest.raises(ConfigError, match="train.val_fraction=0.001: holds out 0 of the 8 records"):
        run_train(train_cfg(data, cache_dir, "train.val_fraction=0.001", model_dir=tiny_model_dir), tmp_path / "run")
    assert not (tmp_path / "run/train/checkpoints").exists()


def _wandb_records(log: Path) -> list[bytes]:
    """The protobuf records of an offline .wandb file (a LevelDB-style log: a 7-byte file header,
    32 KiB blocks, each chunk behind a 7-byte header: crc32, length, type FULL/FIRST/MIDDLE/LAST).
    wandb >= 0.2x no longer ships its Python reader (wandb.sdk.internal.datastore)."""
    import struct

    raw, block, records, pending = log.read_bytes(), 32768, [], b""
    pos = 7
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # the block's tail is too short for a header: padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += block - pos % block
            continue
        chunk, pos = raw[pos + 7:pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            records.append(pending)
    return records


def _wandb_history(run_dir: Path) -> list[dict]:
    """The history rows of the stage's offline W&B run, read back from its .wandb file."""
    from wandb.proto import wandb_internal_pb2 as pb

    import time

    (log,) = (run_dir / "wandb").glob("offline-run-*/*.wandb")
    # wandb's service process may still be writing after finish() returns: read until the exit record.
    for _ in range(50):
        records = [pb.Record.FromString(data) for data in _wandb_records(log)]
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            break
        time.sleep(0.2)
    rows = []
    for record in records:
        if record.WhichOneof("record_type") == "history":
            rows.append({item.nested_key[0] if item.nested_key else item.key: json.loads(item.value_json)
                         for item in record.history.item})
    return rows


def test_val_loss_reaches_the_offline_wandb_run_with_its_step(tmp_path, cache_dir, tiny_model_dir):
    data = write_records(tmp_path / "train.json", RECORDS)
    val = write_records(tmp_path / "val.json", RECORDS[:2])
    cfg = train_cfg(data, cache_dir, *ARGS, f"train.val_data={val}", "logger=wandb", "logger.mode=offline",
                    model_dir=tiny_model_dir)
    run_train(cfg, tmp_path / "run")
    history = _wandb_history(tmp_path / "run")
    logged = {r["trainer/global_step"]: r["val/loss"] for r in history if "val/loss" in r}
    rows = [json.loads(line) for line in (tmp_path / "run/train/metrics.jsonl").read_text().splitlines()]
    in_file = {r["step"]: r["val/loss"] for r in rows if "val/loss" in r}
    assert sorted(in_file) == [2, 4, 5]
    # Lightning labels the row of optimizer step s with trainer/global_step s - 1.
    assert {s + 1: round(v, 6) for s, v in logged.items()} == pytest.approx(in_file, abs=2e-6), history


def test_sample_answers_are_logged_as_a_wandb_table_without_changing_training(tmp_path, cache_dir, tiny_model_dir):
    data = write_records(tmp_path / "train.json", RECORDS)
    val = write_records(tmp_path / "val.json", RECORDS[:2])
    common = [*ARGS, f"train.val_data={val}", "logger=wandb", "logger.mode=offline", "train.sample_max_new_tokens=4"]
    plain = run_train(train_cfg(data, cache_dir, *common, model_dir=tiny_model_dir), tmp_path / "plain")
    out = run_train(train_cfg(data, cache_dir, *common, "train.sample_prompts=[What does HbA1c measure?]",
                              model_dir=tiny_model_dir), tmp_path / "run")
    assert out["final_loss"] == plain["final_loss"]
    tables = list((tmp_path / "run/wandb").glob("offline-run-*/files/media/table/val/samples_*.table.json"))
    last = max((json.loads(t.read_text()) for t in tables), key=lambda t: len(t["data"]))
    assert last["columns"] == ["step", "prompt", "output"]
    assert [row[:2] for row in last["data"]] == [[s, "What does HbA1c measure?"] for s in (2, 4, 5)]
    assert all(isinstance(row[2], str) for row in last["data"])
    from alpacare.config import validate
    with pytest.raises(ConfigError, match="train.sample_prompts: are generated at each validation"):
        validate(train_cfg(data, cache_dir, "train.sample_prompts=[hi]"))


def test_sample_answers_are_prompted_with_the_runs_template(tmp_path, cache_dir, tiny_model_dir, monkeypatch):
    """Issue 25 item 6: under train.template=chat the samples are asked as predict will ask the model."""
    import alpacare.evaluation.inference as inference
    from alpacare.prompts.chat import format_task
    from alpacare.training.models import load_tokenizer

    seen = []
    real_generate = inference.generate

    def recording_generate(im, prompts, *args, **kwargs):  # the real generation, prompts noted on the way
        seen.extend((im.template, p) for p in prompts)
        return real_generate(im, prompts, *args, **kwargs)

    monkeypatch.setattr(inference, "generate", recording_generate)
    data = write_records(tmp_path / "train.json", RECORDS)
    val = write_records(tmp_path / "val.json", RECORDS[:2])
    cfg = train_cfg(data, cache_dir, *ARGS, f"train.val_data={val}", "train.template=chat", "train.sample_max_new_tokens=2",
                    "train.sample_prompts=[What does HbA1c measure?]", model_dir=tiny_model_dir)
    run_train(cfg, tmp_path / "run")
    tokenizer = load_tokenizer(cfg.model, cache_dir)
    chat = format_task("chat", tokenizer, "What does HbA1c measure?")
    assert chat.startswith("<|im_start|>") and seen and set(seen) == {("chat", chat)}
