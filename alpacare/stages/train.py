"""Stage 4, ``train``: supervised instruction tuning of the student on the teacher's answers.

The recipe, top to bottom in ``run``:

1. read the Alpaca JSON (responses stage's ``train.json`` or ``train.data=FILE``) and tokenize it
   with the Alpaca template: loss on response tokens only, EOS appended, a pad token distinct
   from EOS, examples longer than ``train.max_length`` truncated and counted (alpacare/sft.py);
2. load the student: full weights, LoRA, or QLoRA (4-bit NF4 base + LoRA) (alpacare/models.py);
3. wrap it in ``InstructionTuner``, a LightningModule: the loss, AdamW with warmup + cosine decay
   (transformers' schedulers, as in the Alpaca/AlpaCare HF Trainer), and resumable batches;
4. build the Lightning Trainer from ``cfg.trainer`` with ``hydra.utils.instantiate`` plus what this
   stage owns: steps, gradient accumulation to the effective batch, FSDP wrapping of the decoder
   layer class, checkpoints, W&B, throughput;
5. fit, continuing from ``train/checkpoints/last.ckpt`` when ``train.resume=auto``;
6. write the Hugging Face model dir (safetensors + tokenizer + model card) and ``stats.json``,
   each atomically.

Resume: Lightning's checkpoint restores the weights (only the trainable ones for LoRA/QLoRA), the
optimizer and LR scheduler states, the loop counters (global step, epoch, batch index), and the
position of the dataloader, which is resumable (``ResumableDataLoader.state_dict``: epoch and
micro-batches handed out; the sampler skips those on resume). The stage adds the torch RNG state
(LoRA dropout) and the settings that decide the result (data, base model, tuning method and LoRA
settings, learning rate and schedule, batch sizes, max length, precision: ``settings``); resuming
under other settings is one clear error naming what changed. A run killed with kill -9 and resumed therefore sees
the same batches, in the same order, with the same schedule and dropout masks, and ends at the
same optimizer step with the same loss.
"""

from __future__ import annotations

import ctypes
import logging
import math
import resource
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from lightning.pytorch.utilities import grad_norm
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch.utils.data import DataLoader

from alpacare import models
from alpacare.errors import ConfigError, first_line
from alpacare.fingerprint import changes, file_digest, mismatch_error
from alpacare.prompts.alpaca import alpaca_chat_template
from alpacare.sft import (
    IGNORE_INDEX,
    ExampleRows,
    ResumableBatchSampler,
    ResumableDataLoader,
    collate_rows,
    data_fingerprint,
    learned_tokens,
    load_alpaca_records,
    response_loss,
    step_loss,
    tokenize_examples,
)
from alpacare.stages import MERGED_MODEL, MODEL, TRAIN_METRICS, TRAIN_SET, StageContext
from alpacare.metrics_log import MetricsFile

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# The LightningModule
# ---------------------------------------------------------------------------------------------


class InstructionTuner(L.LightningModule):
    """A causal LM trained on prompt/response pairs, with batches that resume mid-epoch."""

    def __init__(self, model, examples, *, train_cfg: DictConfig, lr: float, pad_token_id: int, fingerprint: str,
                 settings: Optional[dict[str, Any]] = None):
        super().__init__()
        self.model = model.train()  # from_pretrained returns eval mode; Lightning keeps modes as found
        self.examples = examples
        self.train_cfg = train_cfg
        self.lr = lr
        self.pad_token_id = pad_token_id
        self.fingerprint = fingerprint
        self.settings = settings or {}
        # LoRA/QLoRA checkpoints keep only the trainable weights; the frozen base comes from model.path.
        self.strict_loading = False
        self._restored_rng: Optional[dict[str, Any]] = None

    # -- data ----------------------------------------------------------------------------------

    def make_sampler(self) -> ResumableBatchSampler:
        cfg = self.train_cfg
        return ResumableBatchSampler(
            [len(e) for e in self.examples],
            cfg.micro_batch_size,
            seed=cfg.seed,
            group_by_length=cfg.group_by_length,
            pack_to=cfg.max_length if cfg.packing else None,
            rank=self.trainer.global_rank,
            world_size=self.trainer.world_size,
            learned=[learned_tokens(e) for e in self.examples],
            accumulate=self.trainer.accumulate_grad_batches,
        )

    def train_dataloader(self) -> DataLoader:
        return ResumableDataLoader(
            ExampleRows(self.examples),
            batch_sampler=self.make_sampler(),
            collate_fn=partial(collate_rows, pad_token_id=self.pad_token_id),
            # Tokenized up front and collation is cheap: workers would only add start-up time.
            num_workers=0,
            # Its own generator, so building an iterator never consumes the global RNG (dropout).
            generator=torch.Generator().manual_seed(self.train_cfg.seed),
        )

    # -- optimization --------------------------------------------------------------------------

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        learned = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        if self.train_cfg.chunked_loss:
            loss_sum = response_loss(self.model, batch, reduction="sum")
        else:  # transformers' own loss over the full [batch, length, vocab] logits
            loss_sum = self.model(
                input_ids=batch["input_ids"],
                labels=batch["labels"],
                attention_mask=batch.get("attention_mask"),
                position_ids=batch.get("position_ids"),
                use_cache=False,  # with a KV cache, transformers would ignore packed position ids
            ).loss * learned
        # Logged: this micro-batch's mean token loss (comparable across runs and batchings).
        self.log("train/loss", loss_sum.detach() / max(learned, 1), prog_bar=True, batch_size=batch["num_examples"])
        # Optimized: normalized by the response tokens of the whole optimizer step (sft.step_loss).
        return step_loss(loss_sum, batch.get("step_tokens", learned), self.trainer.accumulate_grad_batches,
                         self.trainer.world_size if "step_tokens" in batch else 1)

    def on_before_optimizer_step(self, optimizer) -> None:
        # Before clipping, like the grad_norm HF Trainer logs.
        norms = grad_norm(self.model, norm_type=2)
        if norms:
            self.log("train/grad_norm", norms["grad_2.0_norm_total"])
        self.log("train/lr", optimizer.param_groups[0]["lr"])

    def configure_optimizers(self):
        from transformers import get_scheduler

        cfg = self.train_cfg
        params = [p for p in self.trainer.model.parameters() if p.requires_grad]
        # HF Trainer (Alpaca/AlpaCare) decays every weight matrix but not biases and norm weights.
        groups = [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=self.lr)
        total_steps = self.total_optimizer_steps()
        scheduler = get_scheduler(
            cfg.lr_scheduler,
            optimizer,
            num_warmup_steps=math.ceil(total_steps * cfg.warmup_ratio),  # HF TrainingArguments.get_warmup_steps
            num_training_steps=total_steps,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def total_optimizer_steps(self) -> int:
        """Optimizer steps of the whole run: max_steps when set (it overrides the epochs, as in the
        HF Trainer), else epochs x steps per epoch (Lightning steps on the last, partial accumulation too)."""
        if self.trainer.max_steps > 0:
            return self.trainer.max_steps
        batches = len(self.make_sampler())
        per_epoch = math.ceil(batches / self.trainer.accumulate_grad_batches)
        return per_epoch * self.trainer.max_epochs

    # -- checkpoints ---------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._keeps_trainable_only():
            trainable = {name for name, p in self.named_parameters() if p.requires_grad}
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["alpacare"] = {
            "data_fingerprint": self.fingerprint,
            "settings": self.settings,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def _keeps_trainable_only(self) -> bool:
        # Sharded strategies (FSDP, DeepSpeed) save and load their own complete state.
        frozen = any(not p.requires_grad for p in self.parameters())
        return frozen and isinstance(self.trainer.strategy, (SingleDeviceStrategy, DDPStrategy))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("alpacare")
        if saved is None:
            raise ConfigError("train.resume: the checkpoint was not written by the alpacare train stage")
        continue_hint = ("set train.resume=never to start over in this run dir, or train.allow_changed_settings=true "
                         "to continue it deliberately")
        if "settings" in saved:
            diff = changes(saved["settings"], self.settings)
            if diff and not self.train_cfg.allow_changed_settings:
                raise mismatch_error("train.resume: the checkpoint", diff, continue_hint)
            if diff:
                log.warning("train: resuming a checkpoint made with other settings (%s), as "
                            "train.allow_changed_settings=true asks", "; ".join(diff))
        elif saved["data_fingerprint"] != self.fingerprint and not self.train_cfg.allow_changed_settings:
            raise mismatch_error("train.resume: the checkpoint (an older one, with only a data fingerprint)",
                                 ["train.data or train.max_length changed"], continue_hint)
        self._restored_rng = saved

    def on_train_start(self) -> None:
        # Applied here, after Lightning has restored everything and right before the first batch.
        if self._restored_rng is not None:
            torch.set_rng_state(self._restored_rng["torch_rng"])
            if self._restored_rng["cuda_rng"] is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(self._restored_rng["cuda_rng"])
            self._restored_rng = None


class ThroughputStats(L.Callback):
    """Useful (non-pad) tokens per second of training compute, peak memory, run totals."""

    def __init__(self) -> None:
        self.tokens = 0
        self.examples = 0
        self.busy_s = 0.0  # forward/backward/optimizer time, without checkpoint writes
        self.wall_s = 0.0
        self.start_step = 0
        self._step_tokens = 0
        self._step_busy_s = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self._fit_start = time.perf_counter()
        self.start_step = self._last_step = trainer.global_step  # > 0 when resumed

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._batch_start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        busy = time.perf_counter() - self._batch_start
        self.busy_s += busy
        self._step_busy_s += busy
        self.tokens += batch["num_tokens"]
        self._step_tokens += batch["num_tokens"]
        self.examples += batch["num_examples"]
        if trainer.global_step != self._last_step:  # this micro-batch completed an optimizer step
            pl_module.log("train/tokens_per_s", self._step_tokens / max(self._step_busy_s, 1e-9), prog_bar=True)
            pl_module.log("train/peak_memory_gb", peak_memory_bytes() / 2**30)
            self._step_tokens, self._step_busy_s = 0, 0.0
            self._last_step = trainer.global_step

    def on_train_end(self, trainer, pl_module) -> None:
        self.wall_s = time.perf_counter() - self._fit_start

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.busy_s if self.busy_s else 0.0


def return_freed_memory_to_os() -> None:
    """Serve allocations >= 1 MiB with mmap, so freed activation buffers go back to the OS.

    glibc's adaptive mmap threshold climbs to 32 MiB, after which the many 1-30 MB activation
    tensors of a CPU training step come from a heap that fragments and rarely shrinks. Measured
    on SmolLM2-135M LoRA, 4 x 512 tokens (benchmarks/bench_train.py, 36 examples x 8 steps):
    peak RSS 7.6 GB -> 4.6 GB, at 28% fewer tokens/s (page faults on every step's activations).
    """
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # -3 = M_MMAP_THRESHOLD
        except (OSError, AttributeError):  # not glibc
            pass


def peak_memory_bytes() -> int:
    """Peak GPU memory allocated when training on CUDA, else the process's peak RSS."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


# ---------------------------------------------------------------------------------------------
# The Trainer
# ---------------------------------------------------------------------------------------------


def expected_world_size(trainer_cfg: DictConfig) -> int:
    """Processes that will train (devices x nodes), known before the Trainer exists, because the
    gradient accumulation that reaches the effective batch depends on it."""
    devices = trainer_cfg.devices
    if isinstance(devices, (list, ListConfig)):
        per_node = len(devices)
    elif isinstance(devices, str) and "," in devices:
        per_node = len([d for d in devices.split(",") if d.strip()])
    elif str(devices) in ("auto", "-1"):
        uses_gpu = trainer_cfg.accelerator in ("gpu", "cuda") or (trainer_cfg.accelerator == "auto" and torch.cuda.is_available())
        per_node = max(torch.cuda.device_count(), 1) if uses_gpu else 1
    else:
        per_node = int(devices)
    return per_node * trainer_cfg.num_nodes


def gradient_accumulation(train_cfg: DictConfig, world_size: int) -> int:
    per_step = train_cfg.micro_batch_size * world_size
    if train_cfg.effective_batch_size % per_step:
        raise ConfigError(
            f"train.effective_batch_size={train_cfg.effective_batch_size}: must be a multiple of "
            f"micro_batch_size x world size = {train_cfg.micro_batch_size} x {world_size}"
        )
    return train_cfg.effective_batch_size // per_step


def uses_fsdp(trainer_cfg: DictConfig) -> bool:
    strategy = trainer_cfg.strategy
    if isinstance(strategy, str):
        return strategy.startswith("fsdp")
    return str(strategy.get("_target_", "")).endswith("FSDPStrategy")


def build_strategy(trainer_cfg: DictConfig, model, model_cfg: DictConfig):
    """A strategy name passes through; a strategy config is instantiated. FSDP wraps each instance
    of the decoder layer class (``model.fsdp_layer_cls``), as Alpaca's --fsdp auto_wrap does."""
    strategy = trainer_cfg.strategy
    if isinstance(strategy, str) and not strategy.startswith("fsdp"):
        return strategy
    if isinstance(strategy, str):
        strategy = OmegaConf.create({"_target_": "lightning.pytorch.strategies.FSDPStrategy"})
    extra = {}
    if uses_fsdp(trainer_cfg):
        extra["auto_wrap_policy"] = {models.find_module_class(model, model_cfg.fsdp_layer_cls)}
    try:
        return instantiate(strategy, **extra)
    except Exception as e:  # missing deepspeed, bad arguments: one line, not a traceback
        raise ConfigError(f"trainer.strategy={strategy.get('_target_')}: {first_line(e)}") from None


def build_logger(ctx: StageContext):
    """Lightning's WandbLogger on the stage's existing W&B run; no logger without one."""
    if ctx.tracker.run is None:
        return False
    from lightning.pytorch.loggers import WandbLogger

    return WandbLogger(experiment=ctx.tracker.run)


def build_trainer(cfg: DictConfig, ctx: StageContext, model, *, accumulate: int, callbacks: list, logger) -> L.Trainer:
    try:
        return instantiate(
            cfg.trainer,
            strategy=build_strategy(cfg.trainer, model, cfg.model),
            # train.max_steps > 0 overrides the epochs, as max_steps does in the HF Trainer.
            max_epochs=-1 if cfg.train.max_steps > 0 else cfg.train.epochs,
            max_steps=cfg.train.max_steps,
            accumulate_grad_batches=accumulate,
            callbacks=callbacks,
            logger=logger,
            default_root_dir=str(ctx.dir),
            # ResumableBatchSampler shards by rank itself (and keeps lengths aligned across ranks).
            use_distributed_sampler=False,
            num_sanity_val_steps=0,
        )
    except ConfigError:
        raise
    except Exception as e:  # e.g. accelerator=gpu without a GPU: Lightning's MisconfigurationException
        raise ConfigError(f"trainer: {first_line(e)}") from None


def settings(cfg: DictConfig, data_path: Path, lr: float) -> dict[str, Any]:
    """Everything that changes what training produces, recorded in every checkpoint; a resume
    under other settings stops with one line naming the change (alpacare/fingerprint.py). Not
    here: save_every_n_steps, chunked_loss, gradient_checkpointing, release_memory_to_os (same
    result), and the devices (the effective batch is what counts)."""
    m, t, tr = cfg.model, cfg.tuning, cfg.train
    return {
        "train.data": file_digest(data_path),
        "model.path": m.path, "model.gguf_file": m.gguf_file, "model.pad_token": m.pad_token,
        "tuning.method": t.method,
        **({f"tuning.{k}": t[k] for k in ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules")}
           if t.method != "full" else {}),
        **({f"tuning.{k}": t[k] for k in ("bnb_4bit_quant_type", "bnb_4bit_use_double_quant", "bnb_4bit_compute_dtype")}
           if t.method == "qlora" else {}),
        "train.lr": lr,
        **{f"train.{k}": tr[k] for k in ("epochs", "max_steps", "lr_scheduler", "warmup_ratio", "weight_decay",
                                          "micro_batch_size", "effective_batch_size", "max_length",
                                          "group_by_length", "packing", "seed")},
        "trainer.precision": str(cfg.trainer.precision),
    }


def checkpoint_to_resume(train_cfg: DictConfig, checkpoint_dir: Path) -> Optional[str]:
    if train_cfg.resume == "never":
        return None
    if train_cfg.resume == "auto":
        last = checkpoint_dir / "last.ckpt"
        return str(last) if last.exists() else None
    path = Path(train_cfg.resume).expanduser()
    if not path.exists():
        raise ConfigError(f"train.resume={train_cfg.resume}: no such checkpoint")
    return str(path)


# ---------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------


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
    return {k[len(prefix):]: v for k, v in full.items() if k.startswith(prefix)}


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
- Prompt: the Stanford Alpaca template (`alpacare/prompts/alpaca.py`); the response follows `### Response:` and ends with EOS.

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


# ---------------------------------------------------------------------------------------------
# The recipe
# ---------------------------------------------------------------------------------------------


def run(ctx: StageContext) -> dict[str, Any]:
    cfg = ctx.cfg
    started = time.perf_counter()
    data_path = ctx.input_path(TRAIN_SET)
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    if cfg.train.release_memory_to_os:
        return_freed_memory_to_os()

    # 1. Data: Alpaca records -> tokenized examples with response-only labels.
    records = load_alpaca_records(data_path)
    tokenizer = models.load_tokenizer(cfg.model, cfg.cache_dir)
    examples, data_stats = tokenize_examples(records, tokenizer, cfg.train.max_length)
    if not examples:
        raise ConfigError(f"train.max_length={cfg.train.max_length}: every prompt in {data_path} is longer; nothing to train on")
    log.info("train: %d examples (%d truncated, %d dropped: prompt too long, %d dropped: empty output), %d tokens",
             data_stats.examples, data_stats.truncated, data_stats.dropped, data_stats.empty_outputs, data_stats.tokens)

    # 2. Student.
    world_size = expected_world_size(cfg.trainer)
    device = "cuda" if cfg.trainer.accelerator in ("gpu", "cuda") and torch.cuda.is_available() else "cpu"
    if device == "cuda":
        import os

        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    model = models.load_model(
        cfg.model, cfg.tuning, cfg.cache_dir, tokenizer=tokenizer, device=device,
        fsdp=uses_fsdp(cfg.trainer), gradient_checkpointing=cfg.train.gradient_checkpointing,
        precision=str(cfg.trainer.precision),
    )
    trainable, total = models.trainable_parameters(model)
    lr = cfg.train.lr if cfg.train.lr is not None else cfg.tuning.lr

    # 3. LightningModule.
    module = InstructionTuner(
        model, examples, train_cfg=cfg.train, lr=lr, pad_token_id=tokenizer.pad_token_id,
        fingerprint=data_fingerprint(data_path, cfg.train.max_length), settings=settings(cfg, data_path, lr),
    )

    # 4. Trainer.
    checkpoint_dir = ctx.dir / "checkpoints"
    checkpoints = ModelCheckpoint(
        dirpath=checkpoint_dir,
        every_n_train_steps=cfg.train.save_every_n_steps,
        save_top_k=0,  # no per-step copies: last.ckpt (every N steps and at the end) is what resume needs
        save_last=True,
        save_on_train_epoch_end=False,
        enable_version_counter=False,  # train.resume=never overwrites last.ckpt instead of writing last-v1.ckpt
    )
    throughput = ThroughputStats()
    logger = build_logger(ctx)
    accumulate = gradient_accumulation(cfg.train, world_size)
    trainer = build_trainer(cfg, ctx, model, accumulate=accumulate, callbacks=[checkpoints, throughput, MetricsFile(TRAIN_METRICS.path(ctx.run_dir))], logger=logger)
    if trainer.world_size != world_size:
        raise ConfigError(f"trainer.devices={cfg.trainer.devices}: expected {world_size} processes, Lightning started {trainer.world_size}")

    hparams = {
        "tuning": cfg.tuning.method,
        "lr": lr,
        "lr_scheduler": cfg.train.lr_scheduler,
        "warmup_ratio": cfg.train.warmup_ratio,
        "weight_decay": cfg.train.weight_decay,
        "epochs": cfg.train.epochs,
        "max_steps": cfg.train.max_steps,
        "micro_batch_size": cfg.train.micro_batch_size,
        "gradient_accumulation": accumulate,
        "world_size": world_size,
        "effective_batch_size": cfg.train.effective_batch_size,
        "max_length": cfg.train.max_length,
        "group_by_length": cfg.train.group_by_length,
        "packing": cfg.train.packing,
        "precision": cfg.trainer.precision,
        "seed": cfg.train.seed,
        "trainable_params": trainable,
        "total_params": total,
    }
    if cfg.tuning.method != "full":
        hparams.update(lora_r=cfg.tuning.lora_r, lora_alpha=cfg.tuning.lora_alpha, lora_dropout=cfg.tuning.lora_dropout)
    if logger:
        logger.log_hyperparams({"train_derived": hparams})

    # 5. Fit (resuming if asked and possible).
    resume_from = checkpoint_to_resume(cfg.train, checkpoint_dir)
    if resume_from:
        log.info("train: resuming from %s", resume_from)
    trainer.fit(module, ckpt_path=resume_from)
    if trainer.interrupted:  # Ctrl-C: Lightning stops cleanly; keep the checkpoint, write no model
        raise KeyboardInterrupt

    # 6. Outputs: a checkpoint at the final step, the model dir, stats.json. ModelCheckpoint saves
    # every N steps, and at the end only when it saved nothing during this fit.
    every = cfg.train.save_every_n_steps
    saved_during_fit = trainer.global_step // every > throughput.start_step // every
    if trainer.global_step % every and saved_during_fit:
        trainer.save_checkpoint(checkpoint_dir / "last.ckpt", weights_only=False)
    final_loss = trainer.callback_metrics.get("train/loss")
    stats = {
        "examples": data_stats.examples,
        "truncated": data_stats.truncated,
        "dropped": data_stats.dropped,
        "empty_outputs": data_stats.empty_outputs,
        "boundary_merged": data_stats.boundary_merged,
        "tokens_in_data": data_stats.tokens,
        "steps": trainer.global_step,
        "tokens": throughput.tokens,
        "tokens_per_s": round(throughput.tokens_per_s, 1),
        "final_loss": round(float(final_loss), 4) if final_loss is not None else None,
        "seconds": round(time.perf_counter() - started, 1),
        "train_seconds": round(throughput.wall_s, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "resumed_from": resume_from,
        "records_in": len(records),
    }
    state_dict = full_state_dict(trainer, model)
    if trainer.is_global_zero:
        base = str(models.resolve_model_path(cfg.model, cfg.cache_dir))
        merge = cfg.tuning.merge_adapter and cfg.tuning.method != "full"
        card = model_card(cfg, base=base, data_path=data_path, stats=stats, hparams=hparams, merged=merge)
        # The saved tokenizer carries the prompt format the model was trained on, not the base's.
        tokenizer.chat_template = alpaca_chat_template()
        models.save_model_dir(model, tokenizer, MODEL.path(ctx.run_dir), card=card, state_dict=state_dict)
        if merge:
            merged_card = card.replace("library_name: peft", "library_name: transformers")
            models.save_merged_model(MODEL.path(ctx.run_dir), MERGED_MODEL.path(ctx.run_dir), card=merged_card,
                                     dtype=models.frozen_base_dtype(cfg.tuning.method, str(cfg.trainer.precision)))
        ctx.write_stats(stats)
        ctx.tracker.summary({f"train/{k}": v for k, v in stats.items() if isinstance(v, (int, float))})
    trainer.strategy.barrier()

    return {
        "examples": stats["examples"],
        "truncated": stats["truncated"],
        "steps": stats["steps"],
        "final_loss": stats["final_loss"],
        "tokens_per_s": stats["tokens_per_s"],
        "model": str(MODEL.path(ctx.run_dir)),
    }
