"""Derive the shipped task YAMLs (``alpacare/evaluation/benchmarks/tasks/``) from lm-eval's own tasks.

Run once per lm-eval upgrade (``python -m alpacare.evaluation.benchmarks.make_tasks``) and commit the result;
tests/test_benchmark_tasks.py checks the shipped files against the installed lm-eval, so drift
shows up as a failing test rather than as silently different numbers.

Each of our tasks is lm-eval's task with three changes and nothing else:
- the name gets the prefix ``alpacare_`` (``medqa_4options`` -> ``alpacare_medqa_4options``;
  groups, subgroups and tags likewise), so it never shadows lm-eval's hub-reading task;
- the data comes from local JSONL files (``dataset_path: json`` + ``data_files``) under the
  placeholder ``@BENCHMARK_DATA@``, which the stage replaces with the data cache at run time;
- ``!function`` references point at lm-eval's own modules (``lm_eval.tasks.medqa....``), so
  prompts, choices, targets and metrics are upstream's code, not a copy.
Where the local data has other splits than upstream (PubMedQA), ``SPLITS`` says so.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

PREFIX = "alpacare_"
DATA_PLACEHOLDER = "@BENCHMARK_DATA@"
OUT = Path(__file__).resolve().parent / "tasks"

# family dir -> upstream files (relative to lm_eval/tasks), leaf tasks first, groups after.
FAMILIES: dict[str, list[str]] = {
    "medqa": ["medqa/medqa.yaml"],
    "medmcqa": ["medmcqa/medmcqa.yaml"],
    "pubmedqa": ["pubmedqa/pubmedqa.yaml"],
    "headqa": ["headqa/headqa_en.yaml"],
    "truthfulqa": ["truthfulqa/truthfulqa_mc2.yaml"],
    "drop": ["drop/default.yaml"],
    "mmlu": ["mmlu/default/mmlu_*.yaml", "mmlu/default/_mmlu_*.yaml", "mmlu/default/_mmlu.yaml"],
    "bbh": ["bbh/fewshot/[!_]*.yaml", "bbh/fewshot/_bbh_fewshot.yaml"],
}
# Local splits where they differ from upstream's (hf dataset path -> split keys to keep/override).
# PubMedQA: upstream reads BigBio's script (fold0: 450 train / 50 validation / 500 test), which
# current `datasets` cannot run; we read the original release (pubmedqa/pubmedqa on GitHub): the
# same 500 test questions, and the other 500 labelled questions as one train split.
SPLIT_OVERRIDES: dict[str, dict[str, Any]] = {
    "bigbio/pubmed_qa": {"training_split": "train", "validation_split": None, "test_split": "test"},
}
# BBH's 3-shot direct-answer variant is lm-eval's ``bbh_fewshot`` group; ours is ``alpacare_bbh``.
RENAME_PREFIXES = {"bbh_fewshot": "bbh"}


def _tasks_root() -> Path:
    import lm_eval

    return Path(lm_eval.__file__).parent / "tasks"


class Fn(str):
    """A ``!function`` reference, kept as text."""


def _loader():
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: Fn(loader.construct_scalar(node)))
    return Loader


def _dumper():
    class Dumper(yaml.SafeDumper):
        pass

    Dumper.add_representer(Fn, lambda dumper, data: dumper.represent_scalar("!function", str(data)))
    return Dumper


def load_flat(path: Path) -> dict[str, Any]:
    """An upstream YAML with its ``include`` chain merged in (the file's own keys win) and every
    ``!function`` made absolute (``lm_eval.tasks.<dir>.<module>.<fn>``)."""
    cfg = yaml.load(path.read_text(), Loader=_loader()) or {}
    base: dict[str, Any] = {}
    if "include" in cfg:
        base = load_flat(path.parent / cfg.pop("include"))
    tasks_root = _tasks_root()
    module_prefix = "lm_eval.tasks." + ".".join(path.parent.relative_to(tasks_root).parts)
    for key, value in cfg.items():
        if isinstance(value, Fn) and not value.startswith("lm_eval."):
            cfg[key] = Fn(f"{module_prefix}.{value}")
    return {**base, **cfg}


def rename(name: str) -> str:
    for old, new in RENAME_PREFIXES.items():
        if name == old or name.startswith(old + "_"):
            name = new + name[len(old):]
    return name if name.startswith(PREFIX) else PREFIX + name


def data_file(dataset: str, config: str | None, split: str) -> str:
    return f"{DATA_PLACEHOLDER}/{dataset}/{config or 'default'}/{split}.jsonl"


def localize(cfg: dict[str, Any]) -> dict[str, Any]:
    cfg = dict(cfg)
    for key in ("task", "group"):
        if isinstance(cfg.get(key), str):
            cfg[key] = rename(cfg[key])
        elif isinstance(cfg.get(key), list):
            cfg[key] = [rename(t) for t in cfg[key]]
    if isinstance(cfg.get("tag"), str):
        cfg["tag"] = rename(cfg["tag"])
    elif isinstance(cfg.get("tag"), list):
        cfg["tag"] = [rename(t) for t in cfg["tag"]]
    if "dataset_path" in cfg:
        dataset, config = cfg.pop("dataset_path"), cfg.pop("dataset_name", None)
        cfg.update(SPLIT_OVERRIDES.get(dataset, {}))
        splits = sorted({cfg[k] for k in ("training_split", "validation_split", "test_split", "fewshot_split")
                         if cfg.get(k)})
        cfg["dataset_path"] = "json"
        cfg["dataset_kwargs"] = {"data_files": {s: data_file(dataset, config, s) for s in splits}}
        cfg["metadata"] = {**(cfg.get("metadata") or {}), "upstream_dataset": dataset,
                           "upstream_dataset_name": config}
    return cfg


def main() -> int:
    import glob

    import lm_eval

    tasks_root = _tasks_root()
    for family, patterns in FAMILIES.items():
        out_dir = OUT / family
        out_dir.mkdir(parents=True, exist_ok=True)
        for old in out_dir.glob("*.yaml"):
            old.unlink()
        for pattern in patterns:
            for src in sorted(glob.glob(str(tasks_root / pattern))):
                src = Path(src)
                cfg = localize(load_flat(src))
                name = cfg.get("task") if isinstance(cfg.get("task"), str) else cfg.get("group")
                header = (f"# Derived from lm-eval {lm_eval.__version__} lm_eval/tasks/{src.relative_to(tasks_root)}"
                          f" by alpacare/evaluation/benchmarks/make_tasks.py; do not edit by hand.\n")
                text = yaml.dump(cfg, Dumper=_dumper(), sort_keys=False, allow_unicode=True, width=1000)
                (out_dir / f"{name}.yaml").write_text(header + text)
    print(f"wrote task YAMLs under {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
