"""Item 17: the model dir of an FSDP run holds the unsharded weights.

Lightning refuses FSDP on CPU ("The strategy `fsdp` requires a GPU accelerator, but received
`accelerator='cpu'`"), so this test runs torch's FSDP itself on two CPU processes (gloo), wrapped
as Lightning's FSDPStrategy wraps the LightningModule (the root) with the decoder layers as units
and use_orig_params, and checks that ``train.full_state_dict`` returns every weight of the inner
model, full-sized and equal to the unsharded ones, on every rank."""

from __future__ import annotations

import os
import socket
import sys
from types import SimpleNamespace

import pytest
import torch


class _Tuner(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids):
        return self.model(input_ids=ids, labels=ids).loss


def _worker(rank: int, world: int, port: int, out: str) -> None:
    import functools

    import torch.distributed as dist
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from tests.test_train_support import tiny_llama

    from alpacare.training.export import full_state_dict

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = tiny_llama(vocab_size=512)  # same seed on every rank
        model.config.tie_word_embeddings = False
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
        reference = {k: v.detach().clone() for k, v in model.state_dict().items()}
        module = _Tuner(model)  # stands in for the LightningModule: the model is its .model
        policy = functools.partial(transformer_auto_wrap_policy, transformer_layer_cls={LlamaDecoderLayer})
        root = FSDP(module, auto_wrap_policy=policy, use_orig_params=True, device_id=torch.device("cpu"))
        ids = torch.arange(1, 9).unsqueeze(0)
        root(ids).backward()  # a step's forward and backward through the root, no update
        # Outside the root's forward, the inner model's own embedding is this rank's flat shard.
        shard_shape = tuple(module.model.model.embed_tokens.weight.shape)
        strategy = FSDPStrategy()
        strategy.model = root
        trainer = SimpleNamespace(strategy=strategy, lightning_module=module)
        full = full_state_dict(trainer, module.model)
        ok = sorted(full) == sorted(reference) and all(torch.equal(full[k], reference[k]) for k in reference)
        # What the train stage did before: the state dict of the inner model, not the FSDP root.
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        try:
            inner = get_model_state_dict(module.model, options=StateDictOptions(full_state_dict=True))
            inner_ok = sorted(inner) == sorted(reference) and all(
                inner[k].shape == reference[k].shape and torch.equal(inner[k], reference[k]) for k in reference)
        except Exception as e:  # noqa: BLE001
            inner_ok = f"error:{type(e).__name__}"
        with open(f"{out}.{rank}", "w") as f:
            f.write(f"{ok} {inner_ok} {'x'.join(map(str, shard_shape))}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_fsdp_save_path_takes_the_full_weights_from_the_root(tmp_path):
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "result")
    mp.spawn(_worker, args=(2, port, out), nprocs=2, join=True)
    results = [open(f"{out}.{rank}").read().split() for rank in range(2)]
    for rank, (ok, inner_ok, _) in enumerate(results):
        assert ok == "True", f"rank {rank}: the saved state dict differs from the unsharded weights"
        assert results[rank][2] != "512x64"  # the inner module alone holds a shard of the embeddings
    print("inner-module state dict (the old save path) matches on each rank:", [r[1] for r in results],
          "inner embedding shapes:", [r[2] for r in results])
