"""alpacare-compare over a real Hydra multirun sweep (dedup threshold on a small file)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, cli_env, run_cli
from tests.test_dedup_stage import RECORDS, write_jsonl


def compare(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alpacare.report.compare", *args], capture_output=True, text=True, cwd=REPO,
                          env=cli_env(tmp_path), timeout=120)


def test_compare_over_a_real_sweep_gives_one_row_per_job(tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", RECORDS)
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", "stages=[dedup]", f"dedup.input={data}", "dedup.threshold=0.5,0.7,0.9", "logger=none",
                    f"hydra.sweep.dir={sweep}"], tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert len(jobs) == 3

    proc = compare([str(sweep)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    with open(sweep / "compare.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    header = list(rows[0])
    assert header[:2] == ["run", "dedup.threshold"]  # the swept parameter first, the constant ones left out
    assert "dedup.input" not in header and header[2] == "dedup/kept_ratio"
    # Copies of test items removed, in all and per source (none in this file).
    assert {"dedup/contaminated", "dedup/alpacare_smoke_mcq/contaminated", "dedup/medinstruct/contaminated"} <= set(header)
    assert {r["dedup/contaminated"] for r in rows} == {"0"}
    for row in rows:
        job = sweep / Path(row["run"]).name
        stats = json.loads((job / "dedup" / "stats.json").read_text())
        assert float(row["dedup.threshold"]) == stats["threshold"]
        assert float(row["dedup/kept_ratio"]) == stats["kept_ratio"]
    assert [float(r["dedup.threshold"]) for r in rows] == [0.5, 0.7, 0.9]
    assert [float(r["dedup/kept_ratio"]) for r in rows] == sorted(float(r["dedup/kept_ratio"]) for r in rows)
    assert (sweep / "compare.png").read_bytes()[:4] == b"\x89PNG"
    md = (sweep / "compare.md").read_text()
    assert md in proc.stdout and md.count("\n") == 2 + 3

    # A job with a corrupt stats.json: a warning line, its metric left empty; the others still compared.
    (jobs[0] / "dedup" / "stats.json").write_text("{not json")
    out = tmp_path / "cmp"
    proc = compare([str(sweep), "--out", str(out)], tmp_path)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
    assert "not valid JSON" in proc.stderr and str(jobs[0] / "dedup" / "stats.json") in proc.stderr
    with open(out / "compare.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and rows[0]["dedup/kept_ratio"] == "" and rows[1]["dedup/kept_ratio"]


def test_a_dir_that_is_not_a_run_is_one_line(tmp_path):
    (tmp_path / "nothing" / "here").mkdir(parents=True)
    for target in (tmp_path / "nothing", tmp_path / "missing"):
        proc = compare([str(target)], tmp_path)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and str(target) in lines[0], proc.stderr
