"""Run a benchmark suite: lm-eval in-process for lm-eval tasks, the summarizer for native ones.

The lm-eval half is what ``lm_eval --model hf --model_args pretrained=DIR,dtype=D --tasks T
--include_path <run>/benchmark/tasks --device DEV --batch_size B --seed S`` does (tests compare the
two), except that the model is the one the shared inference loader loaded, wrapped in ``HFLM``
with its tokenizer, batch size and device given to ``HFLM`` itself (``simple_evaluate`` ignores
them for a model object).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Optional

from alpacare.errors import ConfigError, DataError, first_line

log = logging.getLogger(__name__)

# Keys of lm-eval's results dict that hold one entry per task or group.
PER_TASK_KEYS = ("results", "groups", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better", "n-samples")


def seeds(seed: int) -> dict[str, int]:
    """One seed for python, numpy, torch and the few-shot sampler (``lm_eval --seed S``)."""
    return {"random_seed": seed, "numpy_random_seed": seed, "torch_random_seed": seed, "fewshot_random_seed": seed}


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
    path = Path(source).expanduser()
    if (path / "adapter_config.json").is_file():
        if not (merged_dir / "config.json").is_file():
            from alpacare.training.models import save_merged_model

            save_merged_model(path, merged_dir, card=f"Merged from {path} for vLLM by alpacare.\n")
        source = str(merged_dir)
    return VLLM(pretrained=source, dtype=dtype, batch_size=batch_size, seed=seed)


def run_lm_eval(lm: Any, tasks: list[str], task_dir: Path, include_path: Optional[str], *, limit: Optional[int],
                seed: int, log_samples: bool) -> dict[str, Any]:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    paths = [str(task_dir)] + ([str(Path(include_path).expanduser())] if include_path else [])
    try:
        manager = TaskManager(include_path=paths, include_defaults=False)
    except Exception as e:  # lm-eval reports a malformed YAML with its own exception types
        raise ConfigError(f"benchmark.include_path={include_path}: cannot read its task YAMLs ({first_line(e)})") from None
    try:
        results = simple_evaluate(model=lm, tasks=list(tasks), limit=limit, task_manager=manager,
                                  log_samples=log_samples, **seeds(seed))
    except (FileNotFoundError, KeyError, ValueError, TypeError) as e:
        # A user task that names a missing file or a bad key fails inside lm-eval; say which.
        raise DataError(f"benchmark: lm-eval could not run {tasks} ({type(e).__name__}: {first_line(e)})") from None
    if results is None:
        raise DataError("benchmark: lm-eval returned no results (not rank 0?)")
    return results


def merge(results: Optional[dict[str, Any]], extra: dict[str, Any]) -> dict[str, Any]:
    """Add a native task's entries to lm-eval's results dict (same keys, one entry per task)."""
    out = copy.copy(results) if results else {}
    for key in PER_TASK_KEYS + ("samples",):
        if key in extra:
            out[key] = {**(out.get(key) or {}), **extra[key]}
    return out


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
