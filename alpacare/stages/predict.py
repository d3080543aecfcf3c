"""Stage 5, ``predict``: the model answers the free-form test sets.

Input: ``predict.model`` (a model dir, adapter dir or Hugging Face id), by default this run's
``train/model``. Test sets by name (MedInstruct-test, iCliniq, AlpacaFarm; alpacare/data/eval_sets.py)
or as files. Prompts are in the template the model was trained with (``prompt_template.json`` in its
dir, else Alpaca; ``predict.template`` overrides; alpacare/prompts/chat.py); decoding is greedy unless
``predict.do_sample=true``, and only the generated tokens are decoded (alpacare/evaluation/inference.py).

Resume: every finished batch is appended to ``predict/<test_set>.log.jsonl``; a run killed at any
point and restarted on the same run dir generates only the missing items. ``predict/settings.json``
records what decides the answers (model, backend, dtype, decoding; alpacare/fingerprint.py), so a
changed setting is one clear error naming it instead of a file that mixes two models. Outputs, written atomically once a test set
is done: ``predict/<test_set>.jsonl`` (one record per item: index, id, instruction, input, output,
generator, finish_reason, new_tokens) and ``stats.json`` (counts, speed, prompt and decoding settings).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from alpacare.data.eval_sets import check_eval_set, eval_set_name, load_test_items
from alpacare.data.jsonl import AppendLog, write_jsonl_atomic
from alpacare.fingerprint import check_settings
from alpacare.evaluation.inference import (
    Decoding, Generation, InferenceModel, generate, generate_vllm, load_for_inference, load_vllm, model_name,
)
from alpacare.prompts.chat import format_conversation, format_task, template_of
from alpacare.stages import MODEL, PREDICTIONS, StageContext

log = logging.getLogger(__name__)

WORK_LOG_SUFFIX = ".log.jsonl"


def check(cfg: Any) -> None:
    """Before any stage runs: every test set is known (or a file) and its data is present."""
    for spec in cfg.predict.test_sets:
        check_eval_set(str(spec), "predict.test_sets", cfg.cache_dir)


def decoding_of(cfg: Any) -> Decoding:
    return Decoding(cfg.max_new_tokens, cfg.do_sample, cfg.temperature, cfg.top_p)


def settings(source: str, cfg: Any, template: str = "alpaca") -> dict[str, Any]:
    """What decides the answers. Not the batch size (answers do not depend on it: tests/test_predict.py)
    nor the limit or the test sets (raising or adding them extends finished work)."""
    d = decoding_of(cfg)
    return {"predict.model": source, "predict.backend": cfg.backend, "predict.dtype": cfg.dtype,
            "prompt_template": template, "predict.max_new_tokens": d.max_new_tokens,
            "predict.do_sample": d.do_sample, "predict.temperature": d.temperature if d.do_sample else None,
            "predict.top_p": d.top_p if d.do_sample else None, "predict.seed": cfg.seed if d.do_sample else None}


def run(ctx: StageContext) -> dict[str, Any]:
    cfg = ctx.cfg.predict
    source = ctx.model_source(MODEL)
    generator = cfg.name or model_name(source)
    decoding = decoding_of(cfg)
    template = template_of(source, cfg.template)  # the model dir's train.template unless overridden
    check_settings(ctx.dir, settings(source, cfg, template), stage="predict", allow_changed=cfg.allow_changed_settings,
                   has_work=any(p.stat().st_size for p in ctx.dir.glob(f"*{WORK_LOG_SUFFIX}")))
    loaded: list[Any] = []

    def engine() -> Any:
        """The stage's one model (hf) or vLLM engine, built at first use and kept for every test set."""
        if not loaded:
            log.info("predict: loading %s (%s)", source, cfg.backend)
            if cfg.backend == "vllm":
                loaded.append(load_vllm(source, dtype=cfg.dtype, merged_dir=ctx.dir / "vllm_merged_model", seed=cfg.seed))
            else:
                loaded.append(load_for_inference(source, "predict.model", dtype=cfg.dtype, device=cfg.device,
                                                 template=template))
        return loaded[0]

    def prompt_of(item: dict[str, Any]) -> str:
        """The training prompt (a conversation's: every turn, alpacare/prompts/chat.py); ``chat``
        needs the model's tokenizer (the engine's)."""
        tokenizer = None
        if template != "alpaca":
            e = engine()
            tokenizer = e.tokenizer if isinstance(e, InferenceModel) else e.get_tokenizer()
        if "messages" in item:
            return format_conversation(template, tokenizer, item["messages"])
        return format_task(template, tokenizer, item["instruction"], item["input"])

    per_set: dict[str, dict[str, Any]] = {}
    for spec in cfg.test_sets:
        name = eval_set_name(str(spec))
        # HealthBench: a seeded subset (healthbench.seed), items keep their index in the file.
        items = load_test_items(str(spec), cfg.limit, ctx.cfg.healthbench.seed, ctx.cfg.cache_dir)
        prompts = [prompt_of(it) for it in items]
        started = time.perf_counter()
        with AppendLog(ctx.dir / f"{name}{WORK_LOG_SUFFIX}") as work:
            done = {r["index"] for r in work.records}
            todo = [k for k, it in enumerate(items) if it["index"] not in done]
            log.info("predict: %s, %d items, %d already answered", name, len(items), len(items) - len(todo))
            if todo:
                _answer(ctx, engine, [prompts[k] for k in todo], [items[k]["index"] for k in todo], work,
                        desc=f"predict {name}", template=template)
            answers = {r["index"]: r for r in work.records}
        seconds = time.perf_counter() - started
        records = [{**it, "output": answers[it["index"]]["output"], "generator": generator,
                    "finish_reason": answers[it["index"]]["finish_reason"],
                    "new_tokens": answers[it["index"]]["new_tokens"]} for it in items]
        write_jsonl_atomic(PREDICTIONS.path(ctx.run_dir, test_set=name), records)
        new_tokens = sum(answers[items[k]["index"]]["new_tokens"] for k in todo)
        per_set[name] = {
            "items": len(items),
            "generated": len(todo),
            "resumed": len(items) - len(todo),
            "empty_outputs": sum(not r["output"].strip() for r in records),
            "stopped_at_max_new_tokens": sum(r["finish_reason"] == "length" for r in records),
            "mean_new_tokens": round(sum(r["new_tokens"] for r in records) / max(len(records), 1), 1),
            "new_tokens_per_s": round(new_tokens / seconds, 1) if todo and seconds > 0 else None,
        }
    im = loaded[0] if loaded and isinstance(loaded[0], InferenceModel) else None
    stats = {
        "model": source,
        "generator": generator,
        "test_sets": per_set,
        "items": sum(s["items"] for s in per_set.values()),
        "generated": sum(s["generated"] for s in per_set.values()),
        "records_in": sum(s["items"] for s in per_set.values()), "records_out": sum(s["items"] for s in per_set.values()),
        "settings": {"template": template, "backend": cfg.backend, "batch_size": cfg.batch_size,
                     "limit": cfg.limit, "dtype": im.dtype if im else cfg.dtype, "device": im.device if im else cfg.device,
                     **decoding.__dict__},
    }
    ctx.write_stats(stats)
    if Path(source).is_dir():  # a hub id is no local artifact
        ctx.use_artifact(MODEL, Path(source))
    for name in per_set:
        ctx.log_artifact(PREDICTIONS, test_set=name)
    ctx.tracker.log({f"predict/{name}/{k}": v for name, s in per_set.items() for k, v in s.items() if v is not None})
    return {"items": stats["items"], "generated": stats["generated"], "generator": generator,
            **{f"{name}_stopped_at_max": s["stopped_at_max_new_tokens"] for name, s in per_set.items()}}


def _answer(ctx: StageContext, engine, prompts: list[str], indices: list[int], work: AppendLog, desc: str,
            template: str = "alpaca") -> None:
    cfg = ctx.cfg.predict
    bar = tqdm(total=len(prompts), desc=desc, unit="item", dynamic_ncols=True)

    def record(batch: list[int], generations: list[Generation]) -> None:
        for k, g in zip(batch, generations):
            work.append({"index": indices[k], "output": g.text, "finish_reason": g.finish_reason,
                         "new_tokens": g.new_tokens})
        bar.update(len(batch))

    try:
        if cfg.backend == "vllm":
            record(list(range(len(prompts))), generate_vllm(engine(), prompts, decoding_of(cfg), seed=cfg.seed, template=template))
        else:
            generate(engine(), prompts, decoding_of(cfg), batch_size=cfg.batch_size, on_batch=record, seed=cfg.seed)
    finally:
        bar.close()
