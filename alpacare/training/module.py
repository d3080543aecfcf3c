"""The LightningModule that instruction-tunes a causal LM, and its throughput callback.

``InstructionTuner``: the loss (response tokens only, normalized over the optimizer step), AdamW
with warmup + cosine decay (transformers' schedulers, as in the Alpaca/AlpaCare HF Trainer),
resumable batches (``ResumableDataLoader``), and checkpoints that carry the RNG state and the
settings that decide the result, so a resumed run ends where an uninterrupted one does.
"""

from __future__ import annotations

import logging
import math
import time
from functools import partial
from typing import Any, Optional

import lightning.pytorch as L
import torch
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from lightning.pytorch.utilities import grad_norm
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from alpacare.errors import ConfigError
from alpacare.fingerprint import changes, mismatch_error
from alpacare.training import fsdp
from alpacare.training.data import (
    IGNORE_INDEX,
    ExampleRows,
    ResumableBatchSampler,
    ResumableDataLoader,
    collate_rows,
    learned_tokens,
    response_loss,
    step_loss,
)
from alpacare.training.trainer import peak_memory_bytes

log = logging.getLogger(__name__)


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
        if batch.get("masked"):
            # A placeholder (this rank has no row left in the epoch's last step): the full graph
            # runs, so DDP/FSDP reduce every gradient as on the other ranks, and adds zero to it.
            return loss_sum * 0.0
        # Logged: this micro-batch's mean token loss (comparable across runs and batchings).
        self.log("train/loss", loss_sum.detach() / max(learned, 1), prog_bar=True, batch_size=batch["num_examples"])
        # Optimized: normalized by the response tokens of the whole optimizer step (sft.step_loss).
        return step_loss(loss_sum, batch.get("step_tokens", learned), self.trainer.accumulate_grad_batches,
                         self.trainer.world_size if "step_tokens" in batch else 1)

    def on_before_optimizer_step(self, optimizer) -> None:
        self.log("train/lr", optimizer.param_groups[0]["lr"])

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Logs the total gradient norm before clipping (as HF Trainer's grad_norm), then clips.

        Under FSDP both go through the root's ``clip_grad_norm_``: each rank holds a shard of the
        gradients, so a per-rank norm (Lightning's clipping, ``grad_norm``) would be wrong, which is
        why Lightning's FSDP precision refuses norm clipping outright."""
        root = fsdp.fsdp_root(self.trainer)
        if root is not None and gradient_clip_algorithm in (None, "norm"):
            self.log("train/grad_norm", fsdp.clip_grad_norm(root, gradient_clip_val).float())
            return
        norms = grad_norm(self.model, norm_type=2)
        if norms:
            self.log("train/grad_norm", norms["grad_2.0_norm_total"])
        self.clip_gradients(optimizer, gradient_clip_val=gradient_clip_val, gradient_clip_algorithm=gradient_clip_algorithm)

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
            # Each rank's own stream (dropout masks differ by rank; only rank 0 writes the file):
            # a resumed rank continues its own. Every rank runs this hook, so the gather is safe.
            "torch_rng_by_rank": self._by_rank(torch.get_rng_state()),
            "cuda_rng_by_rank": self._by_rank(torch.cuda.get_rng_state()) if torch.cuda.is_available() else None,
        }

    def _by_rank(self, state: torch.Tensor) -> list[torch.Tensor]:
        if self.trainer.world_size == 1 or not torch.distributed.is_initialized():
            return [state]
        # Pickled objects, byte for byte (a uint8 state through a tensor all-gather came back invalid).
        gathered: list[Any] = [None] * self.trainer.world_size
        torch.distributed.all_gather_object(gathered, state)
        return gathered

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
        saved, self._restored_rng = self._restored_rng, None
        if saved is None:
            return
        rank, world = self.trainer.global_rank, self.trainer.world_size
        by_rank = saved.get("torch_rng_by_rank")
        if by_rank is not None and len(by_rank) == world:
            torch.set_rng_state(by_rank[rank])
            if saved.get("cuda_rng_by_rank") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state(saved["cuda_rng_by_rank"][rank])
            return
        torch.set_rng_state(saved["torch_rng"])  # an older checkpoint, or another world size
        if saved["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["cuda_rng"])


class ThroughputStats(L.Callback):
    """Useful (non-pad) tokens per second of training compute, peak memory, run totals. The logged
    per-step figures are rank 0's; the run totals at the end are those of all ranks together."""

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
        if trainer.world_size > 1:  # run totals over every rank; the slowest rank's compute time
            def reduce(value, op):
                return trainer.strategy.reduce(torch.tensor(float(value), dtype=torch.float64, device=pl_module.device), reduce_op=op).item()
            self.tokens = int(reduce(self.tokens, "sum"))
            self.examples = int(reduce(self.examples, "sum"))
            self.busy_s = reduce(self.busy_s, "max")

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.busy_s if self.busy_s else 0.0


class Validation(L.Callback):
    """Loss on a held-out split every ``every_n_steps`` optimizer steps and at the last step.

    The value is ``response_loss`` (the training loss) as one mean over every response token of
    the whole split: each rank sums its share (every rank runs the same number of forwards, so
    FSDP's collectives line up) and the sums and token counts are all-reduced, so all ranks hold
    the same number. No grad, model in eval mode (no dropout), then back in train mode; it draws
    no random numbers, so a run with validation trains exactly as one without. A new best writes
    ``best_path`` (a full Lightning checkpoint); the best loss and step live in this callback's
    state, which last.ckpt carries, so a resumed run keeps them.
    """

    def __init__(self, examples, *, every_n_steps: int, micro_batch_size: int, pad_token_id: int, best_path,
                 tokenizer=None, sample_prompts: tuple[str, ...] = (), sample_max_new_tokens: int = 32,
                 template: str = "alpaca") -> None:
        self.examples = examples
        # Sample answers (train.sample_prompts): one W&B table row per prompt and validation, prompted
        # with the run's template (train.template), as predict will prompt the trained model.
        self.tokenizer = tokenizer
        self.template = template
        self.sample_prompts = list(sample_prompts)
        self.sample_max_new_tokens = sample_max_new_tokens
        self.sample_rows: list[list] = []
        self.every_n_steps = every_n_steps
        self.micro_batch_size = micro_batch_size
        self.pad_token_id = pad_token_id
        self.best_path = best_path
        self.best_loss: Optional[float] = None
        self.best_step: Optional[int] = None
        self.last: Optional[dict[str, float]] = None  # {"step", "val/loss"} of the latest validation
        self._last_step = -1
        self._final_step = -1

    def on_train_start(self, trainer, pl_module) -> None:
        self._last_step = trainer.global_step
        self._final_step = pl_module.total_optimizer_steps()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self._last_step:
            return  # not the micro-batch that completed an optimizer step
        self._last_step = step
        if step % self.every_n_steps and step != self._final_step:
            return
        loss = self.loss(trainer, pl_module)
        self.last = {"step": step, "val/loss": loss}
        pl_module.log("val/loss", loss, rank_zero_only=False, sync_dist=False)
        if self.best_loss is None or loss < self.best_loss:
            self.best_loss, self.best_step = loss, step
            trainer.save_checkpoint(self.best_path, weights_only=False)
        if self.sample_prompts:
            self.log_samples(trainer, pl_module, step)

    @torch.no_grad()
    def log_samples(self, trainer, pl_module, step: int) -> None:
        """Greedy answers to the fixed prompts, with the predict stage's generation helper (batch 1:
        no padding side to set on the training tokenizer) and prompt template. Every rank generates
        (FSDP needs all of them in each forward); rank 0's logger writes the table, all rows so far
        (W&B tables are immutable once logged)."""
        from alpacare.evaluation.inference import Decoding, InferenceModel, generate

        model = pl_module.model
        was_training = model.training
        model.eval()
        try:
            im = InferenceModel(model=model, tokenizer=self.tokenizer, source="train", name="train",
                                device=str(pl_module.device), dtype=str(next(model.parameters()).dtype), adapter=False,
                                template=self.template)
            prompts = [im.prompt(p) for p in self.sample_prompts]
            with fsdp.inner_model_callable(trainer):
                outputs = generate(im, prompts, Decoding(max_new_tokens=self.sample_max_new_tokens), batch_size=1)
        finally:
            model.train(was_training)
        self.sample_rows += [[step, p, g.text] for p, g in zip(self.sample_prompts, outputs)]
        if trainer.is_global_zero and trainer.logger and hasattr(trainer.logger, "log_table"):
            trainer.logger.log_table("val/samples", columns=["step", "prompt", "output"], data=list(self.sample_rows))

    def _batches(self, rank: int, world: int) -> list[tuple[list, float]]:
        """This rank's micro-batches of the split (rows rank, rank+world, ...), as many on every
        rank; a rank short of rows repeats the first example with weight 0."""
        shard = self.examples[rank::world]
        per_rank = math.ceil(math.ceil(len(self.examples) / world) / self.micro_batch_size)
        out = []
        for i in range(per_rank):
            rows = shard[i * self.micro_batch_size:(i + 1) * self.micro_batch_size]
            out.append((rows, 1.0) if rows else ([self.examples[0]], 0.0))
        return out

    @torch.no_grad()
    def loss(self, trainer, pl_module) -> float:
        model = pl_module.model
        was_training = model.training
        model.eval()
        try:
            total = torch.zeros(2, dtype=torch.float64, device=pl_module.device)  # loss sum, tokens
            with fsdp.inner_model_callable(trainer):
                for rows, weight in self._batches(trainer.global_rank, trainer.world_size):
                    batch = collate_rows([[e] for e in rows], pad_token_id=self.pad_token_id)
                    batch = {k: v.to(pl_module.device) if torch.is_tensor(v) else v for k, v in batch.items()}
                    learned = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
                    total[0] += weight * float(response_loss(model, batch, reduction="sum"))
                    total[1] += weight * learned
            if trainer.world_size > 1:
                total = trainer.strategy.reduce(total, reduce_op="sum")
            return float(total[0] / total[1].clamp(min=1))
        finally:
            model.train(was_training)

    def state_dict(self) -> dict[str, Any]:
        return {"best_loss": self.best_loss, "best_step": self.best_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_loss = state_dict.get("best_loss")
        self.best_step = state_dict.get("best_step")
