"""Models for inference: load any model the framework can produce or a user can name, and
generate answers in batches. Shared by the predict and benchmark stages; training-time loading
(frozen bases, 4-bit, FSDP) stays in ``alpacare/training/models.py``.

What loads (``load_for_inference``):
- a full model dir (``config.json``), e.g. ``train/model`` after full tuning or ``train/model_merged``;
- a LoRA/QLoRA adapter dir (``adapter_config.json``): its base (from the adapter config) plus the
  adapter, merged once in memory for speed (the base is loaded unquantized, like ``model_merged``);
- a Hugging Face id, from the local HF cache or the hub when online.

Generation (``generate``): prompts sorted by length and batched, left-padded so every prompt ends
where generation starts, greedy by default, and only the new tokens decoded. (The AlpaCare
release decoded prompt + answer and split on "Response:", which cut any answer that itself says
"Response:".)
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from alpacare.errors import ConfigError, first_line

log = logging.getLogger(__name__)

def check_model_source(source: str, key: str) -> None:
    """Fail in the first second, with one line, for a model that cannot load."""
    path = Path(source).expanduser()
    if path.exists():
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            raise ConfigError(f"{key}={source}: not a Hugging Face model directory (no config.json or adapter_config.json)")
        if (path / "adapter_config.json").is_file():
            base = _adapter_base(path, key)
            if Path(base).expanduser().is_absolute() or Path(base).expanduser().exists():
                check_model_source(base, f"{key} (adapter base)")
        return
    from alpacare.training.models import hub_is_offline, in_hub_cache, looks_like_hub_id

    if not looks_like_hub_id(source):
        raise ConfigError(f"{key}={source}: no such model directory")
    if hub_is_offline() and not in_hub_cache(source):
        raise ConfigError(f"{key}={source}: not a local directory, not in the Hugging Face cache, and the hub is offline")


def _adapter_base(adapter_dir: Path, key: str) -> str:
    try:
        base = json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    except (OSError, ValueError, KeyError):
        raise ConfigError(f"{key}={adapter_dir}: adapter_config.json names no base model") from None
    if not base:
        raise ConfigError(f"{key}={adapter_dir}: adapter_config.json names no base model")
    return str(base)


def model_name(source: str) -> str:
    """A readable generator name: the run dir for ``<run>/train/model``, else the dir or id."""
    path = Path(source).expanduser()
    if path.name in ("model", "model_merged") and path.parent.name == "train":
        return f"{path.parent.parent.name}/{path.name}"
    return path.name if path.exists() else source


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32  # bf16 matmuls are slower than fp32 on most CPUs
    return getattr(torch, dtype)


@dataclass
class InferenceModel:
    model: Any
    tokenizer: Any
    source: str
    name: str
    device: str
    dtype: str
    adapter: bool
    template: str = "alpaca"  # alpacare/prompts/chat.py: how prompts are written and where answers stop

    def stop_ids(self) -> list[int]:
        """EOS, and for ``chat`` the template's end-of-turn token (read from the tokenizer each time)."""
        from alpacare.prompts.chat import stop_token_ids

        return stop_token_ids(self.template, self.tokenizer)

    def prompt(self, instruction: str, input: Optional[str] = None) -> str:
        from alpacare.prompts.chat import format_task

        return format_task(self.template, self.tokenizer, instruction, input)

    def encode(self, prompt: str) -> list[int]:
        """Prompt tokens as in training: a chat template writes its own special tokens."""
        return self.tokenizer(prompt, add_special_tokens=self.template != "chat")["input_ids"]


def load_tokenizer_for_generation(source: str, key: str, fallback: Optional[str] = None):
    """Left-padding tokenizer with a pad token distinct from EOS (as in training)."""
    from transformers import AutoTokenizer

    from alpacare.training.models import ensure_pad_token

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as e:
        if fallback is None:
            raise ConfigError(f"{key}={source}: cannot load a tokenizer ({first_line(e)})") from None
        return load_tokenizer_for_generation(fallback, key)
    if tokenizer.eos_token_id is None:
        raise ConfigError(f"{key}={source}: the tokenizer has no EOS token")
    ensure_pad_token(tokenizer)
    tokenizer.padding_side = "left"
    return tokenizer


def load_for_inference(source: str, key: str, *, dtype: str = "auto", device: str = "auto",
                       template: str = "auto") -> InferenceModel:
    """Load a model dir, adapter dir or HF id, in eval mode on ``device``, prompted with ``template``
    (auto = what the model dir records, alpacare/prompts/chat.py)."""
    from alpacare.prompts.chat import require_chat_template, stop_token_ids, template_of

    import torch
    from transformers import AutoModelForCausalLM

    check_model_source(source, key)
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    path = Path(source).expanduser()
    adapter = (path / "adapter_config.json").is_file()
    base = _adapter_base(path, key) if adapter else source
    tokenizer = load_tokenizer_for_generation(str(path) if path.exists() else source, key,
                                              fallback=base if adapter else None)
    try:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch_dtype)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{key}={source}: cannot load the model ({first_line(e)})") from None
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    if adapter:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
        except (OSError, ValueError, RuntimeError) as e:
            raise ConfigError(f"{key}={source}: cannot load the adapter ({first_line(e)})") from None
    model.to(device).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    template = template_of(source, template)
    if template == "chat":
        require_chat_template(tokenizer, key.rsplit(".", 1)[0] + ".template")
    stops = stop_token_ids(template, tokenizer)
    model.generation_config.eos_token_id = stops if len(stops) > 1 else stops[0]
    return InferenceModel(model, tokenizer, source, model_name(source), device, str(torch_dtype).replace("torch.", ""),
                          adapter, template)


@dataclass(frozen=True)
class Decoding:
    max_new_tokens: int
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 1.0

    def generate_kwargs(self) -> dict[str, Any]:
        if self.do_sample:
            return dict(max_new_tokens=self.max_new_tokens, do_sample=True, temperature=self.temperature, top_p=self.top_p)
        # Explicit None: a model's generation_config may carry sampling defaults that would warn.
        return dict(max_new_tokens=self.max_new_tokens, do_sample=False, temperature=None, top_p=None, top_k=None)


@dataclass
class Generation:
    text: str
    new_tokens: int
    finish_reason: str  # "stop" (EOS) or "length" (max_new_tokens)


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices in batches of similar length, longest first (a memory error shows up at once)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def generate(
    im: InferenceModel,
    prompts: Sequence[str],
    decoding: Decoding,
    *,
    batch_size: int,
    on_batch: Optional[Callable[[list[int], list[Generation]], None]] = None,
    seed: int = 0,
) -> list[Generation]:
    """Answer ``prompts`` in length-sorted, left-padded batches; results in input order.

    ``on_batch(indices, generations)`` runs after each batch (for append-and-resume logs).
    """
    import torch

    tokenizer, model = im.tokenizer, im.model
    encoded = [im.encode(p) for p in prompts]
    results: list[Optional[Generation]] = [None] * len(prompts)
    eos = im.stop_ids()
    for indices in length_sorted_batches([len(e) for e in encoded], batch_size):
        batch = tokenizer.pad({"input_ids": [encoded[i] for i in indices]}, padding=True, return_tensors="pt")
        batch = {k: v.to(im.device) for k, v in batch.items()}
        if decoding.do_sample:
            torch.manual_seed(seed + indices[0])
        with torch.inference_mode():
            out = model.generate(**batch, **decoding.generate_kwargs())
        new = out[:, batch["input_ids"].shape[1]:]
        generations = []
        for row in new.tolist():
            tokens, stopped = answer_tokens(row, eos, tokenizer.pad_token_id)
            text = tokenizer.decode(tokens, skip_special_tokens=True).strip()
            generations.append(Generation(text, len(tokens), "stop" if stopped else "length"))
        for i, g in zip(indices, generations):
            results[i] = g
        if on_batch is not None:
            on_batch(indices, generations)
    return [r for r in results if r is not None]


def answer_tokens(token_ids: Sequence[int], eos_token_id: int | Sequence[int],
                  pad_token_id: Optional[int] = None) -> tuple[list[int], bool]:
    """The answer in one generated sequence, and whether it ended at EOS: the tokens before the first
    EOS. ``Generation.new_tokens`` is its length on both backends: transformers' ``generate`` pads a
    row that stopped early after its EOS, vLLM's ``token_ids`` end with the EOS it stopped on, and
    neither the EOS nor the padding is part of the answer."""
    ids = list(token_ids)
    stops = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id)  # EOS, or the chat stops
    end = next((k for k, t in enumerate(ids) if t in stops), None)
    stopped = end is not None
    tokens = ids[:end] if stopped else ids
    if pad_token_id is not None:
        tokens = [t for t in tokens if t != pad_token_id]
    return tokens, stopped


def vllm_source(source: str, merged_dir: Path) -> str:
    """What vLLM loads: full weights as they are; an adapter dir merged once into ``merged_dir``."""
    path = Path(source).expanduser()
    if not (path / "adapter_config.json").is_file():
        return source
    if not (merged_dir / "config.json").is_file():
        from alpacare.training.models import save_merged_model

        save_merged_model(path, merged_dir, card=f"Merged from {path} for vLLM by alpacare.\n")
    return str(merged_dir)


def load_vllm(source: str, *, dtype: str, merged_dir: Path, seed: int = 0, key: str = "predict.backend"):
    """One vLLM engine (GPU users: ``pip install 'alpacare[vllm]'``). It takes most of the GPU's
    memory, so a stage builds one and passes it to ``generate_vllm`` for every test set."""
    try:
        from vllm import LLM
    except ImportError:
        raise ConfigError(f"{key}=vllm: vLLM is not installed (pip install 'alpacare[vllm]')") from None
    return LLM(model=vllm_source(source, merged_dir), dtype=dtype, seed=seed)


def generation_from_vllm(completion: Any, eos_token_id: int | Sequence[int]) -> Generation:
    """A vLLM ``CompletionOutput`` (text, token_ids, finish_reason) as a ``Generation``."""
    tokens, _ = answer_tokens(completion.token_ids, eos_token_id)
    return Generation(completion.text.strip(), len(tokens), "length" if completion.finish_reason == "length" else "stop")


def generate_vllm(llm: Any, prompts: Sequence[str], decoding: Decoding, *, seed: int = 0,
                  template: str = "alpaca") -> list[Generation]:
    """The same answers through a vLLM engine from ``load_vllm``; results in input order. ``chat``:
    prompts go in as the training token ids (no extra BOS) and the end-of-turn token stops too."""
    from vllm import SamplingParams

    from alpacare.prompts.chat import stop_token_ids

    tokenizer = llm.get_tokenizer()
    stops = stop_token_ids(template, tokenizer)
    if template == "chat":
        prompts = [{"prompt_token_ids": tokenizer(p, add_special_tokens=False)["input_ids"]} for p in prompts]

    params = SamplingParams(
        max_tokens=decoding.max_new_tokens,
        temperature=decoding.temperature if decoding.do_sample else 0.0,
        top_p=decoding.top_p if decoding.do_sample else 1.0,
        seed=seed,
        # vLLM stops at EOS by itself; chat also at the end-of-turn token
        **({"stop_token_ids": stops} if template == "chat" else {}),
    )
    return [generation_from_vllm(o.outputs[0], stops) for o in llm.generate(list(prompts), params)]
