"""Training throughput on CPU: the train stage's batching vs a plain Hugging Face Trainer baseline.

    python benchmarks/bench_train.py --configs "hf lora" "ours lora grouped"
    python benchmarks/bench_train.py                 # every config, ~25 min on 2 cores

With the defaults (--examples 36 --steps 8) every config trains one epoch of the same 36 examples (one warm-up
step, then 8 timed steps of 4), so the ratios compare the same work batched differently.

The metric is useful tokens per second: non-pad tokens trained on, divided by the time of the
optimizer steps (forward, backward, clipping, AdamW), after one warm-up step. Every config trains
SmolLM2-135M (the embedded model) in fp32 on the same sample of real medical instructions and
answers (GPT-4 reference answers to MedInstruct self-instruct tasks and iCliniq patient questions),
tokenized with the Alpaca template and cut to --max-length: a realistic spread of lengths.

The baseline is what the AlpaCare release runs: transformers' Trainer, random batches padded to
the longest example in each batch (Alpaca's DataCollatorForSupervisedDataset). Ours is the train
stage's LightningModule with random, length-grouped or packed batches. Each config runs in its own
process, so the peak RSS printed is that config's alone.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# name -> (trainer, tuning, batching[, extra Hydra overrides])
CONFIGS = {
    "hf full": ("hf", "full", "random"),
    "hf lora": ("hf", "lora", "random"),
    "ours full random": ("ours", "full", "random"),
    "ours full grouped": ("ours", "full", "grouped"),
    "ours full packed": ("ours", "full", "packed"),
    "ours lora random": ("ours", "lora", "random"),
    "ours lora grouped": ("ours", "lora", "grouped"),
    "ours lora packed": ("ours", "lora", "packed"),
    # transformers' loss over the full logits instead of the chunked response-only loss
    "ours lora grouped hf-loss": ("ours", "lora", "grouped", ("train.chunked_loss=false",)),
    # the low-memory settings: freed memory back to the OS; recomputed activations
    "ours lora grouped release": ("ours", "lora", "grouped", ("train.release_memory_to_os=true",)),
    "ours lora grouped ckpt": ("ours", "lora", "grouped", ("train.gradient_checkpointing=true",)),
    "ours qlora grouped": ("ours", "qlora", "grouped"),
    "ours qlora packed": ("ours", "qlora", "packed"),
}
DEFAULT_CONFIGS = ["hf full", "hf lora", "ours full grouped", "ours full packed", "ours lora random",
                   "ours lora grouped", "ours lora packed", "ours lora grouped hf-loss", "ours lora grouped release",
                   "ours lora grouped ckpt",
                   "ours qlora grouped"]


def data_dir() -> Path:
    env = os.environ.get("ALPACARE_DATA_DIR")
    return Path(env) if env else REPO.parent / "shared" / "alpacare-data"


def realistic_records(n: int, seed: int = 0) -> list[dict]:
    """MedInstruct-style tasks and iCliniq questions with GPT-4 answers, sampled at random."""
    records = []
    for name in ("medsi_output.jsonl", "iCliniq_output.jsonl"):
        path = data_dir() / "reference_outputs" / "gpt-4" / name
        for line in path.read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            if r["instruction"]:
                records.append({"instruction": r["instruction"], "input": r["input"], "output": r["output"]})
            else:  # iCliniq: the patient's message is the task
                records.append({"instruction": r["input"], "input": "", "output": r["output"]})
    random.Random(seed).shuffle(records)
    return records[:n]


def compose_cfg(args, tuning: str, batching: str, extra: tuple[str, ...] = ()):
    from hydra import compose, initialize_config_dir

    import alpacare.cli  # noqa: F401  (registers the schema)

    overrides = [
        f"tuning={tuning}", "logger=none", f"cache_dir={args.cache_dir}",
        f"train.micro_batch_size={args.micro_batch}", f"train.effective_batch_size={args.micro_batch}",
        f"train.max_length={args.max_length}", f"train.max_steps={args.steps + 1}", "train.epochs=1000",
        f"train.group_by_length={batching == 'grouped'}", f"train.packing={batching == 'packed'}",
        *extra, *args.override,
    ]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


class StepClock:
    """Times each step after the first and counts its useful tokens (both trainers call it)."""

    def __init__(self) -> None:
        self.steps, self.seconds, self.tokens = 0, 0.0, 0

    def start(self) -> None:
        self._t = time.perf_counter()

    def stop(self, tokens: int) -> None:
        elapsed = time.perf_counter() - self._t
        self.steps += 1
        if self.steps > 1:  # the first step pays one-off allocation costs
            self.seconds += elapsed
            self.tokens += tokens


def run_ours(args, tuning: str, batching: str, extra: tuple[str, ...] = ()) -> StepClock:
    import lightning.pytorch as L

    from alpacare.training import models
    from alpacare.training.data import load_alpaca_records, tokenize_examples
    from alpacare.training.module import InstructionTuner
    from alpacare.training.trainer import return_freed_memory_to_os

    cfg = compose_cfg(args, tuning, batching, extra)
    L.seed_everything(0, verbose=False)
    if cfg.train.release_memory_to_os:
        return_freed_memory_to_os()
    tokenizer = models.load_tokenizer(cfg.model, cfg.cache_dir)
    examples, _ = tokenize_examples(load_alpaca_records(args.data_file), tokenizer, cfg.train.max_length)
    model = models.load_model(cfg.model, cfg.tuning, cfg.cache_dir, tokenizer=tokenizer,
                              gradient_checkpointing=cfg.train.gradient_checkpointing)
    lr = cfg.train.lr if cfg.train.lr is not None else cfg.tuning.lr
    module = InstructionTuner(model, examples, train_cfg=cfg.train, lr=lr, pad_token_id=tokenizer.pad_token_id,
                              fingerprint="bench")
    clock = StepClock()

    class Clock(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            clock.start()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            clock.stop(batch["num_tokens"])

    trainer = L.Trainer(
        accelerator="cpu", devices=1, precision=cfg.trainer.precision, max_steps=cfg.train.max_steps,
        max_epochs=cfg.train.epochs, gradient_clip_val=cfg.trainer.gradient_clip_val, callbacks=[Clock()],
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        use_distributed_sampler=False, num_sanity_val_steps=0,
    )
    trainer.fit(module)
    return clock


def run_hf(args, tuning: str) -> StepClock:
    """Stanford Alpaca's train.py, as AlpaCare ships it: HF Trainer, batches padded to the longest."""
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from alpacare.training import models
    from alpacare.training.data import IGNORE_INDEX, load_alpaca_records, tokenize_examples

    cfg = compose_cfg(args, tuning, "random")
    tokenizer = models.load_tokenizer(cfg.model, cfg.cache_dir)
    examples, _ = tokenize_examples(load_alpaca_records(args.data_file), tokenizer, cfg.train.max_length)
    dataset = [{"input_ids": e.input_ids, "labels": e.labels} for e in examples]
    model = models.load_model(cfg.model, cfg.tuning, cfg.cache_dir, tokenizer=tokenizer)
    clock = StepClock()
    batch_tokens: list[int] = []

    def pad_to_longest(instances):  # Alpaca's DataCollatorForSupervisedDataset
        input_ids = torch.nn.utils.rnn.pad_sequence([i["input_ids"] for i in instances], batch_first=True,
                                                    padding_value=tokenizer.pad_token_id)
        labels = torch.nn.utils.rnn.pad_sequence([i["labels"] for i in instances], batch_first=True,
                                                 padding_value=IGNORE_INDEX)
        attention_mask = input_ids.ne(tokenizer.pad_token_id)
        batch_tokens.append(int(attention_mask.sum()))
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            clock.start()

        def on_step_end(self, state, *a, **k):
            clock.stop(batch_tokens[clock.steps])

    lr = cfg.train.lr if cfg.train.lr is not None else cfg.tuning.lr
    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(
            output_dir=out, per_device_train_batch_size=args.micro_batch, gradient_accumulation_steps=1,
            max_steps=args.steps + 1, learning_rate=lr, lr_scheduler_type="cosine", warmup_steps=0,
            weight_decay=0.0, max_grad_norm=1.0, logging_strategy="no", save_strategy="no", report_to=[],
            use_cpu=True, dataloader_num_workers=0, seed=0, remove_unused_columns=False,  # random batches
            disable_tqdm=True,
        )
        Trainer(model=model, args=targs, train_dataset=dataset, data_collator=pad_to_longest,
                callbacks=[Clock()]).train()
    return clock


def peak_rss_gb() -> float:
    """This process's own peak RSS (VmHWM). Not ru_maxrss: Linux carries that over from the parent
    (which has torch imported) across exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20  # kB -> GB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # not Linux


def run_one(args) -> None:
    """Child process: one config; prints one JSON line."""
    kind, tuning, batching, *extra = CONFIGS[args.one]
    clock = run_hf(args, tuning) if kind == "hf" else run_ours(args, tuning, batching, *extra)
    print("RESULT " + json.dumps({
        "config": args.one, "tokens_per_s": clock.tokens / clock.seconds, "tokens": clock.tokens,
        "seconds": clock.seconds, "peak_rss_gb": peak_rss_gb(),
    }), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, choices=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps per config (after 1 warm-up)")
    parser.add_argument("--micro-batch", type=int, default=4, help="examples (or packed rows) per step")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--examples", type=int, default=36, help="size of the sample the batches are drawn from")
    parser.add_argument("--cache-dir", default=os.environ.get("ALPACARE_CACHE_DIR",
                                                             str(Path.home() / ".cache" / "alpacare")))
    parser.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra Hydra overrides for every config, e.g. train.gradient_checkpointing=true")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--data-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.one:
        return run_one(args)

    with tempfile.TemporaryDirectory() as tmp:
        data_file = Path(tmp) / "bench.json"
        data_file.write_text(json.dumps(realistic_records(args.examples)), encoding="utf-8")
        from alpacare.training import models
        from alpacare.config import ModelConfig

        models.resolve_model_path(ModelConfig(), args.cache_dir)  # convert once, outside the timings
        print(f"{args.micro_batch} x <={args.max_length} tokens per step, {args.steps} timed steps per config, "
              f"{args.examples} examples; load average {os.getloadavg()[0]:.2f}", flush=True)
        results = {}
        for name in args.configs:
            cmd = [sys.executable, __file__, "--one", name, "--data-file", str(data_file),
                   *(f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                     if k in ("steps", "micro_batch", "max_length", "examples", "cache_dir")),
                   *(["--override", *args.override] if args.override else [])]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not lines:
                print(f"{name}: failed\n{proc.stderr[-2000:]}", flush=True)
                continue
            results[name] = json.loads(lines[-1][len("RESULT "):])
            r = results[name]
            print(f"  {name:<20} {r['tokens_per_s']:7.1f} tokens/s  peak RSS {r['peak_rss_gb']:.2f} GB", flush=True)
        print_table(results)
        print(f"load average at the end {os.getloadavg()[0]:.2f}")


def print_table(results: dict) -> None:
    base = results.get("hf full")
    print(f"\n{'config':<20} {'tokens/s':>9} {'vs hf full':>11} {'vs hf same tuning':>18} {'peak RSS GB':>12}")
    for name, r in results.items():
        same = results.get(f"hf {CONFIGS[name][1]}")
        vs_base = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else "-"
        vs_same = f"{r['tokens_per_s'] / same['tokens_per_s']:.2f}x" if same else "-"
        print(f"{name:<20} {r['tokens_per_s']:9.1f} {vs_base:>11} {vs_same:>18} {r['peak_rss_gb']:12.2f}")


if __name__ == "__main__":
    main()
