"""A user's own lm-eval tasks (``benchmark.include_path``) take every benchmark override: shots for all
tasks (``benchmark.num_fewshot``), shots per task, group or tag (``benchmark.fewshot``), limit, samples,
mixed with shipped tasks; and the numbers equal the ``lm_eval`` command line on the same YAMLs."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, cli_env, run_cli
from tests.test_train_support import smollm_tokenizer_dir, tiny_model_dir  # noqa: F401  (fixtures)

pytest.importorskip("lm_eval")

DOCS = [{"q": f"Which organ makes insulin ({i})?", "choices": ["Pancreas", "Liver", "Spleen", "Kidney"], "label": i % 4}
        for i in range(6)]


def user_tasks(root: Path, shots: dict[str, int] | None = None) -> Path:
    """my_task; my_group = my_task2 + my_task3; my_tag = my_task2 + my_task3. ``shots``: num_fewshot
    written into a leaf's YAML (what a user would edit for the lm_eval command line)."""
    shots = shots or {}
    root.mkdir(parents=True, exist_ok=True)
    (root / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    base = (f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {root / 'docs.jsonl'}\n"
            "output_type: multiple_choice\ntest_split: test\nfewshot_split: test\n"
            "doc_to_text: \"Q: {{q}}\\nA:\"\ndoc_to_choice: \"{{choices}}\"\ndoc_to_target: label\n"
            "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\nmetadata:\n  version: 1.0\n")
    for name, tag in (("my_task", None), ("my_task2", "my_tag"), ("my_task3", "my_tag")):
        text = f"task: {name}\n" + (f"tag: {tag}\n" if tag else "") + base
        if name in shots:
            text += f"num_fewshot: {shots[name]}\n"
        (root / f"{name}.yaml").write_text(text)
    (root / "my_group.yaml").write_text("group: my_group\ntask: [my_task2, my_task3]\naggregate_metric_list:\n"
                                        "  - metric: acc\n    aggregation: mean\n    weight_by_size: true\nmetadata:\n  version: 1.0\n")
    return root


def test_shots_for_user_names_do_not_break_the_shipped_task_folder(tmp_path):
    """The shipped folder takes the shipped names and leaves the user's to the runner (was KeyError)."""
    from alpacare.evaluation.benchmarks import tasks_index

    out = tasks_index.prepare_task_dir(tmp_path / "tasks", tmp_path / "data", {"my_task": 0, "alpacare_smoke_mcq": 2})
    assert "num_fewshot: 2\n" in (out / "smoke" / "alpacare_smoke_mcq.yaml").read_text()


def test_num_fewshot_for_all_goes_to_lm_eval_and_the_map_to_user_leaves(tmp_path):
    from alpacare.stages.benchmark import fewshot_plan, user_fewshot
    from tests.test_train_support import compose

    cfg = compose([f"benchmark.include_path={user_tasks(tmp_path / 'u')}", "benchmark.tasks=[my_task]",
                   "benchmark.num_fewshot=0"]).benchmark
    assert fewshot_plan(cfg) == {"my_task": 0} and user_fewshot(cfg, fewshot_plan(cfg)) == {}
    cfg = compose([f"benchmark.include_path={tmp_path / 'u'}", "benchmark.tasks=[alpacare_smoke_mcq,my_group]",
                   "+benchmark.fewshot.my_group=2"]).benchmark
    assert user_fewshot(cfg, fewshot_plan(cfg)) == {"my_group": 2}


@pytest.mark.parametrize("fewshot,expected", [
    ({"my_group": 2}, {"my_task2": 2, "my_task3": 2, "my_task": None}),
    ({"my_group": 2, "my_task3": 1, "my_task": 0}, {"my_task2": 2, "my_task3": 1, "my_task": 0}),
    ({"my_tag": 3, "my_task2": 1}, {"my_task2": 1, "my_task3": 3, "my_task": None}),
])
def test_user_shots_land_on_each_leaf_and_a_leafs_own_entry_wins(tmp_path, fewshot, expected):
    from alpacare.evaluation.benchmarks import runner, tasks_index

    task_dir = tasks_index.prepare_task_dir(tmp_path / "tasks", tmp_path / "data", {})
    manager = runner.task_manager(task_dir, str(user_tasks(tmp_path / "u")))
    names = ["my_tag", "my_task"] if "my_tag" in fewshot else ["my_group", "my_task"]
    built = runner.load_tasks(manager, names, fewshot)
    leaves = {}
    for obj in built:
        for task in (obj.get_all_tasks() if hasattr(obj, "get_all_tasks") else [obj]):
            leaves[task.task_name] = task.get_config("num_fewshot")
    assert leaves == expected


def _lm_eval_cli(model: Path, tasks: list[str], include: list[Path], tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / "lm_eval_out"
    args = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={model},dtype=float32",
            "--tasks", ",".join(tasks), "--device", "cpu", "--batch_size", "8", "--seed", "1234",
            "--output_path", str(out), *extra]
    for path in include:
        args += ["--include_path", str(path)]
    cli = subprocess.run(args, capture_output=True, text=True, cwd=REPO, env=cli_env(tmp_path), timeout=600)
    assert cli.returncode == 0, cli.stderr[-3000:]
    return json.loads(next(out.rglob("results_*.json")).read_text())


def _assert_same(ours: dict, theirs: dict, names: list[str]) -> None:
    for name in names:
        section = "groups" if name in theirs.get("groups", {}) else "results"
        metrics = {k: v for k, v in theirs[section][name].items() if "," in k}
        assert metrics, name
        for key, value in metrics.items():
            mine = ours[section][name][key]
            assert mine == value or (isinstance(value, float) and math.isnan(value) and math.isnan(mine)), (name, key)
    for key in ("n-shot", "n-samples"):
        assert {k: v for k, v in ours[key].items() if k in theirs[key]} == theirs[key], key


@pytest.mark.slow
def test_the_issues_command_equals_the_lm_eval_cli(tmp_path, tiny_model_dir):  # noqa: F811
    """alpacare stages=[benchmark] benchmark.include_path=DIR benchmark.tasks=[my_task] benchmark.num_fewshot=0"""
    user = user_tasks(tmp_path / "u")
    run_dir = tmp_path / "run"
    proc = run_cli(["stages=[benchmark]", "logger=none", f"benchmark.model={tiny_model_dir}", f"benchmark.include_path={user}",
                    "benchmark.tasks=[my_task]", "benchmark.num_fewshot=0", f"hydra.run.dir={run_dir}"], tmp_path, timeout=600)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    ours = json.loads((run_dir / "benchmark" / "results.json").read_text())
    theirs = _lm_eval_cli(tiny_model_dir, ["my_task"], [user], tmp_path, "--num_fewshot", "0")
    assert ours["n-shot"]["my_task"] == 0
    _assert_same(ours, theirs, ["my_task"])


@pytest.mark.slow
def test_shots_per_group_limit_samples_and_shipped_tasks_equal_the_lm_eval_cli(tmp_path, tiny_model_dir):  # noqa: F811
    """A group's shots with a leaf's own entry, a shipped task beside the user's, a limit and samples;
    lm_eval runs the same YAMLs with those shot counts written in."""
    user = user_tasks(tmp_path / "u")
    run_dir = tmp_path / "run"
    proc = run_cli(["stages=[benchmark]", "logger=none", f"benchmark.model={tiny_model_dir}", f"benchmark.include_path={user}",
                    "benchmark.tasks=[alpacare_smoke_mcq,my_group,my_task]", "+benchmark.fewshot.my_group=2",
                    "+benchmark.fewshot.my_task3=1", "+benchmark.fewshot.my_task=3", "benchmark.fewshot.alpacare_smoke_mcq=1",
                    "benchmark.limit=4", "benchmark.log_samples=true", f"hydra.run.dir={run_dir}"], tmp_path, timeout=600)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    ours = json.loads((run_dir / "benchmark" / "results.json").read_text())
    assert {t: ours["n-shot"][t] for t in ("my_task", "my_task2", "my_task3", "alpacare_smoke_mcq")} == \
        {"my_task": 3, "my_task2": 2, "my_task3": 1, "alpacare_smoke_mcq": 1}
    assert (run_dir / "benchmark" / "samples_my_task2.jsonl").is_file()
    # lm_eval takes one --include_path: the run's task folder with the edited user YAMLs beside it.
    both = tmp_path / "cli_tasks"
    shutil.copytree(run_dir / "benchmark" / "tasks", both)
    user_tasks(both / "user", {"my_task": 3, "my_task2": 2, "my_task3": 1})
    theirs = _lm_eval_cli(tiny_model_dir, ["alpacare_smoke_mcq", "my_group", "my_task"], [both], tmp_path, "--limit", "4")
    _assert_same(ours, theirs, ["alpacare_smoke_mcq", "my_group", "my_task2", "my_task3", "my_task"])


def test_bootstrap_stderr_runs_in_process_not_in_a_forked_pool(tmp_path, tiny_model_dir, monkeypatch):
    """lm-eval bootstraps nanmean's stderr in a forked multiprocessing.Pool unless DISABLE_MULTIPROC
    is set; a fork of this threaded process (W&B, tqdm, torch) hung the default run's benchmark
    stage in Pool.terminate. The runner runs it in process, and leaves the environment as it was."""
    import multiprocessing
    import os

    from alpacare.evaluation.benchmarks import runner, tasks_index
    from alpacare.stages.benchmark import build_lm
    from tests.test_train_support import compose

    user = user_tasks(tmp_path / "u")
    (user / "my_nanmean.yaml").write_text((user / "my_task.yaml").read_text()
                                          .replace("task: my_task", "task: my_nanmean")
                                          .replace("aggregation: mean", "aggregation: nanmean"))

    def no_fork(*args, **kwargs):
        raise AssertionError("lm-eval forked a multiprocessing.Pool")

    monkeypatch.setattr(multiprocessing, "Pool", no_fork)
    monkeypatch.delenv("DISABLE_MULTIPROC", raising=False)
    task_dir = tasks_index.prepare_task_dir(tmp_path / "tasks", tmp_path / "data", {})
    lm, _ = build_lm(compose(["benchmark.device=cpu", "benchmark.batch_size=1"]).benchmark, str(tiny_model_dir),
                     tmp_path / "merged")
    results = runner.run_lm_eval(lm, ["my_nanmean"], task_dir, str(user), limit=3, seed=1234, log_samples=False,
                                 num_fewshot=0)
    assert results["results"]["my_nanmean"]["acc_stderr,none"] is not None
    assert "DISABLE_MULTIPROC" not in os.environ
