"""Train: what the issue "trustworthy data and training" asked of it (fast tests, tiny models):
joint tokenization on a SentencePiece LLaMA tokenizer, empty outputs, max_steps over epochs, resume
refusing changed settings, frozen-base dtype, the loss across gradient accumulation, FSDP saving."""

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

from alpacare.errors import ConfigError
from alpacare.prompts.alpaca import format_prompt

# -- 5. tokenization of the training pair ------------------------------------------------------


@pytest.fixture(scope="module")
def sentencepiece_llama(tmp_path_factory):
    """A LLaMA-style SentencePiece BPE tokenizer (byte fallback, "▁" word-initial pieces, <s> added),
    trained offline on a few sentences: what LLaMA-1/2 use, at toy size."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("sp-llama")
    text = [format_prompt(r["instruction"], r["input"]) + r["output"] for r in RECORDS] * 10
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_prefix=str(out / "tokenizer"), vocab_size=400,
                                   model_type="bpe", unk_id=0, bos_id=1, eos_id=2, pad_id=-1, byte_fallback=True,
                                   character_coverage=1.0, minloglevel=2)
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True, "add_eos_token": False, "legacy": True}))
    tokenizer = AutoTokenizer.from_pretrained(out)
    tokenizer.pad_token = tokenizer.unk_token
    return tokenizer


def test_labels_and_the_inference_prompt_line_up_token_for_token_on_sentencepiece(sentencepiece_llama):
    from alpacare.training.data import tokenize_examples

    tok = sentencepiece_llama
    records = [{"instruction": "What is HbA1c?", "input": "", "output": "The average glucose of three months."},
               {"instruction": "Classify the triage urgency.", "input": "Chest pain for 20 minutes.",
                "output": "Emergency: call an ambulance now."}]
    examples, stats = tokenize_examples(records, tok, 512)
    assert stats.boundary_merged == 0
    for record, example in zip(records, examples):
        prompt = format_prompt(record["instruction"], record["input"])
        inference = tok(prompt)["input_ids"]  # what predict feeds the model
        ids = example.input_ids.tolist()
        assert ids[: example.prompt_length] == inference
        # The labels are the tokens that follow the prompt in the pair, as Alpaca's train.py has them.
        assert ids == tok(prompt + record["output"])["input_ids"] + [tok.eos_token_id]
        first = tok.convert_ids_to_tokens(ids[example.prompt_length])
        alone = tok.convert_ids_to_tokens(tok(record["output"], add_special_tokens=False)["input_ids"][0])
        assert alone.startswith("▁") and not first.startswith("▁")  # separately it would be "▁The"
        assert tok.decode(ids[example.prompt_length:-1]) == record["output"]


# -- 8 and 9. empty outputs; max_steps overrides the epochs ------------------------------------


def test_empty_outputs_are_dropped_and_counted_and_max_steps_overrides_epochs(tmp_path, cache_dir, tiny_model_dir):
    records = RECORDS[:2] + [{"instruction": "Say nothing.", "input": "", "output": "  "}]
    data = write_records(tmp_path / "d.json", records)
    # Two examples, micro-batch 2, batch 2: one step per epoch; 3 epochs but max_steps=5.
    cfg = train_cfg(data, cache_dir, "train.max_steps=5", "train.epochs=3", "train.effective_batch_size=2",
                    "train.save_every_n_steps=100", model_dir=tiny_model_dir)
    summary = run_train(cfg, tmp_path / "run")
    stats = read_stats(tmp_path / "run")
    assert summary["steps"] == 5 and stats["steps"] == 5
    assert stats["examples"] == 2 and stats["empty_outputs"] == 1
    assert "1 dropped (empty output)" in (tmp_path / "run" / "train" / "model" / "README.md").read_text()


# -- 10. resume refuses changed settings --------------------------------------------------------


def test_resume_names_the_changed_setting_and_continues_only_when_asked(tmp_path, data_file, cache_dir, tiny_model_dir):
    run_train(train_cfg(data_file, cache_dir, "train.max_steps=1", model_dir=tiny_model_dir), tmp_path / "run")
    changed = ("train.max_steps=2", "train.lr=1e-3", "tuning.lora_r=8")
    with pytest.raises(ConfigError) as e:
        run_train(train_cfg(data_file, cache_dir, *changed, model_dir=tiny_model_dir), tmp_path / "run")
    message = str(e.value)
    assert "\n" not in message and message.startswith("train.resume: the checkpoint was made with other settings")
    assert "train.lr: 0.0002 -> 0.001" in message and "tuning.lora_r: 64 -> 8" in message
    assert "train.max_steps: 1 -> 2" in message and "hydra.run.dir" in message
    assert "train.allow_changed_settings=true" in message
    # Deliberately: continues from the checkpoint (step 1) to step 2.
    summary = run_train(train_cfg(data_file, cache_dir, "train.max_steps=2", "train.lr=1e-3",
                                  "train.allow_changed_settings=true", model_dir=tiny_model_dir), tmp_path / "run")
    assert summary["steps"] == 2 and read_stats(tmp_path / "run")["resumed_from"]


@pytest.fixture
def data_file(tmp_path) -> Path:
    return write_records(tmp_path / "train.json")


def test_data_stage_work_logs_refuse_other_teacher_settings(tmp_path):
    from tests.conftest import run_cli, teacher_args
    from tests.openai_server import OpenAITestServer

    run_dir = tmp_path / "run"
    with OpenAITestServer() as server:
        base = [*teacher_args(server), "stages=[instructions]", "instructions.tasks_per_request=4", "logger=none",
                f"hydra.run.dir={run_dir}"]
        assert run_cli([*base, "instructions.count=4"], tmp_path).returncode == 0
        proc = run_cli([*base, "instructions.count=8", "teacher.model=other-teacher", "instructions.temperature=0.7"],
                       tmp_path)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "%|" not in ln]
        assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert "teacher.model: test-teacher -> other-teacher" in lines[0]
        assert "instructions.temperature: 1.0 -> 0.7" in lines[0]
        assert "instructions.allow_changed_settings=true" in lines[0] and "hydra.run.dir" in lines[0]
        sent = len(server.state.requests)
        proc = run_cli([*base, "instructions.count=8", "teacher.model=other-teacher", "instructions.temperature=0.7",
                        "instructions.allow_changed_settings=true"], tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert len(server.state.requests) == sent + 1
    recorded = json.loads((run_dir / "instructions" / "settings.json").read_text())
    assert recorded["settings"]["teacher.model"] == "other-teacher"
    assert recorded["earlier"][0]["teacher.model"] == "test-teacher"


# -- 15. the frozen base in the trainer's precision --------------------------------------------


def test_lora_and_qlora_bases_load_and_merge_in_the_trainer_precision(tmp_path, data_file, cache_dir, tiny_model_dir):
    from safetensors import safe_open

    from alpacare.training import models

    assert models.frozen_base_dtype("lora", "bf16-mixed") == torch.bfloat16
    assert models.frozen_base_dtype("qlora", "bf16-true") == torch.bfloat16
    assert models.frozen_base_dtype("lora", "16-mixed") == torch.float16
    assert models.frozen_base_dtype("lora", "32-true") == torch.float32
    assert models.frozen_base_dtype("full", "bf16-mixed") == torch.float32  # master weights stay fp32

    cfg = train_cfg(data_file, cache_dir, "trainer.precision=bf16-mixed", "tuning.lora_r=4", "train.max_steps=1",
                    "tuning.merge_adapter=true", model_dir=tiny_model_dir)
    tokenizer = models.load_tokenizer(cfg.model, cfg.cache_dir)
    model = models.load_model(cfg.model, cfg.tuning, cfg.cache_dir, tokenizer=tokenizer, precision="bf16-mixed")
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert {d for n, d in dtypes.items() if "lora_" not in n} == {torch.bfloat16}  # frozen base
    assert {d for n, d in dtypes.items() if "lora_" in n} == {torch.float32}  # trained adapter

    run_train(cfg, tmp_path / "run")  # a bf16-mixed LoRA step on CPU, then the merge
    merged = tmp_path / "run" / "train" / "model_merged"
    with safe_open(str(next(merged.glob("*.safetensors"))), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}


# -- 16. the loss across gradient accumulation -------------------------------------------------


def test_accumulated_gradient_is_the_mean_over_every_response_token_of_the_step(cache_dir, tiny_model_dir):
    """Two micro-batches of very different answer lengths, accumulated as Lightning does (each
    training_step's value divided by the accumulation), give the gradient of one batch holding both:
    the token mean over the whole step, whatever the batching."""
    from alpacare.training import models
    from alpacare.training.data import ExampleRows, ResumableBatchSampler, collate_rows, learned_tokens, response_loss, step_loss
    from alpacare.training.data import tokenize_examples

    cfg = train_cfg(Path("unused.json"), cache_dir, "tuning=full", model_dir=tiny_model_dir)
    tokenizer = models.load_tokenizer(cfg.model, cfg.cache_dir)
    model = models.load_model(cfg.model, cfg.tuning, cfg.cache_dir, tokenizer=tokenizer).train()
    long = {"instruction": "Explain.", "input": "", "output": "Sepsis is a medical emergency. " * 12}
    short = {"instruction": "Yes or no?", "input": "", "output": "No."}
    examples, _ = tokenize_examples([long, short], tokenizer, 256)
    sampler = ResumableBatchSampler([len(e) for e in examples], 1, group_by_length=False,
                                    learned=[learned_tokens(e) for e in examples], accumulate=2)
    rows = ExampleRows(examples)
    micro = [collate_rows([rows[row] for row in batch], tokenizer.pad_token_id) for batch in sampler]
    assert len(micro) == 2 and micro[0]["step_tokens"] == micro[1]["step_tokens"] == sum(map(learned_tokens, examples))

    def grads(loss_fn):
        model.zero_grad()
        loss_fn()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    def accumulated():
        for batch in micro:  # Lightning: loss / accumulate_grad_batches, backward, no step yet
            (step_loss(response_loss(model, batch, reduction="sum"), batch["step_tokens"], 2, 1) / 2).backward()

    ours = grads(accumulated)
    whole = collate_rows([[examples[0], ], [examples[1]]], tokenizer.pad_token_id)
    reference = grads(lambda: response_loss(model, whole).backward())
    for name, grad in reference.items():
        torch.testing.assert_close(ours[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    # What it replaces: the mean of the two micro-batch means weights the short answer's 2 tokens
    # like the long answer's ~80, a different gradient.
    old = grads(lambda: [(response_loss(model, b) / 2).backward() for b in micro])
    assert not all(torch.allclose(old[n], g, rtol=1e-3, atol=1e-6) for n, g in reference.items())
