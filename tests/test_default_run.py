"""The default pipeline end to end on the embedded model: local llama.cpp teacher, real dedup,
real responses, real training of SmolLM2-135M, real offline W&B runs. Small counts."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli


@pytest.mark.slow
def test_default_pipeline_on_the_embedded_model(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(["instructions.count=16", "train.max_steps=2", f"hydra.run.dir={run_dir}"], tmp_path, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]

    instructions = json.loads((run_dir / "instructions" / "stats.json").read_text())
    # A 135M teacher writes poor tasks; the run reports honestly how many requests it took.
    assert instructions["tasks_kept"] == 16
    assert instructions["requests"] >= 1 and instructions["completion_tokens"] > 0
    assert instructions["seed_tasks"] > 0
    dedup = json.loads((run_dir / "dedup" / "stats.json").read_text())
    assert dedup["total"] == 16 and 1 <= dedup["kept"] <= 16
    train_set = json.loads((run_dir / "responses" / "train.json").read_text())
    assert len(train_set) >= 1 and all(ex["output"] for ex in train_set)
    model_dir = run_dir / "train" / "model"
    assert (model_dir / "README.md").exists()
    assert list(model_dir.glob("*.safetensors")) and not list(model_dir.glob("*.bin"))
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 4
    assert f"outputs in {run_dir}" in proc.stdout
    for stage in ("instructions", "dedup", "responses", "train"):
        assert any(line.strip().startswith(stage) for line in proc.stdout.splitlines()), stage
