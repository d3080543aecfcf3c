"""Stage 4, ``train``: supervised instruction tuning of the student on the teacher's answers.

The recipe, top to bottom in ``run``:

1. read the training data (responses stage's Alpaca ``train.json``, or ``train.data``: Alpaca, OpenAI
   messages, ShareGPT, parquet or a datasets dir) and tokenize it with ``train.template`` (Alpaca,
   or the tokenizer's chat template; alpacare/prompts/chat.py): loss on response tokens only,
   EOS (chat: the end-of-turn token) appended, a pad token distinct
   from EOS, examples longer than ``train.max_length`` truncated and counted (alpacare/training/data.py);
2. load the student: full weights, LoRA, or QLoRA (4-bit NF4 base + LoRA) (alpacare/training/models.py);
3. wrap it in ``InstructionTuner``, a LightningModule: the loss, AdamW with warmup + cosine decay
   (transformers' schedulers, as in the Alpaca/AlpaCare HF Trainer), and resumable batches;
4. build the Lightning Trainer from ``cfg.trainer`` with ``hydra.utils.instantiate`` plus what this
   stage owns: steps, gradient accumulation to the effective batch, FSDP wrapping of the decoder
   layer class, checkpoints, W&B, throughput, and in a SLURM job the checkpoint-then-requeue on
   the time-limit/preemption signal (alpacare/training/preemption.py);
5. fit, continuing from ``train/checkpoints/last.ckpt`` when ``train.resume=auto``;
6. write the Hugging Face model dir (safetensors + tokenizer + model card + ``prompt_template.json``,
   the template predict and benchmark then use) and ``stats.json``,
   each atomically.

Resume: Lightning's checkpoint restores the weights (only the trainable ones for LoRA/QLoRA), the
optimizer and LR scheduler states, the loop counters (global step, epoch, batch index), and the
position of the dataloader, which is resumable (``ResumableDataLoader.state_dict``: epoch and
micro-batches handed out; the sampler skips those on resume). The stage adds every rank's torch RNG
state (LoRA dropout) and the settings that decide the result (data, base model, tuning method and LoRA
settings, learning rate and schedule, batch sizes, max length, precision: ``settings``); resuming
under other settings is one clear error naming what changed. A run killed with kill -9 and resumed therefore sees
the same batches, in the same order, with the same schedule and dropout masks, and ends at the
same optimizer step with the same loss.
"""

from __future__ import annotations

import logging
import os
import resource
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig

from alpacare.errors import ConfigError, DataError
from alpacare.prompts.alpaca import alpaca_chat_template
from alpacare.prompts.chat import require_chat_template, stop_token_ids, write_template
from alpacare.stages import MERGED_MODEL, MODEL, TRAIN_METRICS, TRAIN_SET, StageContext
from alpacare.training import fsdp, models
from alpacare.training.data import data_digest, data_fingerprint, load_training_records, split_validation, tokenize_examples
from alpacare.training.export import full_state_dict, model_card
from alpacare.training.metrics_log import MetricsFile
from alpacare.training.module import InstructionTuner, ThroughputStats, Validation
from alpacare.training.preemption import PreemptionCheckpoint, in_slurm_job
from alpacare.training.trainer import (
    build_logger,
    build_trainer,
    checkpoint_to_resume,
    expected_world_size,
    gradient_accumulation,
    return_freed_memory_to_os,
    uses_fsdp,
)

log = logging.getLogger(__name__)

BEST_CHECKPOINT = "best.ckpt"  # in train/checkpoints/: the step with the lowest validation loss


def settings(cfg: DictConfig, data_path: Path, lr: float) -> dict[str, Any]:
    """Everything that changes what training produces, recorded in every checkpoint; a resume
    under other settings stops with one line naming the change (alpacare/fingerprint.py). Not
    here: save_every_n_steps, chunked_loss, gradient_checkpointing, release_memory_to_os (same
    result), and the devices (the effective batch is what counts)."""
    m, t, tr = cfg.model, cfg.tuning, cfg.train
    return {
        "train.data": data_digest(data_path),
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
        **({"train.template": tr.template} if tr.template != "alpaca" else {}),
        "trainer.precision": str(cfg.trainer.precision),
        # Only when on, so checkpoints from before validation existed still resume.
        **({"train.val_fraction": tr.val_fraction} if tr.val_fraction else {}),
    }


def check(cfg: Any) -> None:
    if cfg.train.val_data and not Path(str(cfg.train.val_data)).expanduser().is_file():
        raise DataError(f"train.val_data={cfg.train.val_data}: no such file")


def validation_records(cfg: DictConfig, records: list, data_path: Path) -> tuple[list, list]:
    """(training records, held-out records): ``train.val_fraction`` of train.data held out, or
    ``train.val_data`` read whole; ([all], []) with validation off."""
    if cfg.train.val_data:
        return records, load_training_records(Path(str(cfg.train.val_data)).expanduser(), cfg.train.template)
    if not cfg.train.val_fraction:
        return records, []
    train, val = split_validation(records, cfg.train.val_fraction, cfg.train.seed)
    if not val or not train:
        raise ConfigError(f"train.val_fraction={cfg.train.val_fraction}: holds out {len(val)} of the "
                          f"{len(records)} records in {data_path}; choose a fraction that leaves both splits non-empty")
    return train, val


def run(ctx: StageContext) -> dict[str, Any]:
    cfg = ctx.cfg
    started = time.perf_counter()
    data_path = ctx.input_path(TRAIN_SET)
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    if cfg.train.release_memory_to_os:
        return_freed_memory_to_os()

    # 1. Data: Alpaca records -> tokenized examples with response-only labels.
    template = cfg.train.template
    records, val_records = validation_records(cfg, load_training_records(data_path, template), data_path)
    tokenizer = models.load_tokenizer(cfg.model, cfg.cache_dir)
    if template == "chat":
        require_chat_template(tokenizer, "train.template")
    examples, data_stats = tokenize_examples(records, tokenizer, cfg.train.max_length, template)
    # The held-out records go through the same tokenization as the training ones.
    val_examples = tokenize_examples(val_records, tokenizer, cfg.train.max_length, template)[0] if val_records else []
    if val_records and not val_examples:
        raise ConfigError(f"train.max_length={cfg.train.max_length}: every validation prompt is longer; nothing to validate on")
    if not examples:
        raise ConfigError(f"train.max_length={cfg.train.max_length}: every prompt in {data_path} is longer; nothing to train on")
    log.info("train: %d examples (%d truncated, %d dropped: prompt too long, %d dropped: empty output), %d tokens",
             data_stats.examples, data_stats.truncated, data_stats.dropped, data_stats.empty_outputs, data_stats.tokens)

    # 2. Student.
    world_size = expected_world_size(cfg.trainer)
    device = "cuda" if cfg.trainer.accelerator in ("gpu", "cuda") and torch.cuda.is_available() else "cpu"
    if device == "cuda":
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
        fingerprint=data_fingerprint(data_path, cfg.train.max_length, template), settings=settings(cfg, data_path, lr),
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
    logger = build_logger(ctx.tracker.run)
    accumulate = gradient_accumulation(cfg.train, world_size)
    validation = None
    if val_examples:  # before MetricsFile: its step line carries the loss computed at that step
        validation = Validation(val_examples, every_n_steps=cfg.train.val_every_n_steps,
                                micro_batch_size=cfg.train.micro_batch_size, pad_token_id=tokenizer.pad_token_id,
                                best_path=checkpoint_dir / BEST_CHECKPOINT, tokenizer=tokenizer,
                                sample_prompts=tuple(cfg.train.sample_prompts),
                                sample_max_new_tokens=cfg.train.sample_max_new_tokens, template=template)
    callbacks = [checkpoints, throughput, *([validation] if validation else []),
                 MetricsFile(TRAIN_METRICS.path(ctx.run_dir), validation=validation)]
    if in_slurm_job():  # time limit or preemption: checkpoint at the step's end, then requeue (preemption.py)
        callbacks.append(PreemptionCheckpoint(checkpoint_dir / "last.ckpt"))
    trainer = build_trainer(cfg, model, root_dir=ctx.dir, accumulate=accumulate, callbacks=callbacks, logger=logger)
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
        "records_in": len(records) + (len(val_records) if cfg.train.val_fraction else 0),
        # Validation (train.val_fraction / val_data): the lowest held-out loss, its optimizer step,
        # and train/checkpoints/best.ckpt holding that step; model/ is always the final step.
        **({"val_examples": len(val_examples), "val_loss": round(validation.last["val/loss"], 4),
            "best_val_loss": round(validation.best_loss, 4), "best_val_step": validation.best_step,
            "best_checkpoint": str(checkpoint_dir / BEST_CHECKPOINT)}
           if validation is not None and validation.last else {}),
        # How many processes trained (tokens and tokens_per_s above count all of them).
        "world_size": trainer.world_size,
        "num_nodes": trainer.num_nodes,
        "devices_per_node": trainer.num_devices,
    }
    state_dict = full_state_dict(trainer, model)
    if trainer.is_global_zero:
        base = str(models.resolve_model_path(cfg.model, cfg.cache_dir))
        merge = cfg.tuning.merge_adapter and cfg.tuning.method != "full"
        card = model_card(cfg, base=base, data_path=data_path, stats=stats, hparams=hparams, merged=merge)
        # The saved tokenizer carries the prompt format the model was trained on: the Alpaca one,
        # or (chat) the base's own; generation stops at the template's end of turn too.
        if template == "alpaca":
            tokenizer.chat_template = alpaca_chat_template()
        else:
            model.generation_config.eos_token_id = stop_token_ids(template, tokenizer)
        with fsdp.plain_module_names(model):
            models.save_model_dir(model, tokenizer, MODEL.path(ctx.run_dir), card=card, state_dict=state_dict,
                                  extra=lambda d: write_template(d, template, tokenizer))
        if merge:
            merged_card = card.replace("library_name: peft", "library_name: transformers")
            models.save_merged_model(MODEL.path(ctx.run_dir), MERGED_MODEL.path(ctx.run_dir), card=merged_card,
                                     dtype=models.frozen_base_dtype(cfg.tuning.method, str(cfg.trainer.precision)))
        ctx.write_stats(stats)
        ctx.tracker.summary({f"train/{k}": v for k, v in stats.items() if isinstance(v, (int, float))})
        ctx.use_artifact(TRAIN_SET, data_path)
        ctx.log_artifact(MODEL)
    trainer.strategy.barrier()

    return {
        "examples": stats["examples"],
        "truncated": stats["truncated"],
        "steps": stats["steps"],
        "final_loss": stats["final_loss"],
        "tokens_per_s": stats["tokens_per_s"],
        "model": str(MODEL.path(ctx.run_dir)),
    }
