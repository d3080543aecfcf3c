"""The dedup stage through the real CLI: outputs, sweeps, and bad input failing cleanly."""

from __future__ import annotations

import json
import logging
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_cli


RECORDS = [
    {"id": 0, "instruction": "Explain what multiple sclerosis is and its pathophysiology.", "input": "<noinput>",
     "type": "Open Q&A", "topic": "Neurology", "view": "Student", "difficulty": 1},
    {"id": 1, "instruction": "Explain what multiple sclerosis is, and its pathophysiology!", "input": "<noinput>",
     "type": "Open Q&A", "topic": "Neurology", "view": "Student", "difficulty": 1},
    {"id": 2, "instruction": "List the common side effects of beta blockers in elderly patients.", "input": "",
     "type": "Text Generation", "topic": "Pharmacology", "view": "Clinician", "difficulty": 2},
    {"id": 3, "instruction": "List common side effects of beta blockers in patients.", "input": "",
     "type": "Text Generation", "topic": "Pharmacology", "view": "Clinician", "difficulty": 2},
    {"id": 4, "instruction": "Summarize the patient's discharge note for a family member.", "input": "Note: ...",
     "type": "Summarization", "topic": "General", "view": "Caregiver", "difficulty": 3},
    {"id": 5, "instruction": "Which electrolyte abnormality causes peaked T waves on an ECG?", "input": "",
     "type": "Open Q&A", "topic": "Cardiology", "view": "Student", "difficulty": 2},
    {"id": 6, "instruction": "Which electrolyte abnormality causes peaked T waves on the ECG", "input": "",
     "type": "Open Q&A", "topic": "Cardiology", "view": "Student", "difficulty": 2},
    {"id": 7, "instruction": "Rewrite this consent form in plain language for a patient.", "input": "Form ...",
     "type": "Rewrite", "topic": "Ethics", "view": "Patient", "difficulty": 2},
    # ROUGE-L 0.625 with id 0: dropped at threshold 0.5, kept at 0.7.
    {"id": 8, "instruction": "Explain what myasthenia gravis is and its treatment.", "input": "<noinput>",
     "type": "Open Q&A", "topic": "Neurology", "view": "Student", "difficulty": 1},
]


def cli(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    return run_cli(args, tmp_path, timeout=300)


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), "utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def test_single_run_writes_all_outputs(tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", RECORDS)
    run_dir = tmp_path / "run"
    proc = cli(["stages=[dedup]", f"dedup.input={data}", "logger=none", f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = run_dir / "dedup"
    kept, dropped = read_jsonl(out / "kept.jsonl"), read_jsonl(out / "dropped.jsonl")
    stats = json.loads((out / "stats.json").read_text("utf-8"))
    assert (out / "similarity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert len(kept) + len(dropped) == stats["total"] == len(RECORDS)
    # None of these copies a test item (the smoke suite and the test sets are checked by default).
    assert stats["contaminated"] == 0 and read_jsonl(out / "contaminated.jsonl") == []
    assert stats["contamination"]["enabled"] and "alpacare_smoke_mcq" in {r["source"] for r in stats["contamination"]["rows"]}
    assert stats["kept"] == len(kept) and stats["dropped"] == len(dropped)
    assert stats["kept_ratio"] == pytest.approx(len(kept) / len(RECORDS))
    assert (stats["threshold"], stats["mode"], stats["against_seeds"]) == (0.7, "greedy", True)
    assert stats["seeds"] > 0 and stats["seconds"] >= 0
    assert sum(stats["histogram"]["counts"]) == len(RECORDS) and len(stats["histogram"]["counts"]) == 20
    # Kept records pass through unchanged and in order; the first of each near-duplicate pair stays.
    assert kept == [r for r in RECORDS if r["id"] in {r["id"] for r in kept}]
    assert {r["id"] for r in dropped} >= {1, 6}
    for r in dropped:
        assert r["rouge_l"] > 0.7 and isinstance(r["nearest_instruction"], str)
        assert {k: r[k] for k in RECORDS[0]} == next(x for x in RECORDS if x["id"] == r["id"])
    # Nothing left behind by the atomic writes.
    assert sorted(p.name for p in out.iterdir()) == ["contaminated.jsonl", "dropped.jsonl", "kept.jsonl",
                                                     "similarity.png", "stats.json"]


def test_pairwise_mode_without_seeds_drops_both_members(tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", RECORDS)
    run_dir = tmp_path / "run"
    proc = cli(["stages=[dedup]", f"dedup.input={data}", "dedup.mode=pairwise", "dedup.against_seeds=false",
                "logger=none", f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    dropped = {r["id"] for r in read_jsonl(run_dir / "dedup" / "dropped.jsonl")}
    assert {0, 1, 5, 6} <= dropped
    stats = json.loads((run_dir / "dedup" / "stats.json").read_text("utf-8"))
    assert (stats["mode"], stats["against_seeds"], stats["seeds"]) == ("pairwise", False, 0)


def test_multirun_sweep_gives_one_dir_per_threshold(tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", RECORDS)
    sweep = tmp_path / "sweep"
    proc = cli(["-m", "stages=[dedup]", f"dedup.input={data}", "dedup.threshold=0.5,0.7", "logger=none",
                f"hydra.sweep.dir={sweep}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    stats = [json.loads(p.read_text("utf-8")) for p in sorted(sweep.glob("*/dedup/stats.json"))]
    assert [s["threshold"] for s in stats] == [0.5, 0.7]
    assert stats[0]["kept"] < stats[1]["kept"]


BAD_INPUTS = {
    "empty": (b"", "in.jsonl"),
    "missing_instruction": (b'{"instruction": "ok"}\n\n{"input": "no instruction"}\n', "in.jsonl:3"),
    "blank_instruction": (b'{"instruction": "   "}\n', "in.jsonl:1"),
    "non_utf8": (b'{"instruction": "caf\xe9"}\n', "in.jsonl:1"),
}


@pytest.mark.parametrize("case", [*BAD_INPUTS, "threshold_out_of_range"])
def test_bad_input_fails_with_one_line(tmp_path, case):
    content, named = BAD_INPUTS.get(case, (json.dumps(RECORDS[0]).encode() + b"\n", "dedup.threshold"))
    data = tmp_path / "in.jsonl"
    data.write_bytes(content)
    run_dir = tmp_path / "run"
    extra = ["dedup.threshold=1.5"] if case == "threshold_out_of_range" else []
    proc = cli(["stages=[dedup]", f"dedup.input={data}", "logger=none", f"hydra.run.dir={run_dir}", *extra],
               tmp_path)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1, proc.stderr
    assert named in lines[0]
    assert not (run_dir / "dedup" / "kept.jsonl").exists()
    assert not (run_dir / "dedup" / "stats.json").exists()


def test_wandb_offline_run_holds_the_numbers_and_the_histogram(tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", RECORDS)
    run_dir = tmp_path / "run"
    proc = cli(["stages=[dedup]", f"dedup.input={data}", f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    (run,) = (run_dir / "wandb").glob("offline-run-*")
    (log,) = run.glob("*.wandb")
    raw = log.read_bytes()
    for key in (b"dedup/kept_ratio", b"dedup/max_similarity", b"dedup/similarity", b"histogram"):
        assert key in raw, key


def test_ranks_above_zero_skip_the_data_stages(tmp_path):
    """A distributed launch starts the app once per rank; only rank 0 may write data."""
    data = write_jsonl(tmp_path / "in.jsonl", RECORDS)
    run_dir = tmp_path / "run"
    proc = run_cli(["stages=[dedup]", f"dedup.input={data}", f"hydra.run.dir={run_dir}"], tmp_path, RANK="1")
    assert proc.returncode == 0, proc.stderr
    assert not (run_dir / "dedup").exists() and not (run_dir / "wandb").exists()
    assert "outputs in" not in proc.stdout


def test_copies_of_test_items_are_removed_with_their_source(tmp_path):
    """A smoke-suite question recased inside a longer instruction, a MedInstruct-test task with a word
    changed, and an iCliniq patient text moved into the input are removed before the ROUGE-L filter
    and written to contaminated.jsonl with the item, its source and the score; the rest go on."""
    from alpacare.data.eval_sets import load_items

    medinstruct = load_items("medinstruct")[1]["instruction"]  # "What are the potential side effects for an asthma..."
    icliniq = load_items("icliniq")[0]["input"]
    copies = [
        {"id": 100, "instruction": "Quiz me: WHICH NERVE IS COMPRESSED IN CARPAL TUNNEL SYNDROME? Explain briefly.", "input": ""},
        {"id": 101, "instruction": medinstruct.replace("potential", "possible"), "input": "<noinput>"},
        {"id": 102, "instruction": "Answer the patient below as a doctor.", "input": icliniq},
    ]
    data = write_jsonl(tmp_path / "in.jsonl", RECORDS[:5] + copies + RECORDS[5:])
    run_dir = tmp_path / "run"
    proc = cli(["stages=[dedup]", f"dedup.input={data}", "logger=none", f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = run_dir / "dedup"
    removed = {r["id"]: r for r in read_jsonl(out / "contaminated.jsonl")}
    assert sorted(removed) == [100, 101, 102]
    assert removed[100]["test_source"] == "alpacare_smoke_mcq" and removed[100]["test_id"] == "smoke-06"
    assert removed[100]["test_item"] == "Which nerve is compressed in carpal tunnel syndrome?"
    assert removed[100]["containment"] == 1.0
    assert removed[101]["test_source"] == "medinstruct" and 0.8 < removed[101]["containment"] < 1.0
    assert removed[102]["test_source"] == "icliniq" and removed[102]["test_item"] == icliniq
    assert {k: removed[102][k] for k in copies[2]} == copies[2]  # the record itself passes through
    kept_ids = {r["id"] for r in read_jsonl(out / "kept.jsonl")} | {r["id"] for r in read_jsonl(out / "dropped.jsonl")}
    assert kept_ids == {r["id"] for r in RECORDS}
    stats = json.loads((out / "stats.json").read_text("utf-8"))
    assert stats["contaminated"] == 3 and stats["total"] == len(RECORDS) + 3
    assert stats["kept"] + stats["dropped"] + stats["contaminated"] == stats["total"]
    rows = {r["source"]: r for r in stats["contamination"]["rows"]}
    assert {s: rows[s]["removed"] for s in ("alpacare_smoke_mcq", "medinstruct", "icliniq")} == \
        {"alpacare_smoke_mcq": 1, "medinstruct": 1, "icliniq": 1}
    assert rows["icliniq"]["items"] == 1000 and stats["contamination"]["threshold"] == 0.8

    # [] turns the check off: the copies stay in the data (and go through the ROUGE-L filter).
    off_dir = tmp_path / "off"
    proc = cli(["stages=[dedup]", f"dedup.input={data}", "dedup.decontaminate=[]", "logger=none",
                f"hydra.run.dir={off_dir}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    stats = json.loads((off_dir / "dedup" / "stats.json").read_text("utf-8"))
    assert stats["contaminated"] == 0 and not stats["contamination"]["enabled"]
    assert read_jsonl(off_dir / "dedup" / "contaminated.jsonl") == []


def test_unknown_or_absent_contamination_source_fails_before_work(tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", RECORDS)
    for value, message in (("[alpacare_smoke_mcq,not_a_source]", "dedup.decontaminate: unknown source 'not_a_source'"),
                           ("[alpacare_medqa_4options]", "alpacare_medqa_4options has no local data")):
        run_dir = tmp_path / value.strip("[]").replace(",", "_")
        proc = cli(["stages=[dedup]", f"dedup.input={data}", f"dedup.decontaminate={value}", "logger=none",
                    f"hydra.run.dir={run_dir}"], tmp_path)
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and not (run_dir / "dedup").exists()


def test_similarity_floor_changes_only_the_maxima_below_it(tmp_path):
    """Floor 0 (every maximum exact, the default for small inputs) and floor = threshold (the
    default past EXACT_SIMILARITY_UP_TO) keep and drop the same records with the same scores."""
    data = write_jsonl(tmp_path / "in.jsonl", RECORDS)
    sweep = tmp_path / "sweep"
    proc = cli(["-m", "stages=[dedup]", f"dedup.input={data}", "dedup.similarity_floor=0.0,0.7", "logger=none",
                f"hydra.sweep.dir={sweep}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    exact, fast = sorted(sweep.glob("*/dedup"))
    for name in ("kept.jsonl", "dropped.jsonl"):
        assert read_jsonl(exact / name) == read_jsonl(fast / name)
    stats = [json.loads((d / "stats.json").read_text("utf-8")) for d in (exact, fast)]
    assert [s["similarity_floor"] for s in stats] == [0.0, 0.7]
    assert stats[0]["below_similarity_floor"] == 0 and stats[1]["below_similarity_floor"] == stats[1]["kept"]
    counts = [s["histogram"]["counts"] for s in stats]
    assert counts[0][14:] == counts[1][14:]  # bins from 0.7 up: exact in both
    assert stats[0]["candidate_pairs"] >= stats[1]["candidate_pairs"]


def test_progress_lines_report_done_kept_rate_and_eta(monkeypatch, caplog):
    from alpacare.data.rouge import greedy_filter
    from alpacare.stages import dedup

    monkeypatch.setattr(dedup, "PROGRESS_LOG_EVERY_S", 0.0)
    texts = [f"explain finding {i} of case {i % 7} in plain words" for i in range(3000)]
    with caplog.at_level(logging.INFO, logger=dedup.log.name):
        result = dedup.run_filter(greedy_filter, texts, 0.7, [], floor=0.7)
    lines = [r.getMessage() for r in caplog.records]
    progress = [ln for ln in lines if "ETA" in ln]
    assert len(progress) >= 3, lines  # one per chunk of the filter, the last chunk excepted
    assert re.search(r"dedup: \d+/3000 instructions \(\d+%\), kept \d+, [\d.]+ inst/s, ETA \d\d:\d\d", progress[0])
    assert f"{len(result.kept)} of 3000 instructions kept" in lines[-1]


@pytest.mark.parametrize("floor", ["0.8", "-0.1"])
def test_similarity_floor_out_of_range_fails_with_one_line(tmp_path, floor):
    data = write_jsonl(tmp_path / "in.jsonl", RECORDS)
    proc = cli(["stages=[dedup]", f"dedup.input={data}", f"dedup.similarity_floor={floor}", "logger=none",
                f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode != 0 and len(lines) == 1 and "dedup.similarity_floor" in lines[0], proc.stderr
