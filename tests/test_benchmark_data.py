"""Benchmark data offline: fetch through a loopback mirror, checksums, and the one-line errors."""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from alpacare.evaluation.benchmarks import data as bdata
from alpacare.evaluation.benchmarks import tasks_index
from alpacare.errors import DataError
from tests.conftest import run_cli


def _parquet(rows: list[dict]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    return buf.getvalue()


def _xlsx(rows: list[list[str]]) -> bytes:
    ns = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
    strings = [v for r in rows for v in r]
    shared = "".join(f"<si><t>{s}</t></si>" for s in strings)
    body, k = "", 0
    for i, r in enumerate(rows, 1):
        cells = ""
        for j, _ in enumerate(r):
            cells += f'<c r="{chr(65 + j)}{i}" t="s"><v>{k}</v></c>'
            k += 1
        body += f'<row r="{i}">{cells}</row>'
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("xl/sharedStrings.xml", f'<sst xmlns="{ns}">{shared}</sst>')
        z.writestr("xl/worksheets/sheet1.xml", f'<worksheet xmlns="{ns}"><sheetData>{body}</sheetData></worksheet>')
    return buf.getvalue()


MEDQA_ROWS = [{"id": str(i), "sent1": f"Q{i}?", "ending0": "a", "ending1": "b", "ending2": "c", "ending3": "d", "label": i % 4}
              for i in range(3)]
ORI_PQAL = {str(100 + i): {"QUESTION": f"Q{i}?", "CONTEXTS": ["c1", "c2"], "LABELS": ["A", "B"], "MESHES": [],
                           "YEAR": "2000", "reasoning_required_pred": "yes", "reasoning_free_pred": "no",
                           "final_decision": "yes", "LONG_ANSWER": "L"} for i in range(4)}
MEQSUM_TABLE = [["CHQ", "Summary", "File"], ["SUBJECT: x MESSAGE: my long question", "short?", "1.txt"]]


class Mirror:
    """A loopback stand-in for the datasets-server and raw GitHub."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                if self.path.startswith("/parquet?"):
                    from urllib.parse import parse_qs, urlparse

                    q = parse_qs(urlparse(self.path).query)
                    dataset, config = q["dataset"][0], q.get("config", ["default"])[0]
                    listing = [{"dataset": dataset, "config": config, "split": split,
                                "url": f"{mirror.url}/files/{dataset}/{config}/{split}/0000.parquet"}
                               for split in ("train", "validation", "test")]
                    body = json.dumps({"parquet_files": listing}).encode()
                else:
                    body = mirror.files.get(self.path.split("/", 2)[-1] if self.path.startswith("/files/") else self.path.lstrip("/"))
                    if body is None:
                        self.send_response(404)
                        self.end_headers()
                        return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


@pytest.fixture
def mirror(monkeypatch):
    files = {f"GBaker/MedQA-USMLE-4-options-hf/default/{s}/0000.parquet": _parquet(MEDQA_ROWS)
             for s in ("train", "validation", "test")}
    files[bdata.PUBMEDQA_FILES[0].path] = json.dumps(ORI_PQAL).encode()
    files[bdata.PUBMEDQA_FILES[1].path] = json.dumps({"100": "yes", "101": "no"}).encode()
    xlsx = _xlsx(MEQSUM_TABLE)
    files[bdata.MEQSUM_FILES[0].path] = xlsx
    # The real spreadsheet's pin cannot match a test file: pin this one instead.
    monkeypatch.setattr(bdata, "MEQSUM_FILES", (bdata.RawFile(bdata.MEQSUM_FILES[0].path, hashlib.sha256(xlsx).hexdigest()),))
    m = Mirror(files)
    yield m
    m.close()


def test_fetch_writes_jsonl_with_a_manifest_and_the_tasks_find_it(mirror, tmp_path):
    dest = tmp_path / "data" / "benchmarks"
    tasks = ["alpacare_medqa_4options", "alpacare_pubmedqa", "alpacare_meqsum"]
    bdata.fetch_benchmarks(tasks, dest=dest, server=mirror.url, raw_base=mirror.url, progress=lambda s: None)
    manifest = json.loads((dest / bdata.MANIFEST).read_text())
    test = dest / "GBaker/MedQA-USMLE-4-options-hf/default/test.jsonl"
    assert [json.loads(x) for x in test.read_text().splitlines()] == MEDQA_ROWS
    assert manifest["GBaker/MedQA-USMLE-4-options-hf/default/test.jsonl"]["rows"] == 3
    pub_test = [json.loads(x) for x in (dest / "bigbio/pubmed_qa/pubmed_qa_labeled_fold0_source/test.jsonl").read_text().splitlines()]
    assert sorted(r["pubid"] for r in pub_test) == [100, 101] and pub_test[0]["CONTEXTS"] == ["c1", "c2"]
    meq = [json.loads(x) for x in (dest / "abachaa/MeQSum/default/train.jsonl").read_text().splitlines()]
    assert meq == [{"CHQ": "SUBJECT: x MESSAGE: my long question", "Summary": "short?", "File": "1.txt"}]
    for task in tasks:
        bdata.verify_files(dest, tasks_index.data_needs(task), task)
    # A second fetch finds everything present; an edited file is caught by its checksum.
    bdata.fetch_benchmarks(tasks, dest=dest, server=mirror.url, raw_base=mirror.url, progress=lambda s: None)
    test.write_text(test.read_text().replace("Q0?", "Q9?"))
    with pytest.raises(DataError, match="checksum"):
        bdata.verify_files(dest, tasks_index.data_needs("alpacare_medqa_4options"), "alpacare_medqa_4options")


def test_a_changed_upstream_file_fails_against_the_recorded_checksum(mirror, tmp_path):
    dest = tmp_path / "bench"
    bdata.fetch_benchmarks(["alpacare_pubmedqa"], dest=dest, server=mirror.url, raw_base=mirror.url, progress=lambda s: None)
    (dest / "bigbio/pubmed_qa/pubmed_qa_labeled_fold0_source/test.jsonl").unlink()
    mirror.files[bdata.PUBMEDQA_FILES[0].path] = json.dumps({**ORI_PQAL, "999": ORI_PQAL["100"]}).encode()
    with pytest.raises(DataError, match="sha256 mismatch"):
        bdata.fetch_benchmarks(["alpacare_pubmedqa"], dest=dest, server=mirror.url, raw_base=mirror.url, progress=lambda s: None)


def test_fetch_cli_without_network_is_one_line(tmp_path):
    from alpacare.data.cli import main

    assert main(["benchmarks", "--tasks", "alpacare_medqa_4options", "--dest", str(tmp_path),
                 "--server", "http://127.0.0.1:9", "--raw-base", "http://127.0.0.1:9"]) == 2
    assert main(["benchmarks", "--tasks", "no_such_task", "--dest", str(tmp_path)]) == 2


def test_missing_data_is_one_line_naming_task_and_command_within_seconds(tmp_path):
    started = time.monotonic()
    proc = run_cli(["stages=[benchmark]", "benchmark=medical", f"benchmark.model={tmp_path}", "logger=none",
                    f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, timeout=120, ALPACARE_DATA_DIR=str(tmp_path / "nodata"))
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    # The model dir is checked first; give it a config so the data check is reached.
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    proc = run_cli(["stages=[benchmark]", "benchmark=medical", f"benchmark.model={tmp_path / 'm'}", "logger=none",
                    f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, timeout=120, ALPACARE_DATA_DIR=str(tmp_path / "nodata"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("alpacare:")]
    assert len(lines) == 1 and "alpacare_medqa_4options" in lines[0] and "alpacare-fetch benchmarks" in lines[0], proc.stderr
    assert time.monotonic() - started < 60


@pytest.mark.parametrize("args,expected", [
    (["benchmark.tasks=[no_such_task]"], "unknown task"),
    (["benchmark=no_such_suite"], "no_such_suite"),
    (["benchmark.batch_size=0"], "benchmark.batch_size"),
])
def test_bad_names_fail_before_any_stage_with_one_line(tmp_path, args, expected):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    proc = run_cli(["stages=[benchmark]", f"benchmark.model={tmp_path / 'm'}", "logger=none", *args,
                    f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and expected in lines[0], proc.stderr


def test_malformed_user_task_yaml_is_one_line(tmp_path):
    user = tmp_path / "mytasks"
    user.mkdir()
    (user / "bad.yaml").write_text("task: mine\ndoc_to_text: [unclosed\n")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    proc = run_cli(["stages=[benchmark]", f"benchmark.model={tmp_path / 'm'}", "logger=none", "benchmark.tasks=[mine]",
                    f"benchmark.include_path={user}", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, timeout=120)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "bad.yaml" in lines[0] and "not valid YAML" in lines[0], proc.stderr


def test_none_suite_composes_to_no_tasks_and_default_is_smoke():
    from tests.test_train_support import compose

    assert list(compose(["benchmark=none"]).benchmark.tasks) == []
    cfg = compose([])
    assert cfg.benchmark.name == "smoke" and "benchmark" in cfg.stages
    general = compose(["benchmark=general"]).benchmark
    assert dict(general.fewshot) == {"alpacare_mmlu": 5, "alpacare_bbh": 3, "alpacare_truthfulqa_mc2": 0, "alpacare_drop": 3}


def test_prepared_tasks_carry_the_suite_shots(tmp_path):
    out = tasks_index.prepare_task_dir(tmp_path / "tasks", tmp_path / "data",
                                       {"alpacare_mmlu": 5, "alpacare_mmlu_anatomy": 1, "alpacare_drop": 3})
    assert "num_fewshot: 5\n" in (out / "mmlu" / "alpacare_mmlu_astronomy.yaml").read_text()
    assert "num_fewshot: 1\n" in (out / "mmlu" / "alpacare_mmlu_anatomy.yaml").read_text()
    assert f"{tmp_path / 'data'}/EleutherAI/drop/default/validation.jsonl" in (out / "drop" / "alpacare_drop.yaml").read_text()
    assert (out / "smoke" / "smoke_mcq.jsonl").is_file()
