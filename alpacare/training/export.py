"""What the train stage leaves behind besides checkpoints: the unsharded weights under FSDP and the
model card of the Hugging Face model dir."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as L
from omegaconf import DictConfig


def full_state_dict(trainer: L.Trainer, model) -> Optional[dict]:
    """The unsharded weights under FSDP (every rank must call this); None = model.state_dict().

    Taken from the FSDP root (the wrapped LightningModule), not from the inner model: parameters
    outside the wrapped decoder layers (embeddings, final norm, output layer) belong to the root's
    flat parameter, and the inner module alone would see them as this rank's shard. The keys are
    then those of the inner model (``model.`` prefix removed), as ``save_pretrained`` expects."""
    from lightning.pytorch.strategies import FSDPStrategy

    if not isinstance(trainer.strategy, FSDPStrategy):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    root = trainer.strategy.model
    # Gathered to CPU from GPUs; on CPU, offloading is a no-op that crashes torch 2.13's FSDP (SIGSEGV in clone).
    on_gpu = any(p.is_cuda for p in root.parameters())
    full = get_model_state_dict(root, options=StateDictOptions(full_state_dict=True, cpu_offload=on_gpu))
    prefix = next(name for name, child in trainer.lightning_module.named_children() if child is model) + "."
    weights = {k[len(prefix):]: v for k, v in full.items() if k.startswith(prefix)}
    return retie(weights, model)


def retie(weights: dict, model) -> dict:
    """Gathered, a tied parameter (input embeddings = output layer) comes back as two copies; make
    them one tensor again, so ``save_pretrained`` writes it once, as it does for the model itself."""
    first: dict[int, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        owner = first.setdefault(id(param), name)
        if owner != name and owner in weights and name in weights:
            weights[name] = weights[owner]
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
