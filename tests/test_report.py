"""The report stage through the real CLI: a run with some stages has exactly their sections, it
reanalyses an existing run alone, any dataset alone, and bad input is one line or a noted omission."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA, run_cli, teacher_args
from tests.openai_server import OpenAITestServer
from tests.test_judge import RELEASED, server_reply
from tests.test_pipeline import assert_one_line_error

needs_data = pytest.mark.skipif(not RELEASED.is_file(), reason="needs ../shared/alpacare-data")

TITLES = {"results": "Results", "run": "Run", "contamination": "Contamination", "data": "Data", "analysis": "Dataset analysis", "training": "Training",
          "predictions": "Predictions", "win_rates": "Win rates", "benchmarks": "Benchmarks",
          "review": "Human review", "artifacts": "Artifacts"}


def report_of(run_dir: Path) -> tuple[dict, str, str]:
    stats = json.loads((run_dir / "report" / "stats.json").read_text())
    return stats, (run_dir / "report" / "report.md").read_text(), (run_dir / "report" / "report.html").read_text()


def h2s(md: str) -> list[str]:
    return re.findall(r"^## (.+)$", md, flags=re.M)


def assert_self_contained(html: str) -> None:
    assert "<script" not in html and not re.search(r'(src|href)="(https?:)?//', html)  # nothing fetched
    srcs = re.findall(r'<img src="([^"]+)"', html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)


@needs_data
@pytest.mark.slow
def test_report_has_exactly_the_sections_of_the_stages_that_ran(tmp_path, openai_server):
    run_dir = tmp_path / "run"
    # 1. Data stages against the loopback teacher, the report last.
    proc = run_cli([*teacher_args(openai_server), "stages=[instructions,dedup,responses,report]", "instructions.count=12",
                    "logger=none", f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.rstrip().splitlines()[-1] == f"alpacare: report: {run_dir / 'report' / 'report.html'}"
    stats, md, html = report_of(run_dir)
    assert stats["sections"] == ["results", "contamination", "data", "analysis", "run", "artifacts"] and stats["omitted"] == {}
    assert h2s(md) == [TITLES[s] for s in stats["sections"]]
    assert_self_contained(html)
    assert "instructions.count=12" in md and "teacher.api_key" not in md
    analysis = json.loads((run_dir / "report" / "analysis.json").read_text())
    train = json.loads((run_dir / "responses" / "train.json").read_text())
    assert analysis["dataset"] == str(run_dir / "responses" / "train.json") and analysis["data"]["records"] == len(train)
    assert analysis["seed_set"]["records"] == 167
    for png in ("categories", "topics", "lengths", "leading_words", "rouge_vs_seeds"):
        assert (run_dir / "report" / f"{png}.png").read_bytes()[:4] == b"\x89PNG"
    # Consistent counts in every stage's stats.
    for stage in ("instructions", "dedup", "responses"):
        s = json.loads((run_dir / stage / "stats.json").read_text())
        assert s["schema_version"] == 1 and s["stage"] == stage and s["seconds"] >= 0 and "records_out" in s

    # 2. A small judge run on the same dir, then the report alone: the win-rate section joins.
    with OpenAITestServer(reply=server_reply) as judge:
        proc = run_cli(["stages=[judge]", "judge=openai_compatible", f"judge.base_url={judge.url}", "judge.model=test-judge",
                        "judge.structured_output=false", f"judge.predictions={RELEASED}", "judge.test_set=medinstruct",
                        "judge.limit=3", "judge.references=[gpt-4,claude-2]", "judge.bootstrap=20", "logger=none",
                        f"hydra.run.dir={run_dir}"], tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir / "review").mkdir()
    (run_dir / "review" / "pairwise_summary.json").write_text(json.dumps(
        {"kind": "pairwise", "systems": {"a": {"name": "model"}, "b": {"name": "gpt-4"}}, "n": 10, "wins_a": 4,
         "wins_b": 5, "ties": 1, "win_rate": 0.45, "ci_low": 0.2, "ci_high": 0.7, "first_shown_preferred": 0.5}))
    proc = run_cli(["stages=[report]", "logger=none", f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats, md, html = report_of(run_dir)
    assert stats["sections"] == ["results", "contamination", "win_rates", "data", "analysis", "review", "run", "artifacts"]
    assert stats["stages_reported"] == ["instructions", "dedup", "responses", "judge"]
    assert h2s(md) == [TITLES[s] for s in stats["sections"]]
    judge_stats = json.loads((run_dir / "judge" / "stats.json").read_text())
    assert judge_stats["records_in"] == 6 and judge_stats["prompt_tokens"] > 0  # 3 items x 2 references
    row = next(r for r in judge_stats["win_rates"] if r["reference"] == "gpt-4")
    assert f"{row['win_rate']:.1f}" in md and "test set \\ reference" in md
    # The first command's overrides survive the report-only rerun (Hydra overwrote .hydra/).
    assert "instructions.count=12" in md and "judge.test_set=medinstruct" in md
    assert "45.0% [20.0, 70.0]" in md
    assert_self_contained(html)


def test_bad_input_is_one_line_or_a_noted_omission(tmp_path):
    # A dir that is not a run: one line naming it.
    empty = tmp_path / "empty"
    proc = run_cli(["stages=[report]", "logger=none", f"hydra.run.dir={empty}"], tmp_path)
    assert_one_line_error(proc, str(empty), "nothing to report")
    # A dataset of the wrong shape: one line naming the file, before anything runs.
    bad = tmp_path / "bad.json"
    bad.write_text('{"rows": [1, 2]}')
    proc = run_cli(["stages=[report]", f"report.data={bad}", "logger=none", f"hydra.run.dir={tmp_path / 'r2'}"], tmp_path)
    assert_one_line_error(proc, str(bad))
    # A corrupt stats.json: that section left out with a note; the rest reported.
    run_dir = tmp_path / "corrupt"
    (run_dir / "dedup").mkdir(parents=True)
    (run_dir / "dedup" / "stats.json").write_text('{"schema_version": 1, "total": ')
    (run_dir / "train").mkdir()
    (run_dir / "train" / "stats.json").write_text(json.dumps({"schema_version": 1, "stage": "train", "seconds": 3.0,
                                                              "examples": 4, "steps": 2, "final_loss": 1.5}))
    (run_dir / "train" / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "train/loss": 2.0 - s / 4, "train/lr": 1e-4}) + "\n" for s in (1, 2)))
    proc = run_cli(["stages=[report]", "logger=none", f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    stats, md, html = report_of(run_dir)
    assert stats["sections"] == ["results", "training", "run", "artifacts"]
    assert "dedup" in stats["omitted"] and "not valid JSON" in stats["omitted"]["dedup"]
    assert "dedup: section left out" in md and str(run_dir / "dedup" / "stats.json") in md
    assert (run_dir / "report" / "loss.png").is_file() and "1.5" in md


@needs_data
def test_any_dataset_alone(tmp_path):
    seeds = SHARED_DATA / "med_seed.json"
    run_dir = tmp_path / "alone"
    proc = run_cli(["stages=[report]", f"report.data={seeds}", "logger=none", f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats, md, html = report_of(run_dir)
    assert stats["sections"] == ["contamination", "analysis", "run", "artifacts"]
    assert "| records | 167 | 167 |" in md
    assert_self_contained(html)


def _stats(run_dir: Path, stage: str, **values) -> None:
    (run_dir / stage).mkdir(parents=True, exist_ok=True)
    (run_dir / stage / "stats.json").write_text(json.dumps({"schema_version": 1, "stage": stage, **values}))


def test_results_come_first_and_settings_below(tmp_path):
    """The first screen holds win rates (SE, LC), benchmark scores, data counts, contamination, cost and
    time; the commands and settings ("Run") come after the detail sections."""
    run_dir = tmp_path / "run"
    _stats(run_dir, "instructions", seconds=12.0, records_out=120, prompt_tokens=1000, completion_tokens=500, cost_usd=0.25)
    _stats(run_dir, "dedup", seconds=2.0, records_in=120, records_out=100, kept_ratio=0.833, threshold=0.7, mode="greedy",
           contamination={"enabled": True, "removed": 3, "rows": [{"source": "medinstruct", "items": 216, "removed": 2},
                                                                   {"source": "alpacare_smoke_mcq", "items": 30, "removed": 1},
                                                                   {"source": "icliniq", "items": 1000, "removed": 0}]})
    _stats(run_dir, "responses", seconds=30.0, records_in=100, records_out=98, prompt_tokens=2000, completion_tokens=4000,
           cost_usd=1.5)
    _stats(run_dir, "train", seconds=60.0, final_loss=1.234, steps=10)
    _stats(run_dir, "judge", seconds=20.0, prompt_tokens=300, completion_tokens=10, cost_usd=0.01,
           judge={"model": "gpt-3.5-turbo", "preset": "gpt35_turbo"},
           win_rates=[{"test_set": "medinstruct", "reference": "gpt-4", "win_rate": 62.5, "se": 3.125, "n": 216,
                       "lc_win_rate": 58.25, "lc_se": 2.5}])
    _stats(run_dir, "benchmark", seconds=80.0, suite="smoke", tasks=["alpacare_smoke_mcq", "alpacare_smoke_meqsum"],
           table=[{"task": "alpacare_smoke_mcq", "metric": "acc", "value": 0.3333, "stderr": 0.0876, "n": 30, "shots": 0},
                  {"task": "alpacare_smoke_mcq", "metric": "acc_norm", "value": 0.3, "stderr": 0.08, "n": 30, "shots": 0},
                  {"task": "alpacare_smoke_meqsum", "metric": "rougeL", "value": float("nan"), "stderr": None, "n": 5,
                   "shots": 0}])
    proc = run_cli(["stages=[report]", "logger=none", f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats, md, html = report_of(run_dir)
    assert stats["sections"][0] == "results" and stats["sections"][-2:] == ["run", "artifacts"]
    first = md.split("\n## ")[1]  # the Results section, all of it
    assert first.startswith("Results")
    for text in ("| medinstruct | gpt-4 | 62.5 ± 3.1 | 58.2 ± 2.5 | 216 |", "| alpacare_smoke_mcq | acc | 0.333 ± 0.088 | 30 | 0 |",
                 "NaN (every answer empty)", "| kept after dedup | 100 of 120 |", "| training examples (answered) | 98 |",
                 "| contaminated training items removed | 3 |", "| contaminated, removed: medinstruct | 2 |",
                 "| cost (USD, paid requests) | 1.7600 |", "204 s: instructions 12 s", "| final training loss | 1.234 |"):
        assert text in first, text
    assert "acc_norm" not in first  # one headline metric per task up top; the full table below
    assert html.index('id="results"') < html.index('id="win-rates"') < html.index('id="run"')


@needs_data
def test_contamination_of_any_dataset(tmp_path):
    """report.data=FILE: how much of a dataset copies a test item, per source, against dedup's sources."""
    from alpacare.data.eval_sets import load_items

    records = [
        {"instruction": "Which organ produces insulin? Answer in one word.", "input": "", "output": "Pancreas."},
        {"instruction": "Answer.", "input": load_items("medinstruct")[0]["instruction"].upper(), "output": "Malaria."},
        {"instruction": "Describe the stages of wound healing.", "input": "", "output": "..."},
    ]
    data = tmp_path / "data.json"
    data.write_text(json.dumps(records))
    run_dir = tmp_path / "r"
    proc = run_cli(["stages=[report]", f"report.data={data}", "logger=none", f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats, md, html = report_of(run_dir)
    assert stats["sections"][:2] == ["contamination", "analysis"]
    found = [json.loads(line) for line in (run_dir / "report" / "contamination.jsonl").read_text().splitlines()]
    assert [(r["instruction"], r["test_source"], r["containment"]) for r in found] == [
        (records[0]["instruction"], "alpacare_smoke_mcq", 1.0), ("Answer.", "medinstruct", 1.0)]
    assert "2 of 3 training instructions contain a test item" in md
    assert "| alpacare_smoke_mcq | 30 | 1 |" in md and "| medinstruct | 216 | 1 |" in md and "| icliniq | 1000 | 0 |" in md
    assert "not checked, no local data: alpacare_medqa_4options" in md

    # Only the named sources, and [] turns it off.
    proc = run_cli(["stages=[report]", f"report.data={data}", "dedup.decontaminate=[icliniq]", "logger=none",
                    f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, md, _ = report_of(run_dir)
    assert "0 of 3 training instructions" in md and "medinstruct" not in md.split("## Contamination")[1].split("##")[0]
    proc = run_cli(["stages=[report]", f"report.data={data}", "dedup.decontaminate=[]", "logger=none",
                    f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, md, _ = report_of(run_dir)
    assert "not checked (dedup.decontaminate=[])" in md


def test_report_alone_on_a_finished_run_starts_no_endpoint_and_finishes(tmp_path):
    """Issue 20 item 3: ``stages=[report]`` on a run dir must not start the default local llama.cpp
    teacher/judge (nor ask any endpoint) and finishes well within a bound, W&B offline included."""
    run_dir = tmp_path / "run"
    with OpenAITestServer() as server:
        proc = run_cli([*teacher_args(server), "stages=[instructions,dedup,responses]", "instructions.count=8",
                        "dedup.threshold=0.9", "logger=none", f"hydra.run.dir={run_dir}"], tmp_path, timeout=240)
        assert proc.returncode == 0, proc.stderr[-3000:]
    # Default teacher and judge (the local llama.cpp presets), real offline W&B; a hang fails here.
    log_path = run_dir / "alpacare.log"  # Hydra appends each command's log
    before = len(log_path.read_text())
    proc = run_cli(["stages=[report]", f"hydra.run.dir={run_dir}"], tmp_path, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = log_path.read_text()[before:]
    assert "stage report: starting" in log  # this command's log...
    assert "llama.cpp server" not in log + proc.stderr + proc.stdout  # ...shows no endpoint started for the report
    stats, md, _ = report_of(run_dir)
    assert stats["stages_reported"] == ["instructions", "dedup", "responses"] and "analysis" in stats["sections"]
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1  # the report's own run, closed
