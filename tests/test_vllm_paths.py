"""The vLLM paths without a GPU: one engine per stage, and one definition of ``new_tokens``.

vLLM cannot run here (no GPU, not installed), so where a stage would build a vLLM engine these tests
put a small stand-in in its place that answers with the real tiny model, in vLLM's output shape
(``outputs[0].text / token_ids / finish_reason``; ``token_ids`` end with the EOS the engine stopped on).
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from types import SimpleNamespace


from tests.test_train_support import compose, smollm_tokenizer_dir, tiny_model_dir  # noqa: F401  (fixtures)


def _eos_forced(im, prompt: str, at: int) -> int:
    """Make the token the model writes at position ``at`` for ``prompt`` its EOS, so it stops there."""
    import torch

    ids = im.tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        row = im.model.generate(**ids, max_new_tokens=at + 1, do_sample=False)[0, ids["input_ids"].shape[1]:].tolist()
    eos = row[at]
    im.tokenizer.eos_token = im.tokenizer.convert_ids_to_tokens(eos)
    im.model.generation_config.eos_token_id = eos
    return eos


def test_new_tokens_is_one_definition_on_both_backends(tiny_model_dir):  # noqa: F811
    """transformers pads a stopped row after its EOS, vLLM's token_ids end with it: both count the answer only."""
    import torch

    from alpacare.evaluation.inference import Decoding, answer_tokens, generate, generation_from_vllm, load_for_inference

    im = load_for_inference(str(tiny_model_dir), "predict.model")
    prompts = ["Explain sepsis.", "List three causes of chest pain in adults, with one line each."]
    eos = _eos_forced(im, prompts[0], at=3)
    hf = generate(im, prompts, Decoding(max_new_tokens=8), batch_size=2)
    for prompt, g in zip(prompts, hf):
        ids = im.tokenizer(prompt, return_tensors="pt")
        with torch.inference_mode():
            row = im.model.generate(**ids, max_new_tokens=8, do_sample=False)[0, ids["input_ids"].shape[1]:].tolist()
        vllm_ids = row[: row.index(eos) + 1] if eos in row else row  # what vLLM returns: up to and with the EOS
        completion = SimpleNamespace(text=im.tokenizer.decode(vllm_ids, skip_special_tokens=True), token_ids=vllm_ids,
                                     finish_reason="stop" if eos in row else "length")
        v = generation_from_vllm(completion, eos)
        assert (v.new_tokens, v.finish_reason) == (g.new_tokens, g.finish_reason), prompt
    assert hf[0].finish_reason == "stop" and hf[0].new_tokens <= 3
    # The rule itself, on both shapes: padding after EOS (transformers) and a trailing EOS (vLLM).
    assert answer_tokens([5, 6, 2, 0, 0], 2, 0) == ([5, 6], True) == answer_tokens([5, 6, 2], 2)
    assert answer_tokens([5, 6, 7], 2) == ([5, 6, 7], False)


class _Engines:
    """Stand-in for ``vllm`` (module): ``LLM`` answers with the real model, counted per construction."""

    def __init__(self):
        self.built: list[str] = []
        engines = self

        class LLM:
            def __init__(self, model, dtype="auto", seed=0):
                from alpacare.evaluation.inference import load_for_inference

                engines.built.append(model)
                self.im = load_for_inference(model, "vllm stand-in", dtype="float32", device="cpu")

            def get_tokenizer(self):
                return self.im.tokenizer

            def generate(self, prompts, params):
                import torch

                outs = []
                for prompt in prompts:
                    ids = self.im.tokenizer(prompt, return_tensors="pt")
                    with torch.inference_mode():
                        row = self.im.model.generate(**ids, max_new_tokens=params.max_tokens, do_sample=False)
                    row = row[0, ids["input_ids"].shape[1]:].tolist()
                    eos = self.im.tokenizer.eos_token_id
                    ids_out = row[: row.index(eos) + 1] if eos in row else row
                    text = self.im.tokenizer.decode(ids_out, skip_special_tokens=True)
                    outs.append(SimpleNamespace(outputs=[SimpleNamespace(text=text, token_ids=ids_out,
                                                                         finish_reason="stop" if eos in row else "length")]))
                return outs

        class SamplingParams:
            def __init__(self, max_tokens, temperature, top_p, seed):
                self.max_tokens = max_tokens

        self.module = types.ModuleType("vllm")
        self.module.LLM, self.module.SamplingParams = LLM, SamplingParams


def _run_stage(name: str, overrides: list[str], run_dir: Path) -> dict:
    import importlib

    from alpacare.config import validate
    from alpacare.stages import STAGES, Resources, StageContext
    from alpacare.tracking import Tracker

    cfg = compose(["logger=none", f"stages=[{name}]", *overrides])
    validate(cfg)
    tracker = Tracker(cfg, run_dir, name, "test", "test")
    ctx = StageContext(cfg=cfg, run_dir=run_dir, spec=STAGES[name], tracker=tracker, resources=Resources(cfg))
    try:
        return importlib.import_module(f"alpacare.stages.{name}").run(ctx)
    finally:
        tracker.finish()


def test_predict_builds_one_vllm_engine_for_all_test_sets_and_counts_like_hf(tmp_path, monkeypatch, tiny_model_dir):  # noqa: F811
    engines = _Engines()
    monkeypatch.setitem(sys.modules, "vllm", engines.module)
    sets = []
    for k in range(2):
        path = tmp_path / f"set{k}.jsonl"
        path.write_text("".join(json.dumps({"instruction": f"Explain symptom {k}-{i}.", "input": ""}) + "\n" for i in range(2)))
        sets.append(str(path))
    common = [f"predict.model={tiny_model_dir}", f"predict.test_sets=[{','.join(sets)}]", "predict.max_new_tokens=6"]
    _run_stage("predict", [*common, "predict.backend=vllm"], tmp_path / "vllm")
    assert engines.built == [str(tiny_model_dir)]  # one engine, both test sets
    _run_stage("predict", [*common, "predict.backend=hf", "predict.batch_size=1"], tmp_path / "hf")
    for k in range(2):
        v, h = ([json.loads(x) for x in (tmp_path / run / "predict" / f"set{k}.jsonl").read_text().splitlines()]
                for run in ("vllm", "hf"))
        assert [(r["output"], r["new_tokens"], r["finish_reason"]) for r in v] == \
            [(r["output"], r["new_tokens"], r["finish_reason"]) for r in h]


def test_benchmark_builds_one_engine_for_every_task(tmp_path, monkeypatch, tiny_model_dir):  # noqa: F811
    """backend=vllm on the smoke suite (multiple choice and summarization): lm-eval's engine is the only
    one; nothing else may load the model beside it. lm-eval's VLLM wrapper is stood in by its HFLM."""
    from alpacare.evaluation import inference
    from alpacare.evaluation.benchmarks import runner

    built = []
    real_loader = inference.load_for_inference

    def one_engine(source, dtype, batch_size, seed, merged_dir):
        from lm_eval.models.huggingface import HFLM

        built.append(source)
        im = real_loader(source, "benchmark.model", dtype="float32", device="cpu")
        return HFLM(pretrained=im.model, tokenizer=im.tokenizer, batch_size=4, device="cpu")

    def second_engine(*args, **kwargs):
        raise AssertionError("a second engine was built beside lm-eval's")

    monkeypatch.setattr(runner, "vllm_lm", one_engine)
    for name in ("load_vllm", "generate_vllm", "load_for_inference", "generate"):
        monkeypatch.setattr(inference, name, second_engine)
    monkeypatch.setenv("DISABLE_MULTIPROC", "1")  # lm-eval's bootstrap in-process: same numbers, no pool
    _run_stage("benchmark", [f"benchmark.model={tiny_model_dir}", "benchmark.backend=vllm", "benchmark.limit=2",
                             "benchmark.batch_size=4"], tmp_path / "run")
    assert built == [str(tiny_model_dir)]
    results = json.loads((tmp_path / "run" / "benchmark" / "results.json").read_text())
    assert set(results["results"]) == {"alpacare_smoke_mcq", "alpacare_smoke_meqsum", "alpacare_smoke_meqsum_alpaca"}
