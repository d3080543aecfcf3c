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
    # The saved tokenizer prompts with the Alpaca template it was trained on.
    assert "### Response:" in json.loads((model_dir / "tokenizer_config.json").read_text()).get("chat_template", "") \
        or "### Response:" in (model_dir / "chat_template.jinja").read_text()
    predictions = [json.loads(line) for line in (run_dir / "predict" / "medinstruct.jsonl").read_text().splitlines()]
    assert len(predictions) == 4 and all(p["generator"] == "run/model" for p in predictions)
    # The contamination check runs by default, against every local test set and the smoke suite.
    dedup = json.loads((run_dir / "dedup" / "stats.json").read_text())
    assert dedup["contamination"]["enabled"] and (run_dir / "dedup" / "contaminated.jsonl").is_file()
    assert {"medinstruct", "icliniq", "alpaca_eval", "alpacare_smoke_mcq"} <= {r["source"] for r in dedup["contamination"]["rows"]}
    judge = json.loads((run_dir / "judge" / "stats.json").read_text())
    assert judge["weak_judge"] is True
    rows = {r["reference"]: r for r in judge["win_rates"]}
    assert set(rows) == {"text-davinci-003", "gpt-3.5-turbo", "gpt-4", "claude-2"}
    # The embedded judge answers through a JSON schema: every verdict parses.
    assert all(r["n"] == 4 and r["n_unparsed"] == 0 and 0 <= r["win_rate"] <= 100 for r in rows.values())
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == len(proc_stages(proc))
    assert f"outputs in {run_dir}" in proc.stdout
    assert "weak local judge" in proc.stdout
    for stage in ("instructions", "dedup", "responses", "train", "predict", "judge", "report"):
        assert any(line.strip().startswith(stage) for line in proc.stdout.splitlines()), stage
    # The report comes last, with a section for every stage that ran, and its path is the last line.
    report = json.loads((run_dir / "report" / "stats.json").read_text())
    assert report["stages_reported"] == ["instructions", "dedup", "responses", "train", "predict", "judge", "benchmark"]
    assert report["sections"] == ["results", "contamination", "win_rates", "benchmarks", "data", "analysis", "training",
                                  "predictions", "run", "artifacts"] and report["omitted"] == {}
    html = (run_dir / "report" / "report.html").read_text()
    assert html.count('<img src="data:image/png;base64,') >= 8
    assert proc.stdout.rstrip().splitlines()[-1] == f"alpacare: report: {run_dir / 'report' / 'report.html'}"
    assert len(json.loads((run_dir / "train" / "metrics.jsonl").read_text().splitlines()[-1])) > 2


def proc_stages(proc) -> list[str]:
    """The stages the run's closing summary lists."""
    lines = proc.stdout.split("outputs in", 1)[1].splitlines()[1:]
    return [ln.split()[0] for ln in lines if ln.startswith("  ") and "ledger" not in ln]
