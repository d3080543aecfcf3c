"""What the train stage leaves behind besides checkpoints: the unsharded weights under FSDP and the
model card of the Hugging Face model dir."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as L
from omegaconf import DictConfig


def full_state_dict(trainer: L.Trainer, model) -> Optional[dict]:
    """The unsharded weights under FSDP, on rank 0 alone (every rank must call this; the others get
    an empty dict); None outside FSDP = ``model.state_dict()``.

    Gathered through the FSDP root (the wrapped LightningModule), not the inner model: parameters
    outside the wrapped decoder layers (embeddings, final norm, output layer) belong to the root's
    flat parameter, and the inner module alone would see them as this rank's shard. Only rank 0
    materializes the full weights (``rank0_only``; the other ranks hold one unit at a time while
    the gather goes through it), so no other rank ever holds a host copy of the model. The keys are
    the inner model's, as ``save_pretrained`` expects, each tied parameter once."""
    from alpacare.training.fsdp import fsdp_root, plain_name

    root = fsdp_root(trainer)
    if root is None:
        return None
    from torch.distributed.fsdp import FullyShardedDataParallel

    on_gpu = any(p.is_cuda for p in root.parameters())  # gathered to CPU from GPUs
    weights: dict = {}
    with FullyShardedDataParallel.summon_full_params(root, writeback=False, rank0_only=True, offload_to_cpu=on_gpu):
        if trainer.is_global_zero:
            copies: dict[int, Any] = {}
            for name, param in model.named_parameters(remove_duplicate=False):
                weights[plain_name(name)] = copies.setdefault(id(param), param.detach().clone())
            for module_name, module in model.named_modules():
                for name, buffer in module.named_buffers(recurse=False):
                    if buffer is not None and name not in module._non_persistent_buffers_set:
                        weights[plain_name(f"{module_name}.{name}")] = buffer.detach().clone()
    return weights


def model_card(cfg: DictConfig, *, base: str, data_path: Path, stats: dict[str, Any], hparams: dict[str, Any], merged: bool) -> str:
    adapter = cfg.tuning.method in ("lora", "qlora")
    rows = "\n".join(f"| {k} | {v} |" for k, v in hparams.items())
    metrics = "\n".join(
        f"| {k} | {v} |" for k, v in stats.items() if k in ("steps", "final_loss", "tokens", "tokens_per_s", "seconds", "peak_rss_gb")
    )
    load = (
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "model = AutoModelForCausalLM.from_pretrained(DIR)  # peft installed: base + this adapter\n"
        "tokenizer = AutoTokenizer.from_pretrained(DIR)"
    )
    return f"""---
base_model: {base}
library_name: {"peft" if adapter else "transformers"}
tags: [alpacare, medical, instruction-tuning, {cfg.tuning.method}]
---
# AlpaCare student: {cfg.model.name} ({cfg.tuning.method})

Instruction-tuned by the alpacare `train` stage, following AlpaCare (Zhang et al. 2023), which
tunes LLaMA-family models on MedInstruct with Stanford Alpaca's recipe.
{"This directory holds the LoRA adapter" + (" (base weights 4-bit NF4 during training)" if cfg.tuning.method == "qlora" else "") + "; merged weights are in ../model_merged." if adapter and merged else ("This directory holds the LoRA adapter." if adapter else "This directory holds the full weights.")}

- Base model: `{base}`
- Training data: `{data_path}`: {stats["examples"]} examples, {stats["truncated"]} truncated to {cfg.train.max_length} tokens, {stats["dropped"]} dropped (prompt alone too long), {stats["empty_outputs"]} dropped (empty output)
- Prompt: {"the Stanford Alpaca template (`alpacare/prompts/alpaca.py`); the response follows `### Response:` and ends with EOS." if cfg.train.get("template", "alpaca") == "alpaca" else "the tokenizer's own chat template (`train.template=chat`, `alpacare/prompts/chat.py`); the response ends with its end-of-turn token."}

## Hyperparameters

| name | value |
|---|---|
{rows}

## Metrics

| name | value |
|---|---|
{metrics}

## Use

```python
{load}
```
"""
