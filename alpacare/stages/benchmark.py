"""Stage 7, ``benchmark``: lm-eval suites (medical, general, smoke) on the model, offline.

Input: ``benchmark.model`` (model dir, adapter dir or Hugging Face id; default this run's
``train/model``), loaded once by the shared inference loader. Suites are config options
(``benchmark=medical|general|all|smoke|none``, conf/benchmark/); each states its tasks and, per task,
the shot count and where that choice comes from. Tasks are lm-eval's own, renamed ``alpacare_*`` and
reading local files (alpacare/evaluation/benchmarks/); ``alpacare_meqsum`` is lm-eval's meqsum
(its prompt, up to 256 new tokens, ROUGE with empty predictions left out of the mean). The user's own
lm-eval YAMLs join with ``benchmark.include_path``; every override applies to them too. One model
wrapper serves every task (``build_lm``).

Outputs: ``benchmark/results.json`` (lm-eval's results dictionary, as ``lm_eval --output_path``
writes it), ``benchmark/tasks/`` (the resolved task YAMLs: ``lm_eval
--include_path`` on that folder reproduces the numbers), ``benchmark/samples_<task>.jsonl`` with
``benchmark.log_samples=true``, and ``stats.json`` with a compact table (task, metric, value,
stderr, n, shots). W&B summary keys: ``benchmark/<task>/<metric>`` (and ``.../<metric>_stderr``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

import yaml

from alpacare.evaluation.benchmarks import tasks_index
from alpacare.evaluation.benchmarks.data import data_root, verify_files
from alpacare.data.jsonl import write_json_atomic, write_jsonl_atomic
from alpacare.errors import ConfigError, first_line
from alpacare.prompts.chat import template_of
from alpacare.stages import BENCHMARK_RESULTS, MODEL, StageContext

log = logging.getLogger(__name__)


def task_names(cfg: Any) -> list[str]:
    return [str(t) for t in (cfg.tasks or [])]


def user_task_names(include_path: Optional[str]) -> set[str]:
    """Task, group and tag names in the user's own lm-eval YAMLs; a malformed file is one line."""
    if not include_path:
        return set()
    root = Path(str(include_path)).expanduser()
    if not root.is_dir():
        raise ConfigError(f"benchmark.include_path={include_path}: no such directory")

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    names: set[str] = set()
    for path in sorted(root.rglob("*.yaml")):
        try:
            doc = yaml.load(path.read_text(encoding="utf-8"), Loader=Loader)
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"benchmark.include_path: {path}{where}: not valid YAML "
                              f"({getattr(e, 'problem', None) or first_line(e)})") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"benchmark.include_path: {path}: expected a mapping of task settings")
        for key in ("task", "group", "tag"):
            value = doc.get(key)
            names.update([value] if isinstance(value, str) else [v for v in (value or []) if isinstance(v, str)])
    return names


def check(cfg: Any) -> None:
    """Before any stage runs: settings in range, every task known, every task's data present."""
    b = cfg.benchmark
    tasks = task_names(b)
    if not tasks:
        return
    if b.backend not in ("hf", "vllm"):
        raise ConfigError(f"benchmark.backend: must be hf or vllm, got {b.backend!r}")
    if not (b.batch_size == "auto" or (isinstance(b.batch_size, int) and b.batch_size > 0)):
        raise ConfigError(f"benchmark.batch_size: must be a positive integer or auto, got {b.batch_size!r}")
    if b.dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise ConfigError("benchmark.dtype: must be auto, float32, bfloat16 or float16")
    if b.limit is not None and b.limit <= 0:
        raise ConfigError("benchmark.limit: must be positive")
    if b.num_fewshot is not None and b.num_fewshot < 0:
        raise ConfigError("benchmark.num_fewshot: must be >= 0")
    user = user_task_names(b.include_path)
    tasks_index.check_task_names([t for t in tasks if t not in user])
    unknown_shots = [t for t in (b.fewshot or {}) if t not in tasks_index.known_names() and t not in user]
    if unknown_shots:
        raise ConfigError(f"benchmark.fewshot: unknown task(s) {unknown_shots}")
    root = data_root(cfg.cache_dir)
    for task in tasks:
        if task in user:
            continue
        verify_files(root, tasks_index.data_needs(task), task)


def fewshot_plan(cfg: Any) -> dict[str, int]:
    """Shots per configured name: ``benchmark.num_fewshot`` for every task, else the suite's map."""
    if cfg.num_fewshot is not None:
        return {t: int(cfg.num_fewshot) for t in task_names(cfg)}
    return {str(k): int(v) for k, v in (cfg.fewshot or {}).items()}


def user_fewshot(cfg: Any, plan: dict[str, int]) -> dict[str, int]:
    """The plan's entries for the user's own tasks (set on lm-eval's task objects by the runner; the
    shipped ones are written into their YAMLs). With ``benchmark.num_fewshot`` none: lm-eval applies
    it to every task, as ``lm_eval --num_fewshot`` does (keeping a task's explicit 0)."""
    if cfg.num_fewshot is not None:
        return {}
    shipped = set(tasks_index.known_names())
    return {name: shots for name, shots in plan.items() if name not in shipped}


def build_lm(cfg: Any, source: str, merged_dir: Path) -> tuple[Any, Optional[Any]]:
    """The stage's one model wrapper (lm-eval's ``HFLM`` or ``VLLM``), built once for every task:
    on a GPU, vLLM takes most of its memory, so no second engine may be started beside it."""
    from alpacare.evaluation.benchmarks import runner

    if cfg.backend == "vllm":
        return runner.vllm_lm(source, cfg.dtype, cfg.batch_size, cfg.seed, merged_dir), None
    from alpacare.evaluation.inference import load_for_inference

    log.info("benchmark: loading %s", source)
    im = load_for_inference(source, "benchmark.model", dtype=cfg.dtype, device=cfg.device, template=cfg.template)
    return runner.hf_lm(im, cfg.batch_size, cfg.max_batch_size), im


def run(ctx: StageContext) -> dict[str, Any]:
    cfg = ctx.cfg.benchmark
    tasks = task_names(cfg)
    if not tasks:
        log.info("benchmark: no tasks (benchmark=none)")
        return {"tasks": 0}
    from alpacare.evaluation.benchmarks import runner

    source = ctx.model_source(MODEL)
    root = data_root(ctx.cfg.cache_dir)
    shots = fewshot_plan(cfg)
    task_dir = tasks_index.prepare_task_dir(ctx.dir / "tasks", root, shots)
    limit = int(cfg.limit) if cfg.limit is not None else None
    lm, im = build_lm(cfg, source, ctx.dir / "vllm_merged_model")
    template = template_of(source, cfg.template)  # the model dir's train.template unless overridden
    results = runner.run_lm_eval(lm, tasks, task_dir, cfg.include_path, limit=limit, seed=cfg.seed, template=template,
                                 log_samples=cfg.log_samples, num_fewshot=cfg.num_fewshot,
                                 fewshot=user_fewshot(cfg, shots))

    samples = results.pop("samples", None) or {}
    if cfg.log_samples:
        for name, rows in samples.items():
            write_jsonl_atomic(ctx.dir / f"samples_{name}.jsonl", [json.loads(json.dumps(r, default=_plain)) for r in rows])
    results["config"] = {**(results.get("config") or {}), "model": source, "backend": cfg.backend, "template": template,
                         "batch_size": cfg.batch_size, "limit": limit, "seed": cfg.seed,
                         "dtype": im.dtype if im else cfg.dtype, "device": im.device if im else cfg.device,
                         "include_path": [str(task_dir)] + ([str(cfg.include_path)] if cfg.include_path else [])}
    results = json.loads(json.dumps(results, default=_plain))
    write_json_atomic(BENCHMARK_RESULTS.path(ctx.run_dir), results)

    rows = runner.table(results)
    ctx.write_stats({"model": source, "suite": cfg.name, "tasks": tasks, "fewshot": shots, "table": rows,
                     "settings": results["config"]})
    metrics = {}
    for r in rows:
        metrics[f"benchmark/{r['task']}/{r['metric']}"] = r["value"]
        if r["stderr"] is not None:
            metrics[f"benchmark/{r['task']}/{r['metric']}_stderr"] = r["stderr"]
    ctx.tracker.summary(metrics)
    ctx.tracker.table("benchmark/table", ["task", "metric", "value", "stderr", "n", "shots"],
                      [[r["task"], r["metric"], r["value"], r["stderr"], r["n"], r["shots"]] for r in rows])
    headline: dict[str, float] = {}
    for r in rows:
        if r["task"] in tasks:
            headline.setdefault(r["task"], round(r["value"], 4))
    return {"tasks": len(tasks), **{f"{t}": v for t, v in headline.items()}}


def _plain(o: Any) -> Any:
    from lm_eval.utils import handle_non_serializable

    return handle_non_serializable(o)
