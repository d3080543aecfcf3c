"""The predict stage and the inference loader: batched answers equal one-at-a-time answers,
only new tokens are decoded, a killed run resumes without redoing items, a changed model is
refused, and the saved tokenizer's chat template is the Alpaca prompt."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alpacare.prompts.alpaca import alpaca_chat_template, format_prompt
from tests.conftest import REPO, SHARED_DATA, cli_env, run_cli
from tests.test_pipeline import assert_one_line_error
from tests.test_train_support import cache_dir, smollm_tokenizer_dir, tiny_model_dir  # noqa: F401  (fixtures)

needs_data = pytest.mark.skipif(not (SHARED_DATA / "MedInstruct-test.jsonl").is_file(), reason="needs ../shared/alpacare-data")


def _medinstruct(n: int) -> list[str]:
    from alpacare.data.eval_sets import load_items

    return [format_prompt(it["instruction"], it["input"]) for it in load_items("medinstruct")[:n]]


@needs_data
def test_batched_greedy_answers_equal_one_at_a_time(tiny_model_dir):
    from alpacare.evaluation.inference import Decoding, generate, load_for_inference

    im = load_for_inference(str(tiny_model_dir), "predict.model")
    prompts = _medinstruct(8)
    decoding = Decoding(max_new_tokens=12)
    batched = generate(im, prompts, decoding, batch_size=8)
    single = generate(im, prompts, decoding, batch_size=1)
    assert [g.text for g in batched] == [g.text for g in single]
    assert [g.new_tokens for g in batched] == [g.new_tokens for g in single]
    # Only generated tokens are decoded: no prompt text leaks into an answer.
    assert all("### Instruction" not in g.text for g in batched)


def test_length_sorted_batches_cover_every_index_once():
    from alpacare.evaluation.inference import length_sorted_batches

    batches = length_sorted_batches([5, 1, 9, 3, 7], 2)
    assert batches == [[2, 4], [0, 3], [1]]


def test_chat_template_is_the_alpaca_prompt(smollm_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm_tokenizer_dir)
    tok.chat_template = alpaca_chat_template()
    plain = tok.apply_chat_template([{"role": "user", "content": "Define anemia."}], tokenize=False,
                                    add_generation_prompt=True)
    assert plain == format_prompt("Define anemia.")
    with_input = tok.apply_chat_template([{"role": "user", "content": "Summarize.", "input": "Cough for 3 weeks."}],
                                         tokenize=False, add_generation_prompt=True)
    assert with_input == format_prompt("Summarize.", "Cough for 3 weeks.")
    dialog = tok.apply_chat_template([{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}],
                                     tokenize=False)
    assert dialog == format_prompt("Q?") + "A." + tok.eos_token


@needs_data
def test_predict_writes_aligned_records_and_resumes_after_kill(tmp_path, tiny_model_dir):
    run_dir = tmp_path / "run"
    args = ["stages=[predict]", f"predict.model={tiny_model_dir}", "predict.limit=6", "predict.batch_size=1",
            "predict.max_new_tokens=48", "logger=none", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen([sys.executable, "-m", "alpacare", *args], cwd=REPO, env=cli_env(tmp_path),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = run_dir / "predict" / "medinstruct.log.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(log.read_text().splitlines())
    assert 2 <= done_before < 6, "the run finished before it could be killed; make it slower"
    assert not (run_dir / "predict" / "medinstruct.jsonl").exists()

    proc = run_cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = [json.loads(line) for line in (run_dir / "predict" / "medinstruct.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(6))
    assert {"id", "instruction", "input", "output", "generator", "finish_reason", "new_tokens"} <= set(records[0])
    tests = [json.loads(line) for line in (SHARED_DATA / "MedInstruct-test.jsonl").read_text().splitlines()][:6]
    assert [r["instruction"] for r in records] == [t["instruction"].strip() for t in tests]
    logged = [json.loads(line)["index"] for line in log.read_text().splitlines()]
    assert sorted(logged) == list(range(6))  # nothing generated twice
    stats = json.loads((run_dir / "predict" / "stats.json").read_text())
    assert stats["test_sets"]["medinstruct"]["resumed"] == done_before
    assert stats["settings"]["template"] == "alpaca" and stats["settings"]["max_new_tokens"] == 48

    # Another model on the same run dir is refused rather than mixed in.
    proc = run_cli([*args, "predict.max_new_tokens=8"], tmp_path)
    assert_one_line_error(proc, "predict.max_new_tokens: 48 -> 8", "predict.allow_changed_settings=true")


@needs_data
def test_user_test_set_file_and_bad_names(tmp_path, tiny_model_dir):
    mine = tmp_path / "mine.jsonl"
    mine.write_text('{"instruction": "Define sepsis.", "input": ""}\n{"instruction": "Summarize.", "input": "Fever and cough."}\n')
    run_dir = tmp_path / "run"
    base = ["stages=[predict]", f"predict.model={tiny_model_dir}", "predict.max_new_tokens=4", "logger=none",
            f"hydra.run.dir={run_dir}"]
    proc = run_cli([*base, f"predict.test_sets=[{mine}]"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = [json.loads(line) for line in (run_dir / "predict" / "mine.jsonl").read_text().splitlines()]
    assert [r["input"] for r in records] == ["", "Fever and cough."]
    assert_one_line_error(run_cli([*base, "predict.test_sets=[medqa]"], tmp_path),
                          "predict.test_sets: unknown test set 'medqa'")
    assert_one_line_error(run_cli([*base[:1], "predict.model=/nowhere/model", *base[2:]], tmp_path),
                          "predict.model=/nowhere/model: no such model directory")
    assert_one_line_error(run_cli(["stages=[predict]", "logger=none", f"hydra.run.dir={tmp_path / 'empty'}"], tmp_path),
                          "predict: needs train/model", "predict.model=PATH")


def test_adapter_dirs_load_merged_and_answer_like_the_adapter(tmp_path, tiny_model_dir):
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alpacare.evaluation.inference import load_for_inference

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(adapter)

    im = load_for_inference(str(adapter), "predict.model")
    assert im.adapter and not isinstance(im.model, PeftModel)  # merged once, plain weights
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), adapter).eval()
    ids = torch.tensor([[1, 5, 9, 42, 7]])
    with torch.inference_mode():
        torch.testing.assert_close(im.model(ids).logits, reference(ids).logits, atol=1e-4, rtol=1e-4)
