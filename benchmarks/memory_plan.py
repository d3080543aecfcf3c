"""Will a training preset fit? Peak GPU memory per device, estimated from the real model shape.

Each row composes the real Hydra config (model preset, tuning, trainer, experiment), builds the
model's architecture on the meta device (no weights, no hub: the dimensions below are the models'
published config.json values) and wraps it with the project's own LoRA config
(``alpacare.training.models.lora_config``), so parameter counts are exact. Bytes then follow what
the train stage does:

- full: fp32 master weights (``frozen_base_dtype``), fp32 grads, AdamW's two fp32 moments (16 B/param);
- LoRA: the frozen base in the trainer's precision, the adapter as full (16 B/param);
- QLoRA: every decoder linear in NF4 (0.5 B/param) plus double-quantized absmax (8-bit per 64
  weights, fp32 per 256 blocks: ~0.016 B/param), embeddings and output layer in the trainer's
  precision, norms in fp32 (as ``load_model`` leaves them);
- FSDP over N devices divides weights, grads and optimizer state by N;
- activations: 34 x tokens x hidden bytes per layer in 16-bit (Korthikanti et al. 2022, without the
  attention-score term that SDPA/flash attention never stores; SwiGLU's wider MLP scales its share),
  for every layer, or with gradient checkpointing one layer's plus each layer's saved input;
  the loss never holds full logits (chunked loss);
- a fixed 2.5 GB for the CUDA context, allocator fragmentation and workspace.

This is arithmetic, not a measurement: ``benchmarks/gpu_check.py`` measures peak memory on a GPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GB = 1e9
OVERHEAD_BYTES = 2.5 * GB
NF4_BYTES_PER_PARAM = 0.5 + 1 / 64 + 4 / (64 * 256)

# Published config.json values (hidden, intermediate, layers, heads, kv heads, vocab, tied embeddings).
SHAPES = {
    "llama_7b": (4096, 11008, 32, 32, 32, 32000, False),
    "llama32_1b": (2048, 8192, 16, 32, 8, 128256, True),
    "llama32_3b": (3072, 8192, 28, 24, 8, 128256, True),
    "llama31_8b": (4096, 14336, 32, 32, 8, 128256, False),
    "llama31_70b": (8192, 28672, 80, 64, 8, 128256, False),
}

# (label, overrides): the presets a README row promises, and the obvious alternatives.
PLANS = [
    ("paper 7B full, FSDP x4", ["experiment=paper_7b", "trainer.devices=4"]),
    ("Llama-3.2-1B full, 1 GPU", ["model=llama32_1b", "tuning=full", "trainer=gpu"]),
    ("Llama-3.2-3B LoRA, 1 GPU", ["model=llama32_3b", "tuning=lora", "trainer=gpu"]),
    ("Llama-3.1-8B QLoRA, 1 GPU", ["model=llama31_8b", "tuning=qlora", "trainer=gpu"]),
    ("Llama-3.1-8B full, FSDP x8", ["model=llama31_8b", "tuning=full", "trainer=fsdp", "trainer.devices=8"]),
    ("Llama-3.1-70B QLoRA, 1 GPU", ["experiment=llama31_70b_qlora"]),
    ("Llama-3.1-70B QLoRA, FSDP x2", ["experiment=llama31_70b_qlora", "trainer=fsdp", "trainer.devices=2"]),
    ("Llama-3.1-70B QLoRA, no ckpt", ["experiment=llama31_70b_qlora", "train.gradient_checkpointing=false"]),
]


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import alpacare.cli  # noqa: F401  (registers the structured schema)

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def meta_model(name: str, tuning_cfg):
    from transformers import LlamaConfig, LlamaForCausalLM

    from alpacare.training.models import lora_config

    hidden, inter, layers, heads, kv, vocab, tied = SHAPES[name]
    config = LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab,
                         tie_word_embeddings=tied)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    if tuning_cfg.method != "full":
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(tuning_cfg))
    return model, config


def parameter_bytes(model, method: str, base_bytes: int) -> tuple[float, float, int]:
    """(frozen weight bytes, trainable bytes incl. grads and AdamW state, trainable count)."""
    frozen = trainable = 0.0
    n_trainable = 0
    for name, p in model.named_parameters():
        n = p.numel()
        if method == "full" or p.requires_grad:
            trainable += 16 * n
            n_trainable += n
        elif method == "qlora" and ".layers." in name and name.endswith("base_layer.weight"):
            frozen += NF4_BYTES_PER_PARAM * n
        elif method == "qlora" and "norm" in name:
            frozen += 4 * n
        else:
            frozen += base_bytes * n
    return frozen, trainable, n_trainable


def activation_bytes(config, tokens: int, checkpointing: bool) -> float:
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    per_layer = 34 * tokens * h * (0.5 + 0.5 * i / (4 * h))  # attention half + MLP half, scaled to SwiGLU's width
    if checkpointing:
        return per_layer + layers * 2 * tokens * h
    return layers * per_layer


def plan(label: str, overrides: list[str]) -> dict:
    from alpacare.training.models import frozen_base_dtype
    from alpacare.training.trainer import expected_world_size

    cfg = compose(overrides)
    model, config = meta_model(cfg.model.name, cfg.tuning)
    method = cfg.tuning.method
    base_bytes = torch.empty((), dtype=frozen_base_dtype(method, cfg.trainer.precision)).element_size()
    frozen, trainable, n_trainable = parameter_bytes(model, method, base_bytes)
    devices = expected_world_size(cfg.trainer) if "FSDP" in str(cfg.trainer.strategy) else 1
    tokens = cfg.train.micro_batch_size * cfg.train.max_length
    acts = activation_bytes(config, tokens, cfg.train.gradient_checkpointing)
    total = (frozen + trainable) / devices + acts + OVERHEAD_BYTES
    return {"plan": label, "params_B": sum(p.numel() for p in model.parameters()) / 1e9,
            "trainable_M": n_trainable / 1e6, "weights_GB": frozen / devices / GB,
            "train_state_GB": trainable / devices / GB, "activations_GB": acts / GB, "per_gpu_GB": total / GB,
            "fits": ", ".join(f"{cap} GB" for cap in (24, 40, 80) if total / GB <= cap * 0.95) or "no single GPU",
            "tokens/forward": tokens, "ckpt": bool(cfg.train.gradient_checkpointing)}


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    rows = [plan(label, overrides) for label, overrides in PLANS]
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in r.values()) + " |")
    print("(estimates, 95% of each card usable; benchmarks/gpu_check.py measures)")


if __name__ == "__main__":
    main()
