"""alpacare-review: audit and pairwise packages out and back in, integrity errors, statistics."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from alpacare.review.stats import cohen_kappa, fleiss_kappa, wilson_interval
from tests.conftest import REPO, SHARED_DATA, cli_env

VERDICTS = ("correct", "partially correct", "incorrect", "unsafe")
TYPES = ["Open Q&A", "Rewrite", "Summarization", None, "Classification"]


# ----------------------------------------------------------------------------- helpers

def wilson(k: float, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Independent Wilson score interval: (p + z^2/2n -/+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)."""
    p = k / n
    a = p + z * z / (2 * n)
    b = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    d = 1 + z * z / n
    return (a - b) / d, (a + b) / d


def review(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alpacare.review", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, env=cli_env(tmp_path), timeout=120)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stderr
    return proc


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("alpacare-review: ")
    return lines[0]


def make_data(path: Path, n: int = 40) -> Path:
    records = []
    for i in range(n):
        r = {"instruction": f"Task {i}: explain <b>condition</b> {i} & its care </script>",
             "input": f"patient note {i}" if i % 3 == 0 else "<noinput>",
             "output": ("- " if i % 4 == 0 else "") + f"Answer {i}, line one.\nLine two with <img src=x onerror=alert(1)>."}
        if TYPES[i % len(TYPES)]:
            r["type"] = TYPES[i % len(TYPES)]
        records.append(r)
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames), list(reader)


def write_csv(path: Path, header: list[str], rows: list[dict[str, str]]) -> Path:
    buf = io.StringIO()
    w = csv.DictWriter(buf, header, lineterminator="\r\n")
    w.writeheader()
    w.writerows(rows)
    path.write_text(buf.getvalue(), encoding="utf-8-sig")
    return path


def fill(src: Path, dst: Path, verdict_of, reviewer: str = "", comment: str = "") -> Path:
    header, rows = read_csv(src)
    for row in rows:
        row["verdict"] = verdict_of(int(row["item_id"]), row)
        row["comment"] = comment
        row["reviewer"] = reviewer
    return write_csv(dst, header, rows)


def audit_pattern(item_id: int, _row=None) -> str:
    # 20 items: 12 correct, 4 partially correct, 3 incorrect, 1 unsafe
    return ("correct" if item_id <= 12 else "partially correct" if item_id <= 16
            else "incorrect" if item_id <= 19 else "unsafe")


@pytest.fixture
def audit_export(tmp_path):
    data = make_data(tmp_path / "data.json")
    ok(review(tmp_path, "audit-export", "--data", data, "--n", 20, "--seed", 1, "--out", tmp_path / "exp"))
    return tmp_path / "exp"


# ----------------------------------------------------------------------------- statistics

def test_wilson_interval_known_values():
    low, high = wilson_interval(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)  # published value for 8/10
    assert wilson_interval(0, 0) == (None, None)
    low, high = wilson_interval(0, 10)
    assert low == 0 and high == pytest.approx(wilson(0, 10)[1])


def test_cohen_kappa_known_value():
    # Wikipedia's worked example: 50 items, yes/yes 20, yes/no 5, no/yes 10, no/no 15 -> kappa 0.4
    a = ["y"] * 20 + ["y"] * 5 + ["n"] * 10 + ["n"] * 15
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa(["x", "x"], ["x", "x"]) is None  # chance agreement 1: undefined


def test_fleiss_kappa_known_value():
    # Fleiss (1971) as on Wikipedia: 10 subjects, 14 raters, 5 categories -> kappa 0.210
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
             [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    items = [[cat for cat, count in enumerate(row) for _ in range(count)] for row in table]
    assert round(fleiss_kappa(items), 3) == 0.210
    # with two raters, Fleiss' kappa is Scott's pi; perfect agreement on varied labels is 1
    assert fleiss_kappa([["a", "a"], ["b", "b"], ["c", "c"]]) == pytest.approx(1.0)


# ----------------------------------------------------------------------------- audit

def test_audit_export_package(audit_export):
    header, rows = read_csv(audit_export / "audit.csv")
    for col in ("item_id", "instruction", "input", "output", "verdict", "comment", "reviewer", "type",
                "item_hash", "package_id", "package_hash"):
        assert col in header
    assert len(rows) == 20
    assert [int(r["item_id"]) for r in rows] == list(range(1, 21))
    assert all(r["verdict"] == "" and r["comment"] == "" for r in rows)
    assert len({r["package_id"] for r in rows}) == 1
    # a leading "-" would make a spreadsheet parse a formula: the cell carries a quote prefix
    assert any(r["output"].startswith("'- Answer") for r in rows)
    key = json.loads((audit_export / "audit_key.json").read_text())
    assert key["seed"] == 1 and key["n"] == 20 and key["source"]["n_records"] == 40
    # stratified: 40 records in 5 strata of 8 -> 4 each
    assert {t: s["sampled"] for t, s in key["strata"].items()} == {
        "Classification": 4, "Open Q&A": 4, "Rewrite": 4, "Summarization": 4, "unknown": 4}
    html = (audit_export / "audit.html").read_text()
    assert "<script>alert" not in html and "<img src=x" not in html and html.count("</script>") == 2
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)  # nothing external
    assert "fetch(" not in html and "XMLHttpRequest" not in html


def test_audit_sample_is_reproducible(tmp_path):
    data = make_data(tmp_path / "data.json")
    for name, seed in (("one", 7), ("two", 7), ("three", 8)):
        ok(review(tmp_path, "audit-export", "--data", data, "--n", 10, "--seed", seed, "--out", tmp_path / name))
    text = {n: (tmp_path / n / "audit.csv").read_text() for n in ("one", "two", "three")}
    assert text["one"] == text["two"] != text["three"]


def test_audit_round_trip(audit_export, tmp_path):
    filled = fill(audit_export / "audit.csv", tmp_path / "filled.csv", audit_pattern, reviewer="Dr Who")
    out = ok(review(tmp_path, "audit-import", filled, "--json"))
    s = json.loads(out.stdout)
    assert s["n"] == 20 and s["n_reviewers"] == 1
    for category, k in (("correct", 12), ("partially_correct", 4), ("incorrect", 3), ("unsafe", 1)):
        low, high = wilson(k, 20)
        assert s[category]["n"] == 20 and s[category]["k"] == k
        assert s[category]["share"] == pytest.approx(k / 20)
        assert s[category]["ci_low"] == pytest.approx(low) and s[category]["ci_high"] == pytest.approx(high)
    # by type: recompute from the CSV's own type column
    _, rows = read_csv(filled)
    for t, sub in s["by_type"].items():
        mine = [audit_pattern(int(r["item_id"])) for r in rows if r["type"] == t]
        assert sub["n"] == len(mine) and sub["correct"]["k"] == mine.count("correct")
    assert [f["item_id"] for f in s["flagged"]] == [17, 18, 19, 20]
    assert s["flagged"][-1]["verdicts"][0] == {"reviewer": "Dr Who", "verdict": "unsafe", "comment": ""}
    assert list(s["reviewers"]) == ["Dr Who"] and s["agreement"] is None
    text = ok(review(tmp_path, "audit-import", filled)).stdout
    low, high = wilson(12, 20)
    assert f"60.0% [{100 * low:.1f}-{100 * high:.1f}]" in text.splitlines()[2] and "item 20" in text


def test_audit_import_accepts_spreadsheet_variants(audit_export, tmp_path):
    """Semicolon-separated, capitalized verdicts, 7.0 ids, CRLF inside cells, trailing empty rows."""
    header, rows = read_csv(audit_export / "audit.csv")
    for r in rows:
        r["verdict"] = audit_pattern(int(r["item_id"])).title()
        r["item_id"] = r["item_id"] + ".0"
        r["output"] = r["output"].replace("\n", "\r\n")
    buf = io.StringIO()
    w = csv.DictWriter(buf, header, delimiter=";", lineterminator="\r\n")
    w.writeheader()
    w.writerows(rows)
    path = tmp_path / "excel.csv"
    path.write_text(buf.getvalue() + ";;;\r\n\r\n", encoding="utf-8")
    s = json.loads(ok(review(tmp_path, "audit-import", path, "--json", "--allow-incomplete")).stdout)
    assert s["correct"]["k"] == 12 and s["n"] == 20


def test_audit_import_run_dir_summary(tmp_path):
    run = tmp_path / "run"
    make_data((run / "responses").mkdir(parents=True) or run / "responses" / "train.json")
    ok(review(tmp_path, "audit-export", "--run-dir", run, "--n", 20, "--seed", 1))
    assert (run / "review" / "audit" / "audit.html").is_file()
    filled = fill(run / "review" / "audit" / "audit.csv", tmp_path / "back.csv", audit_pattern)
    ok(review(tmp_path, "audit-import", filled, "--run-dir", run))  # key found in RUN_DIR/review/audit
    s = json.loads((run / "review" / "audit_summary.json").read_text())
    assert s["correct"]["k"] == 12 and s["seed"] == 1 and s["source"]["n_records"] == 40


def _integrity_case(case: str, export: Path, tmp_path: Path) -> tuple[Path, str]:
    header, rows = read_csv(export / "audit.csv")
    for r in rows:
        r["verdict"] = audit_pattern(int(r["item_id"]))
    if case == "missing":
        del rows[6]
        expect = r"item\(s\) 7 missing"
    elif case == "extra":
        rows.append({**rows[0], "item_id": "21"})
        expect = r"row 22 \(item 21\): extra item"
    elif case == "duplicate":
        rows.append(dict(rows[2]))
        expect = r"row 22 \(item 3\): duplicate of item 3 \(already in row 4"
    elif case == "edited_instruction":
        rows[3]["instruction"] += " (edited)"
        expect = r"row 5 \(item 4\): instruction text was edited"
    elif case == "edited_answer":
        rows[4]["output"] = rows[4]["output"].replace("Answer", "Reply")
        expect = r"row 6 \(item 5\): output text was edited"
    elif case == "unknown_verdict":
        rows[9]["verdict"] = "probably fine"
        expect = r"row 11 \(item 10\): unknown verdict 'probably fine'"
    elif case == "empty_verdict":
        rows[11]["verdict"] = ""
        expect = r"row 13 \(item 12\): no verdict .*--allow-incomplete"
    elif case == "other_export":
        data = make_data(tmp_path / "other.json", 30)
        ok(review(tmp_path, "audit-export", "--data", data, "--n", 20, "--seed", 2, "--out", tmp_path / "other"))
        _, other = read_csv(tmp_path / "other" / "audit.csv")
        rows[5] = {**other[5], "verdict": "correct"}
        expect = r"row 7 \(item 6\): from another export \(package audit-\w+, expected audit-\w+"
    elif case == "forged_package_id":  # rows of another export relabelled with this package id
        data = make_data(tmp_path / "other.json", 30)
        ok(review(tmp_path, "audit-export", "--data", data, "--n", 20, "--seed", 2, "--out", tmp_path / "other"))
        _, other = read_csv(tmp_path / "other" / "audit.csv")
        rows = [{**o, "package_id": rows[0]["package_id"], "package_hash": rows[0]["package_hash"],
                 "verdict": "correct"} for o in other]
        expect = r"the items do not add up to package"
    else:
        raise AssertionError(case)
    return write_csv(tmp_path / f"{case}.csv", header, rows), expect


@pytest.mark.parametrize("case", ["missing", "extra", "duplicate", "edited_instruction", "edited_answer",
                                  "unknown_verdict", "empty_verdict", "other_export", "forged_package_id"])
def test_audit_integrity_errors(case, audit_export, tmp_path):
    path, expect = _integrity_case(case, audit_export, tmp_path)
    line = one_line_error(review(tmp_path, "audit-import", path, "--json"))
    assert str(path) in line and re.search(expect, line), line
    # the same file checked against the export's key: still the same kind of error
    line = one_line_error(review(tmp_path, "audit-import", path, "--key", audit_export))
    assert str(path) in line, line
    if case != "forged_package_id":
        assert re.search(expect, line), line
    else:
        assert re.search(r"row 2 \(item 1\): \w+ text was edited", line), line


def test_audit_file_from_another_export_against_key(audit_export, tmp_path):
    data = make_data(tmp_path / "other.json", 30)
    ok(review(tmp_path, "audit-export", "--data", data, "--n", 20, "--seed", 2, "--out", tmp_path / "other"))
    filled = fill(tmp_path / "other" / "audit.csv", tmp_path / "other_filled.csv", audit_pattern)
    line = one_line_error(review(tmp_path, "audit-import", filled, "--key", audit_export / "audit_key.json"))
    assert re.search(r"row 2 \(item 1\): from another export .*audit_key.json", line), line


def test_audit_bad_inputs_are_one_line(tmp_path):
    line = one_line_error(review(tmp_path, "audit-import", tmp_path / "nope.csv"))
    assert "nope.csv: no such file" in line
    (tmp_path / "bad.json").write_text('[{"instruction": "x"}]')
    line = one_line_error(review(tmp_path, "audit-export", "--data", tmp_path / "bad.json", "--out", tmp_path / "o"))
    assert "bad.json: record 0: output must be a string" in line
    assert not (tmp_path / "o").exists()
    (tmp_path / "junk.csv").write_text("a,b\n1,2\n")
    assert "row 1: missing column(s)" in one_line_error(review(tmp_path, "audit-import", tmp_path / "junk.csv"))


def test_audit_export_never_replaces_another_key(audit_export, tmp_path):
    data = make_data(tmp_path / "data.json")
    ok(review(tmp_path, "audit-export", "--data", data, "--n", 20, "--seed", 1, "--out", audit_export))  # same: fine
    line = one_line_error(review(tmp_path, "audit-export", "--data", data, "--n", 20, "--seed", 9, "--out", audit_export))
    assert "audit_key.json: holds another export" in line
    ok(review(tmp_path, "audit-export", "--data", data, "--n", 20, "--seed", 9, "--out", audit_export, "--force"))


def _form_answers(html_path: Path, verdict_of, reviewer: str) -> dict:
    """What the HTML form's Save button writes, built from the data embedded in the form."""
    html = html_path.read_text(encoding="utf-8")
    data = json.loads(re.search(r'<script type="application/json" id="package-data">(.*?)</script>', html, re.S).group(1))
    items = [{**it, "verdict": verdict_of(it["item_id"]), "comment": ""} for it in data["items"]]
    return {k: data[k] for k in ("format", "version", "kind", "package_id", "package_hash", "n_items")} | {
        "reviewer": reviewer, "saved_at": "2025-01-01T00:00:00Z", "items": items}


def test_audit_several_reviewers(audit_export, tmp_path):
    second = {i: audit_pattern(i) for i in range(1, 21)}
    for i, v in ((1, "partially correct"), (2, "incorrect"), (17, "correct"), (20, "incorrect")):
        second[i] = v
    third = {i: ("correct" if i % 2 else audit_pattern(i)) for i in range(1, 21)}
    f1 = fill(audit_export / "audit.csv", tmp_path / "r1.csv", audit_pattern, reviewer="Ana")
    f2 = fill(audit_export / "audit.csv", tmp_path / "r2.csv", lambda i, _r: second[i])  # no name: file stem
    f3 = tmp_path / "r3.json"
    f3.write_text(json.dumps(_form_answers(audit_export / "audit.html", lambda i: third[i], "Cy")))
    s = json.loads(ok(review(tmp_path, "audit-import", f1, f2, f3, "--json")).stdout)
    assert list(s["reviewers"]) == ["Ana", "r2", "Cy"]
    first = [audit_pattern(i) for i in range(1, 21)]
    assert s["reviewers"]["r2"]["correct"]["k"] == list(second.values()).count("correct")
    assert s["n"] == 60 and s["correct"]["k"] == first.count("correct") + list(second.values()).count(
        "correct") + list(third.values()).count("correct")
    labels = [[first[i - 1], second[i], third[i]] for i in range(1, 21)]
    assert s["agreement"]["n_items"] == 20
    assert s["agreement"]["fleiss_kappa"] == pytest.approx(fleiss_kappa(labels))
    assert "cohen_kappa" not in s["agreement"]
    two = json.loads(ok(review(tmp_path, "audit-import", f1, f2, "--json")).stdout)
    # Cohen's kappa by hand: 16 of 20 agree; marginals from the two label lists
    a, b = first, list(second.values())
    po = sum(x == y for x, y in zip(a, b)) / 20
    pe = sum(a.count(c) * b.count(c) for c in VERDICTS) / 400
    assert po == 16 / 20
    assert two["agreement"]["cohen_kappa"] == pytest.approx((po - pe) / (1 - pe))
    line = one_line_error(review(tmp_path, "audit-import", f1, f1))
    assert "reviewer 'Ana' also returned" in line


# ----------------------------------------------------------------------------- pairwise

def make_systems(tmp_path: Path, n: int = 20) -> tuple[Path, Path]:
    a = tmp_path / "sys_alpha_zz" / "predictions.jsonl"   # our predict output
    b = tmp_path / "sys_omega_qq" / "seed_0.json"          # a released model-output file
    a.parent.mkdir()
    b.parent.mkdir()
    a.write_text("".join(json.dumps({"instruction": f"Question {i}?", "input": "", "output": f"alpha answer {i}"}) + "\n"
                         for i in range(n)))
    b.write_text(json.dumps([{"id": i, "instruction": f"Question {i}?", "response": f" omega answer {i}",
                              "output": "not this"} for i in range(n)]))
    return a, b


@pytest.fixture
def pairwise_export(tmp_path):
    a, b = make_systems(tmp_path)
    ok(review(tmp_path, "pairwise-export", "--a", a, "--b", b, "--seed", 5, "--out", tmp_path / "pw"))
    return tmp_path / "pw"


def winner_pattern(item_id: int) -> str:
    return "a" if item_id <= 11 else "b" if item_id <= 16 else "tie"   # 11 / 5 / 4 of 20


def blinded(key: dict, winner_of) -> dict[int, str]:
    """The A/B verdict that makes ``winner_of(item)`` the winning system, using the key."""
    out = {}
    for it in key["items"]:
        w = winner_of(it["item_id"])
        out[it["item_id"]] = "tie" if w == "tie" else ("A" if it["A"] == w else "B")
    return out


def test_pairwise_blinding(pairwise_export, tmp_path):
    key = json.loads((pairwise_export / "pairwise_key.json").read_text())
    assert key["systems"]["a"]["name"] == "sys_alpha_zz" and key["systems"]["b"]["name"] == "sys_omega_qq"
    for name in ("pairwise.csv", "pairwise.html"):
        text = (pairwise_export / name).read_text(encoding="utf-8-sig")
        for secret in ("sys_alpha_zz", "sys_omega_qq", "predictions", "seed_0", "pairwise_key", str(tmp_path)):
            assert secret not in text, (name, secret)
        assert "omega answer 3" in text and " omega answer" not in text.replace("\n omega", "")
    header, rows = read_csv(pairwise_export / "pairwise.csv")
    assert "answer_a" in header and "answer_b" in header and "system" not in " ".join(header)
    firsts = [it["A"] for it in key["items"]]
    assert set(firsts) == {"a", "b"}  # the order changes from item to item
    for row, it in zip(rows, key["items"]):
        assert row["answer_a"].startswith("alpha" if it["A"] == "a" else "omega")
    # reproducible from the seed; another seed gives another order
    a, b = Path(key["systems"]["a"]["file"]), Path(key["systems"]["b"]["file"])
    ok(review(tmp_path, "pairwise-export", "--a", a, "--b", b, "--seed", 5, "--out", tmp_path / "again"))
    ok(review(tmp_path, "pairwise-export", "--a", a, "--b", b, "--seed", 6, "--out", tmp_path / "other"))
    assert (tmp_path / "again" / "pairwise.csv").read_text() == (pairwise_export / "pairwise.csv").read_text()
    other = json.loads((tmp_path / "other" / "pairwise_key.json").read_text())
    assert [it["A"] for it in other["items"]] != firsts


def test_pairwise_round_trip(pairwise_export, tmp_path):
    key = json.loads((pairwise_export / "pairwise_key.json").read_text())
    verdicts = blinded(key, winner_pattern)
    returned = tmp_path / "back" / "answers.csv"
    returned.parent.mkdir()
    fill(pairwise_export / "pairwise.csv", returned, lambda i, _r: verdicts[i], reviewer="Dr B")
    s = json.loads(ok(review(tmp_path, "pairwise-import", returned, "--key", pairwise_export, "--json")).stdout)
    assert (s["n"], s["wins_a"], s["wins_b"], s["ties"], s["n_items_rated"]) == (20, 11, 5, 4, 20)
    assert s["win_rate"] == pytest.approx((11 + 0.5 * 4) / 20)
    low, high = t_interval_of([1.0] * 11 + [0.0] * 5 + [0.5] * 4)
    assert s["ci_low"] == pytest.approx(low) and s["ci_high"] == pytest.approx(high)
    assert s["systems"]["a"]["name"] == "sys_alpha_zz" and s["judge_agreement"] is None
    assert s["items"][0]["winners"] == {"Dr B": "a"}
    shown_a = sum(v == "A" for v in verdicts.values())
    assert s["first_shown_preferred"] == pytest.approx(shown_a / 16)
    # without --key and nothing beside the file: a clear error
    line = one_line_error(review(tmp_path, "pairwise-import", returned))
    assert "no pairwise_key.json beside" in line
    # the form's JSON, saved beside the key, is found without --key
    form = pairwise_export / "form.json"
    form.write_text(json.dumps(_form_answers(pairwise_export / "pairwise.html", lambda i: verdicts[i], "Dr C")))
    s2 = json.loads(ok(review(tmp_path, "pairwise-import", form, "--json")).stdout)
    assert s2["win_rate"] == s["win_rate"]
    two = json.loads(ok(review(tmp_path, "pairwise-import", returned, form, "--key", pairwise_export, "--json")).stdout)
    assert two["n"] == 40 and two["agreement"]["cohen_kappa"] == pytest.approx(1.0)
    # Two reviewers who agree are one opinion per item, not twice the evidence: the same 20 item
    # scores, the same interval (pooling 40 verdicts would narrow it by sqrt(2)).
    assert two["n_items_rated"] == 20 and two["win_rate"] == pytest.approx(s["win_rate"])
    assert (two["ci_low"], two["ci_high"]) == pytest.approx((s["ci_low"], s["ci_high"]))
    # an audit file given to pairwise-import is refused by name
    line = one_line_error(review(tmp_path, "audit-import", form))
    assert "'pairwise' review file" in line


def t_interval_of(scores: list[float]) -> tuple[float, float]:
    """Independent 95% t interval of a mean: mean -/+ t(0.975, n-1) * stdev / sqrt(n)."""
    from scipy.stats import t

    half = t.ppf(0.975, len(scores) - 1) * statistics.stdev(scores) / math.sqrt(len(scores))
    return statistics.mean(scores) - half, statistics.mean(scores) + half


def test_pairwise_interval_is_over_items_with_reviewers_averaged_first(pairwise_export, tmp_path):
    key = json.loads((pairwise_export / "pairwise_key.json").read_text())
    # Reviewer 1 as winner_pattern; reviewer 2 the same except items 1-6, where b wins: those items
    # score (1 + 0) / 2 = 0.5 each.
    first = blinded(key, winner_pattern)
    second = blinded(key, lambda i: "b" if i <= 6 else winner_pattern(i))
    one = fill(pairwise_export / "pairwise.csv", tmp_path / "one.csv", lambda i, _r: first[i], reviewer="R1")
    two = fill(pairwise_export / "pairwise.csv", tmp_path / "two.csv", lambda i, _r: second[i], reviewer="R2")
    s = json.loads(ok(review(tmp_path, "pairwise-import", one, two, "--key", pairwise_export, "--json")).stdout)
    items = [0.5] * 6 + [1.0] * 5 + [0.0] * 5 + [0.5] * 4  # items 1-6, 7-11, 12-16, 17-20
    low, high = t_interval_of(items)
    assert s["n"] == 40 and s["n_items_rated"] == 20 and s["win_rate"] == pytest.approx(statistics.mean(items))
    assert s["ci_low"] == pytest.approx(low) and s["ci_high"] == pytest.approx(high)
    assert s["reviewers"]["R2"]["n_items_rated"] == 20


def test_pairwise_integrity(pairwise_export, tmp_path):
    header, rows = read_csv(pairwise_export / "pairwise.csv")
    for r in rows:
        r["verdict"] = "tie"
    rows[2]["answer_b"] += " edited"
    path = write_csv(tmp_path / "edited.csv", header, rows)
    line = one_line_error(review(tmp_path, "pairwise-import", path, "--key", pairwise_export))
    assert "row 4 (item 3): answer b text was edited" in line
    rows[2]["answer_b"] = rows[2]["answer_b"][: -len(" edited")]
    rows[7]["verdict"] = "C"
    path = write_csv(tmp_path / "bad_verdict.csv", header, rows)
    line = one_line_error(review(tmp_path, "pairwise-import", path, "--key", pairwise_export))
    assert "row 9 (item 8): unknown verdict 'C' (expected one of: A, B, tie)" in line


def test_pairwise_inputs_must_align(tmp_path):
    a, b = make_systems(tmp_path)
    records = json.loads(b.read_text())
    records[6]["instruction"] = "Something else?"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(records))
    line = one_line_error(review(tmp_path, "pairwise-export", "--a", a, "--b", bad, "--out", tmp_path / "x"))
    assert "record 6: instructions differ" in line and "'Question 6?'" in line
    short = tmp_path / "short.json"
    short.write_text(json.dumps(json.loads(b.read_text())[:15]))
    line = one_line_error(review(tmp_path, "pairwise-export", "--a", a, "--b", short, "--out", tmp_path / "x"))
    assert "record 15:" in line and "20 records" in line and "15" in line
    assert not (tmp_path / "x").exists()


def test_pairwise_judge_agreement(pairwise_export, tmp_path):
    key = json.loads((pairwise_export / "pairwise_key.json").read_text())
    # items 1-10 shared with the judge; (human, judge) classes for the model (system a):
    plan = {1: ("model", "model"), 2: ("model", "model"), 3: ("model", "model"), 4: ("model", "model"),
            5: ("reference", "reference"), 6: ("reference", "reference"), 7: ("tie", "tie"),
            8: ("model", "reference"), 9: ("reference", "tie"), 10: ("tie", "model")}
    side = {"model": "a", "reference": "b", "tie": "tie"}
    verdicts = blinded(key, lambda i: side[plan[i][0]] if i in plan else "tie")
    returned = fill(pairwise_export / "pairwise.csv", pairwise_export / "back.csv", lambda i, _r: verdicts[i])
    by_item = {it["item_id"]: it for it in key["items"]}
    judge = []

    def rec(item_id, order, verdict, reference="gpt-4"):
        it = by_item[item_id]
        judge.append({"test_set": "medinstruct", "reference": reference, "index": it["source_index"],
                      "instruction": it["instruction"], "order": order, "verdict": verdict, "raw": "..."})

    for i, (_, j) in plan.items():
        if i == 7:  # the two orders disagree: mean 0.5 -> tie
            rec(i, "model_first", "model")
            rec(i, "reference_first", "reference")
        elif i == 10:  # one order unparsed: the other decides
            rec(i, "model_first", "model")
            rec(i, "reference_first", None)
        else:
            rec(i, "model_first", j)
            rec(i, "reference_first", j)
        rec(i, "model_first", "reference", reference="claude-2")  # another reference: not used
    judge.append({"test_set": "medinstruct", "reference": "gpt-4", "index": 999, "instruction": "Not in the study",
                  "order": "model_first", "verdict": "model", "raw": ""})
    run = tmp_path / "run"
    (run / "judge").mkdir(parents=True)
    (run / "judge" / "verdicts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in judge))
    proc = ok(review(tmp_path, "pairwise-import", returned, "--json",
                     "--run-dir", run, "--judge-reference", "gpt-4"))
    j = json.loads(proc.stdout)["judge_agreement"]
    assert j["n_items"] == 10 and j["reference"] == "gpt-4" and j["test_set"] == "medinstruct"
    assert j["unparsed_verdicts"] == 1
    assert j["agreement"] == pytest.approx(0.7)
    # kappa by hand: marginals human (5 model, 3 reference, 2 tie), judge (5, 3, 2): pe = 0.38
    assert j["cohen_kappa"] == pytest.approx((0.7 - 0.38) / (1 - 0.38))
    assert j["human_win_rate"] == pytest.approx((5 + 0.5 * 2) / 10)
    saved = json.loads((run / "review" / "pairwise_summary.json").read_text())
    assert saved["judge_agreement"] == j
    # several references and no hint: a one-line error asking to pick
    line = one_line_error(review(tmp_path, "pairwise-import", returned, "--run-dir", run))
    assert "several references (claude-2, gpt-4)" in line
    # model as system b flips the human side
    flipped = json.loads(ok(review(tmp_path, "pairwise-import", returned, "--json", "--judge-verdicts",
                                   run / "judge" / "verdicts.jsonl", "--judge-reference", "gpt-4",
                                   "--judge-model-system", "b")).stdout)["judge_agreement"]
    assert flipped["model_system"] == "b" and flipped["agreement"] != pytest.approx(0.7)


@pytest.mark.parametrize("n", [1, 3])
def test_judge_agreement_matches_items_by_index_when_instructions_are_shared(tmp_path, n):
    # iCliniq: every item has the same instruction; only the position tells them apart.
    instruction = "If you are a doctor, please answer the medical questions based on the patient's description."
    a, b = tmp_path / "ours" / "icliniq.jsonl", tmp_path / "gpt-4" / "iCliniq_output.jsonl"
    for path, who in ((a, "ours"), (b, "gpt-4")):
        path.parent.mkdir()
        path.write_text("".join(json.dumps({"instruction": instruction, "input": f"Patient {i} has a cough.",
                                            "output": f"{who} answer {i}"}) + "\n" for i in range(20)))
    ok(review(tmp_path, "pairwise-export", "--a", a, "--b", b, "--n", n, "--seed", 1, "--out", tmp_path / "pw"))
    key = json.loads((tmp_path / "pw" / "pairwise_key.json").read_text())
    study = {it["source_index"] for it in key["items"]}
    # Humans prefer ours (a) on every study item; the judge prefers ours on exactly those items
    # and the reference on all others, which share the instruction.
    verdicts = blinded(key, lambda i: "a")
    back = fill(tmp_path / "pw" / "pairwise.csv", tmp_path / "pw" / "back.csv", lambda i, _r: verdicts[i])
    judge = [{"test_set": "icliniq", "reference": "gpt-4", "index": i, "instruction": instruction, "order": order,
              "verdict": "model" if i in study else "reference", "raw": ""}
             for i in range(20) for order in ("model_first", "reference_first")]
    verdicts_file = tmp_path / "verdicts.jsonl"
    verdicts_file.write_text("".join(json.dumps(r) + "\n" for r in judge))
    j = json.loads(ok(review(tmp_path, "pairwise-import", back, "--json", "--judge-verdicts", verdicts_file)).stdout)["judge_agreement"]
    assert j["n_items"] == n and j["agreement"] == 1.0 and j["judge_win_rate"] == 1.0
    # A verdict without an item index cannot be matched: one clear line.
    verdicts_file.write_text(json.dumps({**judge[0], "index": None}) + "\n")
    line = one_line_error(review(tmp_path, "pairwise-import", back, "--judge-verdicts", verdicts_file))
    assert "record 1: no item index" in line


RELEASED_A = SHARED_DATA / "model_outputs" / "AlpaCare-7b" / "medinstruct" / "seed_0.json"
RELEASED_B = SHARED_DATA / "reference_outputs" / "gpt-4" / "medsi_output.jsonl"


@pytest.mark.skipif(not (RELEASED_A.is_file() and RELEASED_B.is_file()), reason="released AlpaCare outputs not present")
def test_pairwise_round_trip_on_released_outputs(tmp_path):
    ok(review(tmp_path, "pairwise-export", "--a", RELEASED_A, "--b", RELEASED_B, "--n", 30, "--seed", 0,
              "--out", tmp_path / "pw"))
    key = json.loads((tmp_path / "pw" / "pairwise_key.json").read_text())
    assert key["systems"]["a"]["name"] == "AlpaCare-7b" and key["systems"]["b"]["name"] == "gpt-4"
    assert key["n"] == 30 and key["n_available"] == 216
    html = (tmp_path / "pw" / "pairwise.html").read_text()
    assert "AlpaCare" not in html.split('id="package-data"')[0]
    winner = {it["item_id"]: ("a" if it["item_id"] % 3 == 0 else "b" if it["item_id"] % 3 == 1 else "tie")
              for it in key["items"]}
    verdicts = blinded(key, winner.get)
    back = fill(tmp_path / "pw" / "pairwise.csv", tmp_path / "pw" / "back.csv", lambda i, _r: verdicts[i])
    s = json.loads(ok(review(tmp_path, "pairwise-import", back, "--json")).stdout)
    assert (s["wins_a"], s["wins_b"], s["ties"]) == (10, 10, 10) and s["win_rate"] == pytest.approx(0.5)
