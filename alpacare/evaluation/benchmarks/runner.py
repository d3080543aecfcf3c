"""Run a benchmark suite: lm-eval in-process, one model wrapper (one engine) for every task.

This is what ``lm_eval --model hf --model_args pretrained=DIR,dtype=D --tasks T --include_path
<run>/benchmark/tasks [--include_path USER_DIR] --device DEV --batch_size B --seed S [--num_fewshot N]``
does (tests compare the two), except that the model is the one the shared inference loader loaded,
wrapped in ``HFLM`` with its tokenizer, batch size and device given to ``HFLM`` itself
(``simple_evaluate`` ignores them for a model object). Shots per task for the user's own tasks
(``benchmark.fewshot`` naming them) are set on the task objects lm-eval builds (``load_tasks``): the
shipped tasks get theirs written into their YAMLs instead (tasks_index.prepare_task_dir).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Iterator, Optional

from alpacare.errors import ConfigError, DataError, first_line

log = logging.getLogger(__name__)


def seeds(seed: int) -> dict[str, int]:
    """One seed for python, numpy, torch and the few-shot sampler (``lm_eval --seed S``)."""
    return {"random_seed": seed, "numpy_random_seed": seed, "torch_random_seed": seed, "fewshot_random_seed": seed}


def chat_args(template: str) -> dict[str, bool]:
    """simple_evaluate's chat arguments; none for alpaca (lm-eval's defaults, the plain contexts)."""
    return {"apply_chat_template": True, "fewshot_as_multiturn": True} if template == "chat" else {}


def hf_lm(im: Any, batch_size: Any, max_batch_size: int):
    """The loaded model as lm-eval's ``HFLM``; tokenizer and batch size set on the wrapper."""
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=im.model, tokenizer=im.tokenizer, batch_size=batch_size, max_batch_size=max_batch_size,
                device=im.device)


def vllm_lm(source: str, dtype: str, batch_size: Any, seed: int, merged_dir: Path):
    """lm-eval's vLLM backend (GPU; ``pip install 'alpacare[vllm]'``). An adapter is merged first."""
    try:
        import vllm  # noqa: F401
        from lm_eval.models.vllm_causallms import VLLM
    except ImportError:
        raise ConfigError("benchmark.backend=vllm: vLLM is not installed (pip install 'alpacare[vllm]')") from None
    from alpacare.evaluation.inference import vllm_source

    return VLLM(pretrained=vllm_source(source, merged_dir), dtype=dtype, batch_size=batch_size, seed=seed)


def load_tasks(manager: Any, names: list[str], fewshot: dict[str, int]) -> list[Any]:
    """Build ``names`` once with lm-eval's ``TaskManager``; set each leaf's shots from ``fewshot``
    (task, group or tag names lm-eval knows, e.g. the user's own); return the top-level tasks and
    groups, which ``simple_evaluate`` takes as they are."""
    from lm_eval.tasks._index import Kind

    from alpacare.evaluation.benchmarks.tasks_index import shots_per_leaf

    loaded = manager.load(list(names))
    tasks, groups = loaded["tasks"], loaded["groups"]
    index = manager.task_index

    def leaves_of(name: str) -> list[str]:
        if name in groups:
            return [t.task_name for t in groups[name].get_all_tasks()]
        entry = index.get(name)
        members = sorted(entry.tags) if entry is not None and entry.kind == Kind.TAG else [name]
        return [t for t in members if t in tasks]

    def depth_of(name: str) -> int:
        entry = index.get(name)
        return 0 if entry is not None and entry.kind == Kind.TAG else 1 if name in groups else 2

    for leaf, shots in shots_per_leaf(fewshot, leaves_of, depth_of).items():
        tasks[leaf].set_config(key="num_fewshot", value=shots)
    children = {c for kids in (loaded.get("group_map") or {}).values() for c in kids}
    in_groups = {t.task_name for g in groups.values() for t in g.get_all_tasks()}
    return ([g for name, g in groups.items() if name not in children]
            + [t for name, t in tasks.items() if name not in in_groups])


def task_manager(task_dir: Path, include_path: Optional[str]) -> Any:
    from lm_eval.tasks import TaskManager

    paths = [str(task_dir)] + ([str(Path(include_path).expanduser())] if include_path else [])
    try:
        return TaskManager(include_path=paths, include_defaults=False)
    except Exception as e:  # lm-eval reports a malformed YAML with its own exception types
        raise ConfigError(f"benchmark.include_path={include_path}: cannot read its task YAMLs ({first_line(e)})") from None


@contextlib.contextmanager
def bootstrap_in_process() -> Iterator[None]:
    """lm-eval's bootstrap stderr (nanmean, f1, bleu, ... metrics) forks a ``multiprocessing.Pool``
    unless ``DISABLE_MULTIPROC`` is set. Forking this process, which runs W&B, tqdm and torch
    threads, can copy a lock mid-hold: a forked worker then waits forever and so does the pool's
    join (seen: the default run's benchmark stage stuck in ``Pool.terminate`` for 25+ minutes).
    The in-process path draws as many resamples, without a fork."""
    previous = os.environ.get("DISABLE_MULTIPROC")
    os.environ["DISABLE_MULTIPROC"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("DISABLE_MULTIPROC", None)
        else:
            os.environ["DISABLE_MULTIPROC"] = previous


def run_lm_eval(lm: Any, tasks: list[str], task_dir: Path, include_path: Optional[str], *, limit: Optional[int],
                seed: int, log_samples: bool, num_fewshot: Optional[int] = None,
                fewshot: Optional[dict[str, int]] = None, template: str = "alpaca") -> dict[str, Any]:
    """``num_fewshot``: lm-eval's ``--num_fewshot`` (every task; lm-eval keeps a task's explicit 0).
    ``fewshot``: shots per task, group or tag name, applied to the built tasks (``load_tasks``).
    ``template="chat"``: contexts go through the tokenizer's chat template, few-shot examples as
    earlier turns (lm_eval --apply_chat_template --fewshot_as_multiturn)."""
    from lm_eval import simple_evaluate

    manager = task_manager(task_dir, include_path)
    try:
        built = load_tasks(manager, list(tasks), fewshot or {})
        with bootstrap_in_process():
            results = simple_evaluate(model=lm, tasks=built, limit=limit, task_manager=manager, num_fewshot=num_fewshot,
                                      log_samples=log_samples, **chat_args(template), **seeds(seed))
    except (FileNotFoundError, KeyError, ValueError, TypeError) as e:
        # A user task that names a missing file or a bad key fails inside lm-eval; say which.
        raise DataError(f"benchmark: lm-eval could not run {tasks} ({type(e).__name__}: {first_line(e)})") from None
    if results is None:
        raise DataError("benchmark: lm-eval returned no results (not rank 0?)")
    return results


def _split_key(key: str) -> tuple[str, str]:
    metric, _, filt = key.partition(",")
    return metric, filt


def table(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (task or group, metric): value, stderr, n, shots."""
    rows = []
    shots = results.get("n-shot", {})
    samples = results.get("n-samples", {})
    group_subtasks = results.get("group_subtasks", {})

    def n_of(name: str) -> Optional[int]:
        if name in samples:
            return samples[name].get("effective")
        subs = group_subtasks.get(name)
        if subs:
            ns = [n_of(s) for s in subs]
            return sum(n for n in ns if n is not None)
        return None

    def shots_of(name: str) -> Optional[int]:
        if name in shots:
            return shots[name]
        subs = {shots_of(s) for s in group_subtasks.get(name, [])} - {None}
        return subs.pop() if len(subs) == 1 else None

    for section in ("results", "groups"):
        for name, metrics in (results.get(section) or {}).items():
            if section == "results" and name in (results.get("groups") or {}):
                continue
            for key, value in metrics.items():
                if key == "alias" or "_stderr" in key or "," not in key or not isinstance(value, (int, float)):
                    continue
                metric, filt = _split_key(key)
                stderr = metrics.get(f"{metric}_stderr,{filt}")
                rows.append({"task": name, "metric": metric if filt == "none" else f"{metric},{filt}",
                             "value": value, "stderr": stderr if isinstance(stderr, (int, float)) else None,
                             "n": n_of(name), "shots": shots_of(name), "group": section == "groups"})
    return rows
