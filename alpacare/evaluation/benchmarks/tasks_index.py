"""The shipped tasks: names, groups, the data each one reads, and the run-time task folder.

Every task is an lm-eval task, run by lm-eval: YAMLs under ``alpacare/evaluation/benchmarks/tasks/``,
derived from lm-eval's own by make_tasks.py, plus ``alpacare_meqsum`` (lm-eval's meqsum with offline
functions, alpacare/evaluation/benchmarks/meqsum.py) and the original ``smoke`` suite.

The YAMLs name their data files under ``@BENCHMARK_DATA@`` (the fetched data) or ``@TASKS_DIR@``
(files shipped beside them); ``prepare_task_dir`` writes a copy with both resolved, and each task's
shot count set, into the run dir: the stage and the lm_eval command line both read that folder.
"""

from __future__ import annotations

import functools
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import yaml

from alpacare.errors import ConfigError

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
DATA_PLACEHOLDER = "@BENCHMARK_DATA@"
TASKS_PLACEHOLDER = "@TASKS_DIR@"


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


@dataclass(frozen=True)
class TaskYaml:
    path: Path
    config: dict[str, Any]

    @property
    def name(self) -> str:
        return self.config.get("task") if isinstance(self.config.get("task"), str) else self.config["group"]

    @property
    def is_group(self) -> bool:
        return "group" in self.config and not isinstance(self.config.get("task"), str)

    def members(self) -> list[str]:
        task = self.config.get("task")
        return list(task) if isinstance(task, list) else []

    def tags(self) -> list[str]:
        tag = self.config.get("tag")
        return [tag] if isinstance(tag, str) else list(tag or [])

    def data_files(self) -> dict[str, str]:
        return dict((self.config.get("dataset_kwargs") or {}).get("data_files") or {})


def _load(path: Path) -> dict[str, Any]:
    """A task YAML with its ``include`` chain merged in, the file's own keys winning (as lm-eval does)."""
    cfg = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader) or {}
    if "include" in cfg:
        cfg = {**_load(path.parent / cfg.pop("include")), **cfg}
    return cfg


@functools.lru_cache(maxsize=None)
def index(tasks_dir: Path = TASKS_DIR) -> dict[str, TaskYaml]:
    out: dict[str, TaskYaml] = {}
    for path in sorted(tasks_dir.rglob("*.yaml")):
        entry = TaskYaml(path, _load(path))
        out[entry.name] = entry
    return out


def known_names() -> list[str]:
    idx = index()
    tags = {t for e in idx.values() for t in e.tags()}
    return sorted(set(idx) | tags)


def leaves(name: str) -> list[TaskYaml]:
    """The leaf tasks a task, group or tag stands for."""
    idx = index()
    if name in idx and not idx[name].is_group:
        return [idx[name]]
    if name in idx:
        return [leaf for member in idx[name].members() for leaf in leaves(member)]
    tagged = [e for e in idx.values() if name in e.tags()]
    if tagged:
        return [leaf for e in tagged for leaf in leaves(e.name)]
    raise KeyError(name)


def check_task_names(names: Iterable[str], key: str = "benchmark.tasks") -> None:
    known = known_names()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(
            f"{key}: unknown task(s) {unknown}; shipped tasks are named alpacare_<lm-eval name> "
            f"(e.g. alpacare_medqa_4options, alpacare_mmlu, alpacare_bbh; all: python -m alpacare.evaluation.benchmarks.tasks_index), "
            f"or add your own with benchmark.include_path=DIR"
        )


def _dataset_of(rel: str) -> tuple[tuple[str, Optional[str]], str]:
    """``@BENCHMARK_DATA@/<owner>/<name>/<config>/<split>.jsonl`` -> ((owner/name, config), split)."""
    parts = rel[len(DATA_PLACEHOLDER) + 1:].split("/")
    dataset, config, split = "/".join(parts[:-2]), parts[-2], parts[-1][: -len(".jsonl")]
    return (dataset, None if config == "default" else config), split


def data_needs(name: str) -> list[str]:
    """Relpaths under the benchmark data root that task ``name`` reads (empty: shipped data)."""
    rels = []
    for leaf in leaves(name):
        for path in leaf.data_files().values():
            if path.startswith(DATA_PLACEHOLDER + "/"):
                rels.append(path[len(DATA_PLACEHOLDER) + 1:])
    return sorted(set(rels))


def datasets_for(names: Iterable[str]) -> dict[tuple[str, Optional[str]], list[str]]:
    """(dataset, config) -> splits, for every task in ``names`` that reads fetched data."""
    check_task_names(list(names), "--tasks")
    out: dict[tuple[str, Optional[str]], set[str]] = {}
    for name in names:
        for leaf in leaves(name):
            for path in leaf.data_files().values():
                if path.startswith(DATA_PLACEHOLDER + "/"):
                    key, split = _dataset_of(path)
                    out.setdefault(key, set()).add(split)
    return {k: sorted(v) for k, v in out.items()}


# Every task that needs fetched data, as the top-level names a user would type.
FETCHABLE = ("alpacare_medqa_4options", "alpacare_medmcqa", "alpacare_pubmedqa", "alpacare_headqa_en",
             "alpacare_mmlu", "alpacare_bbh", "alpacare_truthfulqa_mc2", "alpacare_drop", "alpacare_meqsum")


def _leaf_names(name: str) -> list[str]:
    return [leaf.name for leaf in leaves(name)]


def shots_per_leaf(fewshot: dict[str, int], leaves_of: Callable[[str], list[str]],
                   depth_of: Callable[[str], int]) -> dict[str, int]:
    """Leaf task -> shots, from shots per task, group or tag name: a group's (or tag's) count applies
    to each of its leaves and a leaf's own entry wins. ``depth_of``: 0 tag, 1 group, 2 task; among
    groups, the one with more leaves first, so a subgroup's count wins over its parent's."""
    leaves = {name: leaves_of(name) for name in fewshot}
    per_leaf: dict[str, int] = {}
    for name in sorted(fewshot, key=lambda n: (depth_of(n), -len(leaves[n]))):
        for leaf in leaves[name]:
            per_leaf[leaf] = int(fewshot[name])
    return per_leaf


def prepare_task_dir(out_dir: Path, data_root: Path, fewshot: dict[str, int]) -> Path:
    """Copy the shipped tasks into ``out_dir`` with data paths resolved and shots set.

    ``fewshot``: task, group or tag -> shots (``shots_per_leaf``); names that are not shipped tasks
    (a user's own, from ``benchmark.include_path``) are left to the runner. Leaves without an entry
    keep their YAML's setting (lm-eval's default).
    """
    known = set(known_names())
    per_leaf = shots_per_leaf({k: v for k, v in fewshot.items() if k in known}, _leaf_names, name_depth)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    for entry in index().values():
        target = out_dir / entry.path.relative_to(TASKS_DIR)
        target.parent.mkdir(parents=True, exist_ok=True)
        text = entry.path.read_text(encoding="utf-8")
        text = text.replace(DATA_PLACEHOLDER, str(data_root)).replace(TASKS_PLACEHOLDER, str(out_dir))
        if not entry.is_group and entry.name in per_leaf:
            text = re.sub(r"^num_fewshot:.*\n", "", text, flags=re.M) + f"num_fewshot: {per_leaf[entry.name]}\n"
        target.write_text(text, encoding="utf-8")
    for data in TASKS_DIR.rglob("*.jsonl"):
        target = out_dir / data.relative_to(TASKS_DIR)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data, target)
    return out_dir


def name_depth(name: str) -> int:
    """0 for a tag, 1 for a group, 2 for a task (``shots_per_leaf``)."""
    idx = index()
    if name in idx and not idx[name].is_group:
        return 2
    if name in idx:
        return 1
    return 0


if __name__ == "__main__":
    for n in known_names():
        print(n)
