"""Unit tests for the train stage's data path: template, labels, EOS, pad, truncation, batching.

Each classic SFT pitfall has its own test: loss on prompt tokens, a missing EOS (the model never
learns to stop), pad == EOS (masking pads masks EOS too), silent truncation, packed examples that
attend to each other, and batches that waste most tokens on padding.
"""

from __future__ import annotations

import sys

import pytest
import torch
from tests.test_train_support import (  # noqa: F401  (fixtures)
    CONF_DIR,
    RECORDS,
    compose,
    smollm_tokenizer_dir,
    tiny_llama,
    tiny_model_dir,
    write_records,
)

from alpacare.errors import ConfigError, DataError
from alpacare.prompts.alpaca import PROMPT_NO_INPUT, PROMPT_WITH_INPUT, format_prompt
from alpacare.training.data import (
    IGNORE_INDEX,
    ExampleRows,
    ResumableBatchSampler,
    collate_rows,
    load_alpaca_records,
    pack_rows,
    tokenize_examples,
)


@pytest.fixture(scope="module")
def tokenizer(smollm_tokenizer_dir):
    from transformers import AutoTokenizer

    from alpacare.training.models import ensure_pad_token

    tok = AutoTokenizer.from_pretrained(smollm_tokenizer_dir)
    ensure_pad_token(tok)
    return tok


# -- template ----------------------------------------------------------------------------------


def test_template_without_input_is_alpacas_no_input_prompt():
    for no_input in ("", None, "<noinput>", "  <NoInput> "):
        assert format_prompt("List three symptoms of flu.", no_input) == PROMPT_NO_INPUT.format(
            instruction="List three symptoms of flu."
        )
    prompt = format_prompt("List three symptoms of flu.")
    assert prompt.startswith("Below is an instruction that describes a task. Write a response")
    assert "### Input:" not in prompt and prompt.endswith("### Response:")


def test_template_with_input_is_alpacas_input_prompt():
    prompt = format_prompt("Summarize.", "Cough for 3 weeks.")
    assert prompt == PROMPT_WITH_INPUT.format(instruction="Summarize.", input="Cough for 3 weeks.")
    assert "paired with an input that provides further context" in prompt
    assert "### Instruction:\nSummarize.\n\n### Input:\nCough for 3 weeks.\n\n### Response:" in prompt


# -- labels, EOS, pad --------------------------------------------------------------------------


def test_labels_ignore_the_prompt_and_keep_the_response(tokenizer):
    examples, _ = tokenize_examples(RECORDS[:1], tokenizer, max_length=512)
    example = examples[0]
    prompt_ids = tokenizer(format_prompt(RECORDS[0]["instruction"]))["input_ids"]
    response_ids = tokenizer(RECORDS[0]["output"], add_special_tokens=False)["input_ids"]
    assert example.prompt_length == len(prompt_ids)
    assert example.input_ids.tolist() == prompt_ids + response_ids + [tokenizer.eos_token_id]
    labels = collate_rows([[example]], tokenizer.pad_token_id)["labels"][0]
    assert (labels[: len(prompt_ids)] == IGNORE_INDEX).all()
    assert labels[len(prompt_ids):].tolist() == response_ids + [tokenizer.eos_token_id]
    assert tokenizer.decode(labels[len(prompt_ids):-1]) == RECORDS[0]["output"]


def test_eos_is_appended_to_every_response_and_learned(tokenizer):
    examples, _ = tokenize_examples(RECORDS, tokenizer, max_length=512)
    batch = collate_rows([[e] for e in examples], tokenizer.pad_token_id)
    for row, example in enumerate(examples):
        n = len(example)
        assert batch["input_ids"][row, n - 1] == tokenizer.eos_token_id
        assert batch["labels"][row, n - 1] == tokenizer.eos_token_id  # EOS is a target, not masked
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()  # padding is masked


def test_pad_token_differs_from_eos(smollm_tokenizer_dir, tokenizer):
    from transformers import AutoTokenizer

    shipped = AutoTokenizer.from_pretrained(smollm_tokenizer_dir)
    assert shipped.pad_token_id == shipped.eos_token_id  # SmolLM2 ships pad == eos: the pitfall
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.pad_token == tokenizer.unk_token  # reused: no new embedding row needed
    assert len(tokenizer) == len(shipped)
    # In a padded batch, pad positions hold the pad id, EOS positions keep their label.
    examples, _ = tokenize_examples(RECORDS[:2], tokenizer, max_length=512)
    batch = collate_rows([[e] for e in examples], tokenizer.pad_token_id)
    short = min(range(2), key=lambda i: len(examples[i]))
    tail = batch["input_ids"][short, len(examples[short]):]
    assert tail.numel() > 0 and (tail == tokenizer.pad_token_id).all()
    assert (batch["labels"] == tokenizer.eos_token_id).sum() == 2


def test_pad_token_added_and_embeddings_resized_without_unk(smollm_tokenizer_dir):
    from transformers import AutoTokenizer

    from alpacare.training.models import ALPACA_PAD_TOKEN, ensure_pad_token, match_tokenizer

    tok = AutoTokenizer.from_pretrained(smollm_tokenizer_dir)
    tok.unk_token = None
    ensure_pad_token(tok)
    assert tok.pad_token == ALPACA_PAD_TOKEN and tok.pad_token_id == len(tok) - 1
    model = tiny_llama(vocab_size=len(tok) - 1)
    match_tokenizer(model, tok)
    assert model.get_input_embeddings().num_embeddings == len(tok)
    assert model.config.pad_token_id == tok.pad_token_id != tok.eos_token_id


def test_explicit_alpaca_pad_token(smollm_tokenizer_dir):
    from transformers import AutoTokenizer

    from alpacare.training.models import ensure_pad_token

    tok = AutoTokenizer.from_pretrained(smollm_tokenizer_dir)
    ensure_pad_token(tok, "[PAD]")
    assert tok.pad_token == "[PAD]" and tok.pad_token_id != tok.eos_token_id
    with pytest.raises(ConfigError, match="model.pad_token"):
        ensure_pad_token(tok, tok.eos_token)


# -- truncation --------------------------------------------------------------------------------


def test_long_examples_are_truncated_and_counted(tokenizer):
    long = {"instruction": "Describe asthma.", "input": "", "output": "Asthma narrows the airways. " * 40}
    huge_prompt = {"instruction": "Read this. " * 100, "input": "", "output": "Done."}
    examples, stats = tokenize_examples([RECORDS[0], long, huge_prompt], tokenizer, max_length=64)
    assert stats.truncated == 2 and stats.dropped == 1 and stats.examples == 2
    assert all(len(e) <= 64 for e in examples)
    cut = examples[1]
    assert len(cut) == 64 and cut.input_ids[-1] != tokenizer.eos_token_id  # the cut tail has no EOS
    assert stats.tokens == sum(len(e) for e in examples)


# -- packing -----------------------------------------------------------------------------------


def test_packed_rows_restart_position_ids_per_example(tokenizer):
    examples, _ = tokenize_examples(RECORDS[:3], tokenizer, max_length=512)
    batch = collate_rows([examples[:2], examples[2:3]], tokenizer.pad_token_id)
    assert "attention_mask" not in batch  # it would switch off transformers' packed-sequence masking
    pos = batch["position_ids"]
    a, b = len(examples[0]), len(examples[1])
    assert pos[0, :a].tolist() == list(range(a))
    assert pos[0, a : a + b].tolist() == list(range(b))  # restarts at the boundary
    assert pos[1, 0] == 0 and pos[1, len(examples[2])] == 0  # the padding tail is its own sequence
    assert batch["labels"][0, a] == IGNORE_INDEX  # no target across the boundary (next prompt)
    assert batch["num_tokens"] == sum(len(e) for e in examples[:3])


def test_packing_never_lets_attention_cross_examples(tokenizer):
    """Logits of an example packed behind another equal its logits alone (up to float error)."""
    model = tiny_llama()
    examples, _ = tokenize_examples(RECORDS[:3], tokenizer, max_length=512)
    packed = collate_rows([examples], tokenizer.pad_token_id)
    with torch.no_grad():
        packed_logits = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False).logits
        start = 0
        for example in examples:
            alone = model(input_ids=example.input_ids[None], use_cache=False).logits[0]
            torch.testing.assert_close(packed_logits[0, start : start + len(example)], alone, atol=1e-4, rtol=1e-4)
            start += len(example)
        # And a right-padded batch matches too: padding is masked out.
        padded = collate_rows([[e] for e in examples], tokenizer.pad_token_id)
        padded_logits = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"], use_cache=False).logits
        for row, example in enumerate(examples):
            alone = model(input_ids=example.input_ids[None], use_cache=False).logits[0]
            torch.testing.assert_close(padded_logits[row, : len(example)], alone, atol=1e-4, rtol=1e-4)


def test_pack_rows_fills_rows_within_capacity():
    lengths = [500, 30, 260, 250, 12, 400, 90, 111, 1, 512, 75]
    rows = pack_rows(lengths, 512)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 512 for row in rows)
    assert len(rows) == 5  # sum = 2241 -> at least 5 rows of 512; best-fit-decreasing finds 5


# -- sampler: grouping, epochs, resume, ranks --------------------------------------------------


def _lengths(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(20, 1000, (n,), generator=g).tolist()


def _epoch(sampler, epoch):
    sampler.set_epoch(epoch)
    return list(sampler)


def _useful_fraction(batches, lengths):
    useful = sum(lengths[i] for batch in batches for row in batch for i in row)
    padded = sum(len(batch) * max(sum(lengths[i] for i in row) for row in batch) for batch in batches)
    return useful / padded


def test_length_grouping_cuts_padding_and_covers_every_example_once():
    lengths = _lengths()
    grouped = _epoch(ResumableBatchSampler(lengths, 4, seed=1, group_by_length=True), 0)
    random_ = _epoch(ResumableBatchSampler(lengths, 4, seed=1, group_by_length=False), 0)
    for batches in (grouped, random_):
        assert sorted(i for b in batches for row in b for i in row) == list(range(len(lengths)))
    assert _useful_fraction(grouped, lengths) > 0.95 > 0.8 > _useful_fraction(random_, lengths)
    # Grouped batches still come in random order, not longest-to-shortest.
    maxima = [max(lengths[row[0]] for row in b) for b in grouped]
    assert maxima != sorted(maxima, reverse=True)


def test_packed_batches_are_nearly_full():
    lengths = _lengths()
    sampler = ResumableBatchSampler(lengths, 4, seed=1, pack_to=1024)
    batches = _epoch(sampler, 0)
    assert sorted(i for b in batches for row in b for i in row) == list(range(len(lengths)))
    assert _useful_fraction(batches, lengths) > 0.9
    assert len(batches) < len(lengths) / 4  # fewer, fuller rows


def test_sampler_order_depends_on_seed_and_epoch_only():
    lengths = _lengths()
    a = ResumableBatchSampler(lengths, 4, seed=7)
    b = ResumableBatchSampler(lengths, 4, seed=7)
    assert _epoch(a, 0) == _epoch(b, 0)
    assert _epoch(a, 1) == _epoch(b, 1) != _epoch(a, 0)
    assert _epoch(ResumableBatchSampler(lengths, 4, seed=8), 0) != _epoch(a, 0)


def test_sampler_resumes_mid_epoch_at_the_same_batch():
    lengths = _lengths()
    full = _epoch(ResumableBatchSampler(lengths, 4, seed=3), 2)
    resumed = ResumableBatchSampler(lengths, 4, seed=3)
    resumed.resume_at(epoch=2, batches_done=11)
    assert _epoch(resumed, 2) == full[11:]
    assert _epoch(resumed, 3) == _epoch(ResumableBatchSampler(lengths, 4, seed=3), 3)  # only once


def _steps_by_rank(lengths, micro, world, accumulate, **kw):
    """Every rank's epoch regrouped by optimizer step: [step] -> rows of all ranks (placeholders apart)."""
    samplers = [ResumableBatchSampler(lengths, micro, seed=5, rank=r, world_size=world, accumulate=accumulate,
                                      learned=lengths, **kw) for r in range(world)]
    epochs = [_epoch(s, 0) for s in samplers]
    assert len({len(e) for e in epochs}) == 1 and len(epochs[0]) == len(samplers[0])  # same count on every rank
    full_steps = len(samplers[0].rows) // (micro * world * accumulate)
    steps: dict[int, list] = {}
    for k in range(len(epochs[0])):
        rows = [row for e in epochs for row in e[k]]
        assert len({row.step_tokens for row in rows}) == 1  # every micro-batch of a step knows its total
        steps.setdefault(min(k // accumulate, full_steps), []).extend(tuple(r) for r in rows if not r.masked)
    return list(steps.values())


@pytest.mark.parametrize("n", [203, 8, 5, 1])
@pytest.mark.parametrize("packed", [False, True])
def test_ranks_cover_every_example_once_and_steps_do_not_depend_on_the_world_size(n, packed):
    """Issue 17: the ranks' shards cover the set once per epoch, and an optimizer step trains on the
    same rows whether 1, 2 or 4 processes share it (micro x world x accumulation = 8 rows)."""
    lengths = [x // 4 for x in _lengths(n=n)] if packed else _lengths(n=n)
    kw = {"pack_to": 1024} if packed else {}
    reference = None
    for micro, world, accumulate in [(2, 1, 4), (2, 2, 2), (1, 4, 2), (2, 4, 1), (4, 2, 1), (8, 1, 1)]:
        steps = _steps_by_rank(lengths, micro, world, accumulate, **kw)
        assert sorted(i for step in steps for row in step for i in row) == list(range(n)), (micro, world, accumulate)
        as_sets = [sorted(step) for step in steps]
        reference = reference or as_sets
        assert as_sets == reference, (micro, world, accumulate)


def test_a_rank_without_rows_in_the_last_step_computes_a_placeholder_that_counts_zero():
    from alpacare.training.data import Example

    lengths = _lengths(n=9)  # 8 rows per step: the last step has 1 row for 4 ranks
    samplers = [ResumableBatchSampler(lengths, 1, seed=0, rank=r, world_size=4, accumulate=2, learned=lengths)
                for r in range(4)]
    last = [_epoch(s, 0)[-1] for s in samplers]
    assert [row.masked for b in last for row in b] == [False, True, True, True]
    assert {row.step_tokens for b in last for row in b} == {lengths[last[0][0][0]]}
    examples = [Example(torch.arange(1, lengths[i] % 50 + 3), 1) for i in range(9)]
    placeholder = collate_rows([ExampleRows(examples)[last[1][0]]], pad_token_id=0)
    real = collate_rows([ExampleRows(examples)[last[0][0]]], pad_token_id=0)
    assert placeholder["masked"] and placeholder["num_tokens"] == placeholder["num_examples"] == 0
    assert "masked" not in real and real["num_tokens"] > 0


def test_example_rows_dataset_returns_row_examples(tokenizer):
    examples, _ = tokenize_examples(RECORDS[:3], tokenizer, max_length=512)
    assert ExampleRows(examples)[(2, 0)] == [examples[2], examples[0]]


# -- bad input ---------------------------------------------------------------------------------


def test_empty_dataset_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match=r"empty\.json: no training examples"):
        load_alpaca_records(write_records(tmp_path / "empty.json", []))


@pytest.mark.parametrize("field", ["instruction", "output"])
def test_missing_field_names_the_file_and_record(tmp_path, field):
    records = [dict(r) for r in RECORDS[:3]]
    del records[1][field]
    with pytest.raises(DataError, match=rf"bad\.json: record 2 is missing the field '{field}'"):
        load_alpaca_records(write_records(tmp_path / "bad.json", records))


def test_non_string_output_is_a_data_error(tmp_path):
    records = [dict(RECORDS[0], output=["a", "list"])]
    with pytest.raises(DataError, match="record 1: 'output' must be a string"):
        load_alpaca_records(write_records(tmp_path / "bad.json", records))


def test_unknown_model_path_is_a_config_error(tmp_path, monkeypatch):
    from alpacare.training import models

    cfg = compose(["model.path=/no/such/model"])
    with pytest.raises(ConfigError, match=r"^model.path=/no/such/model: not found locally$"):
        models.resolve_model_path(cfg.model, tmp_path)
    monkeypatch.setattr(models, "hub_is_offline", lambda: True)
    cfg = compose(["model.path=nobody/no-such-model-xyz"])
    with pytest.raises(ConfigError, match="not found locally and the hub is offline"):
        models.resolve_model_path(cfg.model, tmp_path)


def test_qlora_without_bitsandbytes_is_a_config_error(monkeypatch):
    from alpacare.training.models import check_bitsandbytes_usable

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import bitsandbytes -> ImportError
    with pytest.raises(ConfigError, match="tuning=qlora: bitsandbytes 4-bit is not usable on cpu .*use tuning=lora"):
        check_bitsandbytes_usable("cpu")


# -- configs -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [[], ["experiment=paper_7b"], ["experiment=paper_13b"], ["experiment=smoke"], ["tuning=full"], ["tuning=qlora"],
     ["trainer=gpu"], ["trainer=ddp"], ["trainer=fsdp"], ["trainer=deepspeed"],
     ["experiment=llama31_70b_qlora"],
     *[[f"model={m}"] for m in ("llama_7b", "llama_13b", "llama2_7b", "llama2_13b", "llama3_8b",
                                "llama32_1b", "llama32_3b", "llama31_8b", "llama31_70b")]],
)
def test_presets_compose_and_validate(overrides):
    from alpacare.config import validate

    validate(compose(overrides))


def test_paper_presets_carry_the_paper_values():
    from alpacare.training.trainer import gradient_accumulation

    cfg = compose(["experiment=paper_7b"])
    assert (cfg.tuning.method, cfg.train.lr, cfg.train.epochs, cfg.train.max_steps) == ("full", 2e-5, 3, -1)
    assert (cfg.train.lr_scheduler, cfg.train.warmup_ratio, cfg.train.weight_decay) == ("cosine", 0.03, 0.0)
    assert (cfg.train.effective_batch_size, cfg.train.max_length, cfg.trainer.precision) == (128, 1024, "bf16-mixed")
    assert cfg.trainer.strategy._target_.endswith("FSDPStrategy") and cfg.model.fsdp_layer_cls == "LlamaDecoderLayer"
    assert gradient_accumulation(cfg.train, world_size=4) == 8  # Alpaca: 4 GPUs x 4 x 8 = 128
    cfg = compose(["experiment=paper_13b"])
    assert (cfg.train.lr, cfg.train.epochs, cfg.model.path) == (1e-5, 5, "huggyllama/llama-13b")


@pytest.mark.parametrize("name", ["llama32_1b", "llama32_3b", "llama31_8b", "llama31_70b"])
def test_llama3_presets_pad_with_the_reserved_pad_token(name):
    # Llama 3.x has no pad or unk token: without this, ensure_pad_token would add "[PAD]", a new
    # embedding row that a LoRA adapter cannot carry (load_model refuses it).
    cfg = compose([f"model={name}"])
    assert cfg.model.path.startswith("meta-llama/Llama-3.") and cfg.model.pad_token == "<|finetune_right_pad_id|>"


def test_llama31_70b_qlora_plan_fits_one_80gb_gpu():
    """The preset's settings (QLoRA, checkpointing, micro-batch 1 x 1024) against the memory estimate
    of benchmarks/memory_plan.py, on the model's real shape built on the meta device."""
    from benchmarks.memory_plan import plan  # the repo root is on sys.path (tests/ is a package)

    fitted = plan("70B", ["experiment=llama31_70b_qlora"])
    assert fitted["ckpt"] and 40 < fitted["per_gpu_GB"] < 0.95 * 80, fitted
    assert 70 < fitted["params_B"] < 72
    unfit = plan("70B, no checkpointing", ["experiment=llama31_70b_qlora", "train.gradient_checkpointing=false"])
    assert unfit["per_gpu_GB"] > 0.95 * 80, unfit


def test_every_config_file_says_what_it_is():
    for group in ("model", "tuning", "trainer", "experiment"):
        for path in (CONF_DIR / group).glob("*.yaml"):
            lines = [ln for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("# @package")]
            assert lines[0].startswith("# "), f"{path} has no leading comment"


def test_effective_batch_must_divide_evenly():
    from alpacare.training.trainer import expected_world_size, gradient_accumulation

    cfg = compose(["train.micro_batch_size=4", "train.effective_batch_size=8"])
    assert gradient_accumulation(cfg.train, 1) == 2
    with pytest.raises(ConfigError, match="train.effective_batch_size=8: must be a multiple"):
        gradient_accumulation(cfg.train, 3)
    assert expected_world_size(compose(["trainer.devices=2", "trainer.num_nodes=3"]).trainer) == 6
