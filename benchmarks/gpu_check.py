"""The GPU paths of issue 17, measured in one run, side by side with their baselines; prints one table.

    python benchmarks/gpu_check.py                  # one GPU (written for an H200, 141 GB)
    python benchmarks/gpu_check.py --smoke          # tiny shapes on CPU: checks the script itself

Checks (each in its own process, so peak memory is its own):

1. ``lora`` / ``qlora`` / ``hf-lora``: optimizer steps on a randomly initialised LLaMA-7B-shaped model
   (hidden 4096, 32 layers, 32 heads, MLP 11008; SmolLM2's tokenizer, so a 49,152-token vocabulary
   instead of LLaMA's 32,000) at max length 1024, bf16: useful (non-pad) tokens/s over the timed steps
   (CUDA synchronised at step ends, after one warm-up step), MFU against the GPU's bf16 dense peak, and
   peak allocated memory. ``lora`` is the train stage's LightningModule with packed rows; ``hf-lora``
   is a plain transformers Trainer + peft with the same LoRA settings and random batches padded to the
   longest (Alpaca's collator), the AlpaCare release's recipe. ``qlora`` runs as torchtune's QLoRA
   recipe is measured (activation checkpointing, 2 rows per step); it needs bitsandbytes.
   Goals: LoRA >= 1.5x hf-lora tokens/s; MFU >= 40% with packing; QLoRA peak <= 10 GB (torchtune: 9.3 GB).
   MFU counts the FLOPs the step executes: forward 2 x (matmul weights) + causal attention
   (2 x layers x hidden x row length per token), backward twice the forward for full tuning and
   once for a frozen base (input gradients only), recomputation not counted.
2. ``fsdp``: full fine-tuning through the train stage with ``trainer=fsdp trainer.devices=1`` (a
   1.1B LLaMA shape, so AdamW's fp32 states fit): the model dir it writes loads with
   ``from_pretrained`` and equals the weights in Lightning's own (full) checkpoint.
3. ``predict-vllm``: ``predict.backend=vllm`` against ``hf`` on the same model and prompts: greedy
   answers equal (differences listed with the first differing token), new tokens/s ratio (goal >= 10x).
4. ``benchmark-vllm``: ``benchmark.backend=vllm`` against ``hf`` on the smoke suite: equal scores.
   3 and 4 print one "skipped" line where vLLM is not installed.

Figures from a run belong in the README (with the GPU named); none are written here.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# bf16 dense peak, TFLOP/s (vendor datasheets; SXM parts).
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}
LLAMA_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=32)
LLAMA_1B = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                num_key_value_heads=4)  # TinyLlama-1.1B's shape
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
WORDS = ("patient dose blood pressure heart rate fever cough infection antibiotic symptom diagnosis treatment "
         "risk chronic acute pain kidney liver insulin glucose vaccine allergy therapy clinical trial").split()


# -- set-up: model dirs and data ------------------------------------------------------------------


def tokenizer_dir(out: Path) -> Path:
    from transformers import AutoTokenizer

    from alpacare.training.models import embedded_gguf_path

    if not (out / "tokenizer_config.json").exists():
        gguf = embedded_gguf_path()
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
    return out


def random_model_dir(out: Path, shape: dict, tok: Path, device: str) -> Path:
    """A randomly initialised LLaMA of ``shape`` saved in bf16 with the tokenizer (once per work dir)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if (out / "config.json").exists():
        return out
    tokenizer = AutoTokenizer.from_pretrained(tok)
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=2048, tie_word_embeddings=False,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **shape)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device=device).to(torch.bfloat16)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.ones_like(p) if "norm" in name else torch.randn_like(p) * 0.02)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    del model
    return out


def synthetic_records(n: int, max_words: int, seed: int = 0) -> list[dict]:
    """Alpaca records with a wide spread of lengths (some beyond the max length, as real data has)."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        words = rng.randint(max_words // 12, max_words)
        records.append({"instruction": f"Question {i}: " + " ".join(rng.choices(WORDS, k=rng.randint(5, 40))),
                        "input": "", "output": " ".join(rng.choices(WORDS, k=words)) + "."})
    return records


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import alpacare.cli  # noqa: F401  (schema and resolvers)

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def run_stage(name: str, overrides: list[str], run_dir: Path) -> dict:
    """One stage exactly as the CLI runs it (its run(ctx)), returning its stats.json."""
    import importlib

    from alpacare.config import validate
    from alpacare.stages import STAGES, Resources, StageContext
    from alpacare.tracking import Tracker

    cfg = compose(["logger=none", *overrides])
    validate(cfg)
    tracker = Tracker(cfg, run_dir, name, "gpu_check", "gpu_check")
    ctx = StageContext(cfg=cfg, run_dir=run_dir, spec=STAGES[name], tracker=tracker, resources=Resources(cfg))
    try:
        importlib.import_module(f"alpacare.stages.{name}").run(ctx)
    finally:
        tracker.finish()
        ctx.resources.close()
    return json.loads((run_dir / name / "stats.json").read_text())


# -- 1. LoRA / QLoRA / HF baseline -----------------------------------------------------------------


class Clock:
    """Wall time of the optimizer steps after the first, CUDA synchronised at each step's end."""

    def __init__(self) -> None:
        self.steps, self.seconds, self.tokens, self._step_tokens, self._t = 0, 0.0, 0, 0, None

    def add(self, tokens: int) -> None:
        self._step_tokens += tokens

    def step_end(self) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        now = time.perf_counter()
        if self._t is not None:  # steps after the first (allocation, kernel selection)
            self.seconds += now - self._t
            self.tokens += self._step_tokens
            self.steps += 1
        self._t, self._step_tokens = now, 0


def train_overrides(args, tuning: str, model_dir: Path, data: Path) -> list[str]:
    micro = 2 if tuning == "qlora" else args.micro_batch
    return [f"model.path={model_dir}", f"tuning={tuning}", f"train.data={data}", f"cache_dir={args.work}/cache",
            f"train.max_length={args.max_length}", f"train.micro_batch_size={micro}",
            f"train.effective_batch_size={micro}", f"train.max_steps={args.steps + 1}", "train.epochs=1000",
            "train.packing=true", f"train.gradient_checkpointing={tuning == 'qlora'}",
            *(["trainer=cpu"] if args.smoke else ["trainer=gpu"])]


def run_ours(args, tuning: str, model_dir: Path, data: Path) -> dict:
    import lightning.pytorch as L
    import torch

    from alpacare.training import models
    from alpacare.training.data import load_alpaca_records, tokenize_examples
    from alpacare.training.module import InstructionTuner

    cfg = compose(["logger=none", *train_overrides(args, tuning, model_dir, data)])
    L.seed_everything(0, verbose=False)
    tokenizer = models.load_tokenizer(cfg.model, cfg.cache_dir)
    examples, _ = tokenize_examples(load_alpaca_records(data), tokenizer, cfg.train.max_length)
    device = "cpu" if args.smoke else "cuda:0"
    model = models.load_model(cfg.model, cfg.tuning, cfg.cache_dir, tokenizer=tokenizer, device=device,
                              gradient_checkpointing=cfg.train.gradient_checkpointing, precision=str(cfg.trainer.precision))
    module = InstructionTuner(model, examples, train_cfg=cfg.train, lr=cfg.tuning.lr, pad_token_id=tokenizer.pad_token_id,
                              fingerprint="gpu_check")
    clock = Clock()

    class Timing(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            clock.add(batch["num_tokens"])
            clock.step_end()  # one micro-batch per step here

    trainer = L.Trainer(accelerator=cfg.trainer.accelerator, devices=1, precision=cfg.trainer.precision,
                        max_steps=cfg.train.max_steps, gradient_clip_val=cfg.trainer.gradient_clip_val,
                        callbacks=[Timing()], logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, use_distributed_sampler=False, num_sanity_val_steps=0)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(module)
    return result(clock, models.trainable_parameters(model)[0], model, tuning, cfg.train.max_length)


def run_hf(args, model_dir: Path, data: Path) -> dict:
    """The release's recipe: transformers Trainer + peft, random batches padded to the longest."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback, TrainingArguments

    from alpacare.training.data import IGNORE_INDEX, load_alpaca_records, tokenize_examples

    cfg = compose(["logger=none", *train_overrides(args, "lora", model_dir, data)])
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    examples, _ = tokenize_examples(load_alpaca_records(data), tokenizer, cfg.train.max_length)
    dataset = [{"input_ids": e.input_ids, "labels": e.labels} for e in examples]
    dtype = torch.float32 if args.smoke else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to("cpu" if args.smoke else "cuda:0")
    t = cfg.tuning
    targets = t.lora_target_modules if isinstance(t.lora_target_modules, str) else list(t.lora_target_modules)
    model = get_peft_model(model, LoraConfig(r=t.lora_r, lora_alpha=t.lora_alpha, lora_dropout=t.lora_dropout,
                                             target_modules=targets, task_type="CAUSAL_LM"))
    clock = Clock()
    pending: list[int] = []

    def pad_to_longest(instances):  # Alpaca's DataCollatorForSupervisedDataset
        ids = torch.nn.utils.rnn.pad_sequence([i["input_ids"] for i in instances], batch_first=True,
                                              padding_value=tokenizer.pad_token_id)
        labels = torch.nn.utils.rnn.pad_sequence([i["labels"] for i in instances], batch_first=True,
                                                 padding_value=IGNORE_INDEX)
        mask = ids.ne(tokenizer.pad_token_id)
        pending.append(int(mask.sum()))
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    class Timing(TrainerCallback):
        def on_step_end(self, *a, **k):
            clock.add(pending.pop(0))
            clock.step_end()

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(
            output_dir=out, per_device_train_batch_size=cfg.train.micro_batch_size, max_steps=args.steps + 1,
            learning_rate=t.lr, bf16=not args.smoke, use_cpu=args.smoke, logging_strategy="no", save_strategy="no",
            report_to=[], dataloader_num_workers=0, seed=0, remove_unused_columns=False, disable_tqdm=True,
        )
        clock.step_end()  # start of the first step
        Trainer(model=model, args=targs, train_dataset=dataset, data_collator=pad_to_longest,
                callbacks=[Timing()]).train()
    return result(clock, sum(p.numel() for p in model.parameters() if p.requires_grad), model, "lora",
                  cfg.train.max_length)


def result(clock: Clock, trainable: int, model, tuning: str, max_length: int) -> dict:
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    c = base.config
    matmul = sum(m.weight.numel() for n, m in base.named_modules()
                 if isinstance(m, torch.nn.Linear) and "lora_" not in n)
    if tuning == "qlora":  # 4-bit Linear4bit modules are not nn.Linear subclasses everywhere: count by shape
        h, i, L, v = c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.vocab_size
        kv = h * c.num_key_value_heads // c.num_attention_heads
        matmul = L * (2 * h * h + 2 * h * kv + 3 * h * i) + h * v
    forward = 2 * matmul + 2 * c.num_hidden_layers * c.hidden_size * max_length  # per token, rows ~ full
    per_token = forward * (3 if tuning == "full" else 2) + 4 * trainable
    tokens_per_s = clock.tokens / clock.seconds if clock.seconds else 0.0
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return {"tokens_per_s": tokens_per_s, "flops_per_token": per_token, "peak_gb": peak, "steps": clock.steps}


# -- 2. FSDP full fine-tune: the model dir equals the checkpoint ------------------------------------------


def run_fsdp(args, model_dir: Path, data: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    run_dir = Path(tempfile.mkdtemp(dir=args.work, prefix="fsdp_"))  # fresh: no resume from an older run
    stats = run_stage("train", [
        f"model.path={model_dir}", "tuning=full", f"train.data={data}", f"cache_dir={args.work}/cache",
        "trainer=fsdp", "trainer.devices=1", "trainer.strategy.state_dict_type=full", "train.max_length=512",
        "train.micro_batch_size=4", "train.effective_batch_size=4", "train.max_steps=3", "train.lr=1e-4",
        "trainer.enable_progress_bar=false",
        # --smoke: the same Lightning FSDPStrategy on one CPU process (alpacare/training/fsdp.py).
        *(["trainer.accelerator=cpu", "trainer.precision=32-true"] if args.smoke else [])], run_dir)
    saved = AutoModelForCausalLM.from_pretrained(run_dir / "train" / "model", dtype=torch.float32).state_dict()
    ckpt = torch.load(run_dir / "train" / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    trained = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    shared = sorted(set(saved) & set(trained))
    worst = max(float((saved[k].float() - trained[k].float()).abs().max()) for k in shared)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).state_dict()
    moved = max(float((saved[k].float() - base[k].float()).abs().max()) for k in shared)
    return {"equal": worst == 0.0 and len(shared) == len(trained), "max_abs_diff": worst, "changed_by": moved,
            "tensors": len(shared), "steps": stats["steps"]}


# -- 3 and 4. vLLM against HF ---------------------------------------------------------------------------


def run_predict(args, backend: str, model_dir: Path, prompts: Path) -> dict:
    run_dir = Path(tempfile.mkdtemp(dir=args.work, prefix=f"predict_{backend}_"))  # fresh: no resumed work log
    stats = run_stage("predict", [f"predict.model={model_dir}", f"predict.test_sets=[{prompts}]", "predict.limit=null",
                                  f"predict.backend={backend}", "predict.max_new_tokens=128", "predict.batch_size=64",
                                  "predict.dtype=bfloat16", f"cache_dir={args.work}/cache"], run_dir)
    out = next(p for p in (run_dir / "predict").glob("*.jsonl") if not p.name.endswith(".log.jsonl"))
    answers = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    rate = next(iter(stats["test_sets"].values()))["new_tokens_per_s"]
    return {"new_tokens_per_s": rate, "outputs": [a["output"] for a in sorted(answers, key=lambda a: a["index"])]}


def run_benchmark(args, backend: str, model_dir: Path) -> dict:
    stats = run_stage("benchmark", [f"benchmark.model={model_dir}", "benchmark=smoke", f"benchmark.backend={backend}",
                                    "benchmark.dtype=bfloat16", f"cache_dir={args.work}/cache"],
                      Path(tempfile.mkdtemp(dir=args.work, prefix=f"benchmark_{backend}_")))
    return {"table": {f"{r['task']}/{r['metric']}": r["value"] for r in stats["table"]}}


# -- driver ----------------------------------------------------------------------------------------------


def one(args) -> dict:
    work = Path(args.work)
    tok = tokenizer_dir(work / "tokenizer")
    device = "cpu" if args.smoke else "cuda"
    big = random_model_dir(work / ("tiny" if args.smoke else "llama7b"), TINY if args.smoke else LLAMA_7B, tok, device)
    data = work / "train.json"
    if not data.exists():
        data.write_text(json.dumps(synthetic_records(args.examples, max_words=args.max_length)))
    if args.one == "lora":
        return run_ours(args, "lora", big, data)
    if args.one == "qlora":
        return run_ours(args, "qlora", big, data)
    if args.one == "hf-lora":
        return run_hf(args, big, data)
    small = big if args.smoke else random_model_dir(work / "llama1b", LLAMA_1B, tok, device)
    if args.one == "fsdp":
        return run_fsdp(args, small, data)
    prompts = work / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"instruction": r["instruction"]}) + "\n"
                               for r in synthetic_records(args.prompts, 20, seed=1)))
    if args.one.startswith("predict-"):
        return run_predict(args, args.one.split("-", 1)[1], small, prompts)
    if args.one.startswith("benchmark-"):
        return run_benchmark(args, args.one.split("-", 1)[1], small)
    raise SystemExit(f"unknown check {args.one}")


def child(args, name: str, timeout: float) -> tuple[dict | None, str]:
    cmd = [sys.executable, __file__, "--one", name, "--work", args.work, *(["--smoke"] if args.smoke else []),
           f"--steps={args.steps}", f"--micro-batch={args.micro_batch}", f"--max-length={args.max_length}",
           f"--examples={args.examples}", f"--prompts={args.prompts}"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s"
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        tail = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()][-1:] or ["no output"]
        return None, f"failed: {tail[0][:200]}"
    return json.loads(lines[-1][len("RESULT "):]), ""


def peak_tflops(args) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU (checks the script, measures nothing)")
    parser.add_argument("--checks", nargs="+", default=["lora", "hf-lora", "qlora", "fsdp", "predict", "benchmark"])
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps (after one warm-up)")
    parser.add_argument("--micro-batch", type=int, default=8, help="rows of max length per step (LoRA and HF)")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--examples", type=int, default=400)
    parser.add_argument("--prompts", type=int, default=256, help="prompts for predict hf vs vllm")
    parser.add_argument("--peak-tflops", type=float, help="bf16 dense peak of the GPU, if not in PEAK_TFLOPS")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per check")
    parser.add_argument("--work", help="work dir (model dirs are reused across runs)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "disabled")
    if args.smoke:
        args.steps, args.micro_batch, args.max_length, args.examples, args.prompts = 2, 2, 128, 16, 4
    if args.one:
        print("RESULT " + json.dumps(one(args)), flush=True)
        return
    args.work = args.work or tempfile.mkdtemp(prefix="gpu_check-")
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    if not args.smoke and gpu == "no GPU":
        raise SystemExit("gpu_check: no CUDA device; run with --smoke to check the script on CPU")
    peak = peak_tflops(args)
    has_vllm = importlib.util.find_spec("vllm") is not None
    has_bnb = importlib.util.find_spec("bitsandbytes") is not None
    print(f"gpu_check: {gpu}, bf16 peak {peak or '?'} TFLOP/s, torch {torch.__version__}, work dir {args.work}"
          + (" (--smoke: tiny shapes, figures mean nothing)" if args.smoke else ""), flush=True)
    rows: list[tuple[str, str, str, str, str]] = []  # check, ours, baseline, ratio/verdict, goal
    res: dict[str, dict] = {}

    def mfu(r):
        return f"{100 * r['tokens_per_s'] * r['flops_per_token'] / (peak * 1e12):.1f}%" if peak and r else "-"

    for name in [c for c in ("lora", "hf-lora", "qlora") if c in args.checks]:
        if name == "qlora" and not has_bnb:
            rows.append(("qlora", "skipped: bitsandbytes is not installed", "", "", "peak <= 10 GB"))
            continue
        res[name], why = child(args, name, args.timeout)
        if why:
            rows.append((name, why, "", "", ""))
    for name in ("lora", "qlora"):
        r = res.get(name)
        if not r:
            continue
        base = res.get("hf-lora") if name == "lora" else None
        ratio = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x tokens/s" if base else ""
        peak_gb = f", peak {r['peak_gb']:.1f} GB" if r["peak_gb"] is not None else ""
        rows.append((f"{name} tokens/s (MFU)", f"{r['tokens_per_s']:.0f} ({mfu(r)}){peak_gb}",
                     (f"hf-lora {base['tokens_per_s']:.0f} ({mfu(base)})"
                      + (f", peak {base['peak_gb']:.1f} GB" if base["peak_gb"] is not None else "")) if base else "",
                     ratio, ">= 1.5x, MFU >= 40%" if name == "lora" else "peak <= 10 GB"))
    if "fsdp" in args.checks:
        r, why = child(args, "fsdp", args.timeout)
        rows.append(("fsdp full fine-tune", why or f"{r['tensors']} tensors, max |diff| {r['max_abs_diff']:.2e} "
                     f"(training moved weights by up to {r['changed_by']:.2e})", "", "" if why else
                     ("equal" if r["equal"] else "DIFFERENT"), "model dir == checkpoint"))
    for kind in [k for k in ("predict", "benchmark") if k in args.checks]:
        if not has_vllm:
            line = (f"{kind} vllm vs hf", "skipped: vLLM is not installed (pip install -e '.[vllm]')", "", "", "")
            if args.smoke:  # the HF half still checks this script's code path
                hf, why = child(args, f"{kind}-hf", args.timeout)
                line = line[:2] + (why or (f"hf {hf['new_tokens_per_s']:.0f} new tokens/s" if kind == "predict"
                                           else json.dumps(hf["table"])),) + line[3:]
            rows.append(line)
            continue
        hf, why_hf = child(args, f"{kind}-hf", args.timeout)
        vl, why_vl = child(args, f"{kind}-vllm", args.timeout)
        if why_hf or why_vl:
            rows.append((f"{kind} vllm vs hf", why_vl or "", why_hf or "", "", ""))
            continue
        if kind == "predict":
            same = sum(a == b for a, b in zip(hf["outputs"], vl["outputs"]))
            rows.append(("predict vllm vs hf", f"{vl['new_tokens_per_s']:.0f} new tokens/s",
                         f"hf {hf['new_tokens_per_s']:.0f}", f"{vl['new_tokens_per_s'] / hf['new_tokens_per_s']:.1f}x; "
                         f"{same}/{len(hf['outputs'])} answers equal", ">= 10x, answers equal"))
            for i, (a, b) in enumerate(zip(hf["outputs"], vl["outputs"])):
                if a != b:
                    k = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
                    print(f"  predict item {i}: first difference at character {k}: hf {a[k:k + 30]!r} / vllm {b[k:k + 30]!r}")
        else:
            diff = {k: (v, vl["table"].get(k)) for k, v in hf["table"].items() if vl["table"].get(k) != v}
            rows.append(("benchmark vllm vs hf", json.dumps(vl["table"]), json.dumps(hf["table"]),
                         "equal" if not diff else f"differ: {diff}", "equal scores"))

    widths = [max(len(r[i]) for r in rows + [("check", "ours", "baseline", "ratio / verdict", "goal")]) for i in range(5)]
    header = ("check", "ours", "baseline", "ratio / verdict", "goal")
    print()
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print(" | ".join(cell.ljust(w) for cell, w in zip(row, widths)))


if __name__ == "__main__":
    main()
