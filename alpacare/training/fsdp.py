"""FSDP as Lightning runs it, from two CPU processes to many GPUs, and what the train stage needs of it.

``FSDPStrategy`` is Lightning's own strategy with three changes, nothing else:

- **CPU.** Lightning hands torch's FSDP the device's index, which is None on CPU, and FSDP then looks
  for CUDA; here a CPU root device is passed as ``device_id=cpu``, and mixed precision autocasts on
  the CPU where Lightning's names CUDA. Lightning refuses the ``fsdp``
  strategy with a CPU accelerator only when the strategy's type is exactly its own, so this subclass
  passes: ``trainer=fsdp trainer.accelerator=cpu trainer.devices=2`` trains over gloo, a way to try
  an FSDP recipe before paying for GPUs (and the way the test suite runs every FSDP path).
- **One host copy of the weights per job.** Full fine-tuning builds the model on the meta device on
  every rank but 0 (``models.load_model``); here FSDP fills each unit with rank 0's weights as it
  wraps it, one unit at a time (``rank0_materializer``), over gloo too.
- **Checkpoints that are whole or absent.** Lightning writes a sharded checkpoint into the existing
  directory; a kill during the save would leave old and new shards mixed under the name that resume
  reads. Here the shards go to a temporary directory that replaces the old one once every rank is done.

Also here: the wrap policy (adapters in units of their own: a flat parameter needs one dtype), gradient
clipping through the root's ``clip_grad_norm_`` (Lightning's FSDP precision refuses norm clipping),
and the context in which code outside the training step may call the inner model.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from lightning.pytorch.plugins.precision import FSDPPrecision
from lightning.pytorch.strategies import FSDPStrategy as LightningFSDPStrategy


class FSDPStrategy(LightningFSDPStrategy):
    """Lightning's FSDPStrategy, on CPU too, syncing meta-device ranks from rank 0, saving atomically."""

    def setup(self, trainer) -> None:
        if self.root_device.type == "cpu" and "mixed" in self.precision_plugin.precision:
            self.precision_plugin = CPUMixedFSDPPrecision(self.precision_plugin.precision)
        super().setup(trainer)

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        from torch.distributed.fsdp import FullyShardedDataParallel

        on_meta = any(p.is_meta for p in model.parameters())
        from_rank0 = self.reduce_boolean_decision(on_meta, all=False)
        if not from_rank0 and self.root_device.type != "cpu":
            return super()._setup_model(model)
        if on_meta and self.global_rank == 0:
            raise RuntimeError("FSDP: rank 0 must hold the real weights that the other ranks receive")
        kwargs = dict(self.kwargs)
        if from_rank0:
            kwargs["param_init_fn"] = rank0_materializer(model, self.root_device, is_rank0=self.global_rank == 0)
        device_id = self.root_device if self.root_device.type == "cpu" else self.root_device.index
        wrapped = FullyShardedDataParallel(
            module=model,
            cpu_offload=self.cpu_offload,
            mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy,
            device_id=device_id,
            **kwargs,
        )
        from lightning.fabric.strategies.fsdp import _setup_activation_checkpointing

        _setup_activation_checkpointing(wrapped, self._activation_checkpointing_kwargs)
        return wrapped

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Optional[Any] = None) -> None:
        if self._state_dict_type != "sharded":
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        path = Path(self.broadcast(str(filepath)))
        partial = path.with_name(f".{path.name}.partial")
        if self.global_rank == 0 and partial.exists():
            shutil.rmtree(partial)  # a save killed part-way
        self.barrier()
        super().save_checkpoint(checkpoint, partial, storage_options)
        self.barrier()
        if self.global_rank == 0:
            replace_directory(partial, path)
        self.barrier()


class CPUMixedFSDPPrecision(FSDPPrecision):
    """Lightning's FSDP mixed precision, autocasting on the CPU rather than CUDA (its forward context
    names CUDA, and on CPU it would run without autocast, where an fp32 adapter input meets a bf16
    weight)."""

    def forward_context(self):
        return torch.autocast("cpu", dtype=torch.bfloat16 if self.precision == "bf16-mixed" else torch.float16)


def replace_directory(new: Path, dest: Path) -> None:
    """Put ``new`` where ``dest`` is, never leaving ``dest`` half of each (a file there is replaced too)."""
    old = dest.with_name(f".{dest.name}.old")
    if old.exists():
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    if dest.exists():
        dest.replace(old)
    new.replace(dest)
    if old.exists():
        shutil.rmtree(old) if old.is_dir() else old.unlink()


def rank0_materializer(model: torch.nn.Module, device: torch.device, *, is_rank0: bool):
    """FSDP's ``param_init_fn`` that fills every rank's units with rank 0's weights, one unit at a time.

    Rank 0 moves its weights aside and leaves its parameters on the meta device like the other ranks',
    so FSDP materializes the same units in the same order everywhere. For each unit, each parameter is
    made on ``device`` (a parameter shared by two modules, such as tied embeddings, once), rank 0 copies
    its weight in and broadcasts it, and FSDP then shards the unit. No rank but 0 ever holds more than
    one unit unsharded, and rank 0 drops each weight once sent. (FSDP's own ``sync_module_states`` does
    the same broadcast but only for GPU tensors; this way works over gloo too.) Buffers are not sent:
    they stay as each rank computed them (rotary frequencies), which ``models.empty_model`` keeps off
    the meta device."""
    weights: dict[str, torch.Tensor] = {}
    if is_rank0:
        weights = {name: param.detach() for name, param in model.named_parameters()}
        on_meta: dict[torch.Tensor, torch.nn.Parameter] = {}
        for module in model.modules():
            for attr, param in list(module._parameters.items()):
                if param is not None:
                    if param not in on_meta:
                        on_meta[param] = torch.nn.Parameter(torch.empty_like(param, device="meta"),
                                                            requires_grad=param.requires_grad)
                    module._parameters[attr] = on_meta[param]
    names = {param: name for name, param in model.named_parameters()}
    made: dict[torch.Tensor, torch.nn.Parameter] = {}

    def materialize(module: torch.nn.Module) -> None:
        for attr, param in list(module.named_parameters(recurse=False)):
            if not param.is_meta:
                continue
            if param not in made:
                new = torch.nn.Parameter(torch.empty_like(param, device=device), requires_grad=param.requires_grad)
                with torch.no_grad():
                    if is_rank0:
                        new.copy_(weights.pop(names[param]))
                    torch.distributed.broadcast(new.data, src=0)
                made[param] = new
            setattr(module, attr, made[param])

    return materialize


def wrap_policy(model: torch.nn.Module, layer_cls: type) -> Any:
    """One FSDP unit per decoder layer (Alpaca's ``--fsdp auto_wrap``); with a frozen base, each trainable
    leaf (a LoRA matrix) in a unit of its own too, as peft's ``fsdp_auto_wrap_policy`` does: FSDP
    flattens a unit into one tensor, and the base (bf16, or 4-bit stored as bf16) and the fp32 adapters
    cannot share one."""
    if all(p.requires_grad for p in model.parameters()):
        return {layer_cls}
    from torch.distributed.fsdp.wrap import _or_policy, lambda_auto_wrap_policy, transformer_auto_wrap_policy

    def trainable_leaf(module: torch.nn.Module) -> bool:
        weight = getattr(module, "weight", None)
        return not list(module.children()) and isinstance(weight, torch.Tensor) and weight.requires_grad

    return functools.partial(_or_policy, policies=[
        functools.partial(lambda_auto_wrap_policy, lambda_fn=trainable_leaf),
        functools.partial(transformer_auto_wrap_policy, transformer_layer_cls={layer_cls}),
    ])


def plain_name(name: str) -> str:
    """A parameter's name as the unwrapped model knows it (FSDP units add ``_fsdp_wrapped_module.``)."""
    from torch.distributed.fsdp._common_utils import FSDP_WRAPPED_MODULE

    return name.replace(f"{FSDP_WRAPPED_MODULE}.", "")


def fsdp_root(trainer) -> Optional[torch.nn.Module]:
    """The FSDP-wrapped LightningModule when training under FSDP, else None."""
    if not isinstance(trainer.strategy, LightningFSDPStrategy):
        return None
    return trainer.strategy.model


def clip_grad_norm(root: torch.nn.Module, max_norm: Optional[float]) -> torch.Tensor:
    """The total gradient norm over every shard (as one process would compute it), clipping to
    ``max_norm`` when set; the root's ``clip_grad_norm_`` is the only correct way under FSDP."""
    return root.clip_grad_norm_(max_norm if max_norm else float("inf"))


@contextlib.contextmanager
def inner_model_callable(trainer) -> Iterator[None]:
    """Lets code outside the training step (validation loss, sample answers) call the inner model.

    Under FSDP the parameters outside the decoder-layer units (embeddings, final norm, output layer)
    belong to the root's flat parameter, which holds only this rank's shard outside the root's own
    forward; they are gathered here for the duration (the decoder layers gather themselves as usual).
    Gathered, they are in full precision while the layers compute in FSDP's ``param_dtype``: autocast
    to it bridges the two, as the root's forward would. Every rank must enter it, as every rank runs
    the forwards inside it."""
    root = fsdp_root(trainer)
    if root is None:
        yield
        return
    from torch.distributed.fsdp import FullyShardedDataParallel

    mixed = trainer.strategy.mixed_precision_config
    compute_dtype = mixed.param_dtype if mixed is not None and mixed.param_dtype is not None else torch.float32
    autocast = (torch.autocast(trainer.strategy.root_device.type, dtype=compute_dtype)
                if compute_dtype != torch.float32 else contextlib.nullcontext())
    with FullyShardedDataParallel.summon_full_params(root, recurse=False, writeback=False), autocast:
        yield


@contextlib.contextmanager
def plain_module_names(model: torch.nn.Module) -> Iterator[None]:
    """The model's FSDP units shown as the modules they wrap, for the duration (nothing may run FSDP
    inside): peft names an adapter's weights after its modules' names, which each nested unit
    otherwise extends with ``_fsdp_wrapped_module.``, so ``save_pretrained`` given the gathered weights
    would find none of them and write an empty adapter."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    swapped = [(parent, name, child) for parent in list(model.modules())
               for name, child in parent._modules.items() if isinstance(child, FullyShardedDataParallel)]
    try:
        for parent, name, child in swapped:
            parent._modules[name] = child.module
        yield
    finally:
        for parent, name, child in swapped:
            parent._modules[name] = child
