"""Peak host memory per rank of FSDP full fine-tuning: rank 0 alone loads the weights, vs every rank.

    python benchmarks/bench_fsdp_memory.py                    # ~4 min on 2 cores
    python benchmarks/bench_fsdp_memory.py --layers 12 --hidden 1024

Full fine-tuning under FSDP builds the model on the meta device on every rank but 0, and FSDP fills
each rank's shards from rank 0's weights (alpacare/training/fsdp.py); before that change every rank
loaded the whole fp32 model on the host first (8 ranks x 32 GB for an 8B model). Three runs of the real
train stage (`trainer=fsdp trainer.accelerator=cpu`, Lightning's launcher, gloo), one optimizer step
each on a random LLaMA written to a temp dir (sized by the flags so the weights dominate the
process's own footprint):

- 1 rank: FSDP with a world of one;
- 2 ranks, baseline: every rank loads the weights (the previous behaviour, reproduced by making the
  model loader see rank 0 in every process);
- 2 ranks: rank 0 loads, rank 1 starts on the meta device.

A sitecustomize hook records each process's peak RSS (``ru_maxrss``) when training starts (the model
loaded, wrapped and sharded: on GPUs, where the training state lives in GPU memory, this is the host's
peak) and at exit (on CPU the training state, sharded, and the checkpoint writes come on top). The table
shows both per rank, with the fp32 weights' size for scale, and the ratio of rank 1's setup peak to the
baseline's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

HOOK = """
import atexit, json, os, resource
_setup = {}
def _peak_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
def _record():
    rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    path = os.path.join(os.environ["BENCH_RSS_DIR"], f"{os.getpid()}.json")
    with open(path, "w") as f:
        json.dump({"rank": rank, "setup_peak_gb": _setup.get("gb", 0.0), "peak_gb": _peak_gb()}, f)
if os.environ.get("BENCH_RSS_DIR"):
    atexit.register(_record)
    import alpacare.training.module as _module
    _on_train_start = _module.InstructionTuner.on_train_start
    def _at_train_start(self):  # the model is loaded, wrapped and sharded; no step has run
        _setup["gb"] = _peak_gb()
        return _on_train_start(self)
    _module.InstructionTuner.on_train_start = _at_train_start
if os.environ.get("BENCH_EVERY_RANK_LOADS") == "1":
    import alpacare.training.models as _models
    _models.process_rank = lambda: 0  # the loader then takes every process for rank 0: each loads the weights
"""


def write_model(dest: Path, layers: int, hidden: int) -> int:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from alpacare.training.models import embedded_gguf_path

    gguf = embedded_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 8 // 3,
                         num_hidden_layers=layers, num_attention_heads=max(hidden // 64, 1),
                         num_key_value_heads=max(hidden // 64, 1), tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return sum(p.numel() for p in model.parameters())


def run(devices: int, every_rank_loads: bool, model_dir: Path, data: Path, work: Path) -> dict[int, float]:
    name = f"{devices}-{'baseline' if every_rank_loads else 'ours'}"
    rss_dir = work / f"rss-{name}"
    rss_dir.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "BENCH_RSS_DIR": str(rss_dir),
           "BENCH_EVERY_RANK_LOADS": "1" if every_rank_loads else "0", "ALPACARE_CACHE_DIR": str(work / "cache"),
           "PYTHONPATH": os.pathsep.join([str(work / "hook"), str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "alpacare", "stages=[train]", f"train.data={data}", f"model.path={model_dir}",
           "tuning=full", "trainer=fsdp", "trainer.accelerator=cpu", f"trainer.devices={devices}",
           "trainer.precision=32-true", "train.max_steps=1", "train.micro_batch_size=1",
           f"train.effective_batch_size={devices}", "train.max_length=64", "logger=none",
           "trainer.enable_progress_bar=false", f"hydra.run.dir={work / name}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{name}: failed\n{proc.stderr[-3000:]}")
    return {rec["rank"]: rec for rec in (json.loads(f.read_text()) for f in rss_dir.glob("*.json"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=1280)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "hook").mkdir()
        (work / "hook" / "sitecustomize.py").write_text(HOOK)
        params = write_model(work / "model", args.layers, args.hidden)
        data = work / "train.json"
        data.write_text(json.dumps([{"instruction": f"Name a symptom of condition {i}.", "input": "",
                                     "output": "Fatigue."} for i in range(4)]))
        weights_gb = params * 4 / 2**30
        print(f"model: {params / 1e6:.0f}M parameters, fp32 weights {weights_gb:.2f} GB; one optimizer step each")
        rows = [("1 rank", run(1, False, work / "model", data, work)),
                ("2 ranks, every rank loads (baseline)", run(2, True, work / "model", data, work)),
                ("2 ranks, rank 0 loads (ours)", run(2, False, work / "model", data, work))]
    print("\nPeak RSS in GB: by the first step (model loaded, wrapped, sharded: on GPUs, the host's peak) / whole run")
    print("\n| run | rank 0 | rank 1 |\n|---|---|---|")
    for label, ranks in rows:
        cells = [f"{r['setup_peak_gb']:.2f} / {r['peak_gb']:.2f}" if r else "-" for r in (ranks.get(0), ranks.get(1))]
        print(f"| {label} | {cells[0]} | {cells[1]} |")
    base, ours = rows[1][1][1]["setup_peak_gb"], rows[2][1][1]["setup_peak_gb"]
    print(f"\nrank 1 by the first step, ours / baseline: {ours / base:.2f} ({base - ours:.2f} GB less; "
          f"the fp32 weights are {weights_gb:.2f} GB)")

if __name__ == "__main__":
    main()
