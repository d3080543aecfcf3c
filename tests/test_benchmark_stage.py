"""The benchmark stage end to end on the embedded SmolLM2-135M: the default run (smoke suite on the
run's trained model) and equality with the ``lm_eval`` command line on the same task folder."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, cli_env, run_cli
from tests.test_train_support import cache_dir  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def smollm_dir(cache_dir) -> Path:  # noqa: F811  (the train tests' session cache: one conversion)
    from alpacare.config import ModelConfig
    from alpacare.training.models import resolve_model_path

    return Path(resolve_model_path(ModelConfig(), cache_dir))


@pytest.mark.slow
def test_default_benchmark_equals_the_lm_eval_cli(smollm_dir, tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "train").mkdir(parents=True)
    (run_dir / "train" / "model").symlink_to(smollm_dir, target_is_directory=True)
    started = time.monotonic()
    # No benchmark overrides: the default suite (smoke) on this run's train/model.
    proc = run_cli(["stages=[benchmark]", "logger=none", f"hydra.run.dir={run_dir}"], tmp_path, timeout=900)
    seconds = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours = json.loads((run_dir / "benchmark" / "results.json").read_text())
    stats = json.loads((run_dir / "benchmark" / "stats.json").read_text())
    assert stats["suite"] == "smoke" and seconds < 600
    table = {(r["task"], r["metric"]): r for r in stats["table"]}
    assert table[("alpacare_smoke_mcq", "acc")]["n"] == 30
    for task in ("alpacare_smoke_meqsum", "alpacare_smoke_meqsum_alpaca"):
        assert table[(task, "rougeL")]["n"] == 5
    # Under its trained template the model answers; lm-eval's bare prompt may leave every answer empty (NaN).
    assert 0.0 <= table[("alpacare_smoke_meqsum_alpaca", "rougeL")]["value"] <= 1.0

    tasks = ["alpacare_smoke_mcq", "alpacare_smoke_meqsum", "alpacare_smoke_meqsum_alpaca"]
    out = tmp_path / "lm_eval_out"
    cli = subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={smollm_dir},dtype=float32",
         "--tasks", ",".join(tasks), "--include_path", str(run_dir / "benchmark" / "tasks"), "--device", "cpu",
         "--batch_size", "8", "--seed", "1234", "--output_path", str(out)],
        capture_output=True, text=True, cwd=REPO, env=cli_env(tmp_path), timeout=900)
    assert cli.returncode == 0, cli.stderr[-3000:]
    theirs = json.loads(next(out.rglob("results_*.json")).read_text())
    for task in tasks:
        metrics = {k: v for k, v in theirs["results"][task].items() if "," in k}
        assert metrics and len(metrics) == len([k for k in ours["results"][task] if "," in k]), task
        for key, value in metrics.items():
            mine = ours["results"][task][key]
            assert mine == value or (math.isnan(mine) and math.isnan(value)), (task, key)
        for key in ("n-shot", "n-samples", "versions", "higher_is_better"):
            assert ours[key][task] == theirs[key][task], (task, key)
