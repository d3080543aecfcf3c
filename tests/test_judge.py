"""The judge stage through the real CLI against a judge on loopback whose verdicts are known:
win rate, tie rate, consistency and drop counts are recomputed here, independently, from the
rule the test judge follows; both parsing rules; caching; alignment errors; the statistics."""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from pathlib import Path

import pytest

from alpacare.prompts.judge import parse_verdict
from tests.conftest import SHARED_DATA, run_cli
from tests.openai_server import OpenAITestServer
from tests.test_pipeline import assert_one_line_error
from tests.test_winrates import alpaca_eval_glm, alpaca_eval_lc  # noqa: F401  (a fixture and its helper)

RELEASED = SHARED_DATA / "model_outputs" / "AlpaCare-7b" / "medinstruct" / "seed_0.json"
needs_data = pytest.mark.skipif(not RELEASED.is_file(), reason="needs ../shared/alpacare-data")
N_ITEMS = 12
REFERENCES = ["gpt-4", "claude-2"]


# -- the test judge: a rule on the two texts it is shown -----------------------------------------

def _section(prompt: str, start: str, end: str) -> str:
    return prompt.split(start, 1)[1].split(end, 1)[0]


def _kind(instruction: str) -> int:
    return int(hashlib.sha256(instruction.encode()).hexdigest(), 16) % 6


def judge_reply(instruction: str, a: str, b: str) -> str:
    """0 tie; 1 longer wins (exact); 2 longer wins (lenient wording); 3 always the first shown;
    4 unreadable; 5 shorter wins (exact)."""
    kind = _kind(instruction)
    longer = "Output (a)" if len(a) > len(b) else "Output (b)"
    shorter = "Output (b)" if longer == "Output (a)" else "Output (a)"
    return {0: "Tie", 1: longer, 2: f"**{longer.replace('(a)', '(A)').replace('(b)', '(B)')}** is better: more complete.",
            3: "Output (a)", 4: "I cannot judge medical content.", 5: shorter}[kind]


def server_reply(body: dict) -> str:
    prompt = body["messages"][-1]["content"]
    instruction = _section(prompt, "## Instruction\n", "\n## ").strip()
    a = _section(prompt, "## Output (a)\n", "\n\n## Output (b)\n")
    b = _section(prompt, "## Output (b)\n", "\n\nAnswer with exactly")
    return judge_reply(instruction, a, b)


def expected_rows(model_outputs: list[str], instructions: list[str], references: dict[str, list[str]], strict: bool):
    """The expected stats row per reference, computed from judge_reply without alpacare.evaluation.winrates."""
    rows = {}
    for ref, ref_outputs in references.items():
        scores, verdicts, agree, both, unparsed = [], [], 0, 0, 0
        for instr, model, refo in zip(instructions, model_outputs, ref_outputs):
            per_order = []
            for model_is_a in (True, False):
                a, b = (model, refo) if model_is_a else (refo, model)
                reply = judge_reply(instr, a, b)
                kind = _kind(instr)
                readable = kind != 4 and (kind != 2 or not strict)
                if not readable:
                    per_order.append(None)
                    unparsed += 1
                    continue
                label = "Tie" if kind == 0 else ("Output (a)" if "(a)" in reply.lower() else "Output (b)")
                winner = "tie" if label == "Tie" else ("model" if (label == "Output (a)") == model_is_a else "reference")
                per_order.append(winner)
            parsed = [v for v in per_order if v is not None]
            verdicts += parsed
            if len(parsed) == 2:
                both += 1
                agree += parsed[0] == parsed[1]
            if parsed and (len(parsed) == 2 or not strict):
                scores.append(sum({"model": 1, "tie": 0.5, "reference": 0}[v] for v in parsed) / len(parsed))
        rows[ref] = {
            "n": len(scores),
            "win_rate": 100 * statistics.mean(scores),
            "se": 100 * statistics.stdev(scores) / math.sqrt(len(scores)),
            "tie_rate": 100 * verdicts.count("tie") / len(verdicts),
            "consistency": 100 * agree / both,
            "n_unparsed": unparsed,
            "n_dropped": len(instructions) - len(scores),
        }
    return rows


def judge_args(server: OpenAITestServer, run_dir: Path, *extra: str) -> list[str]:
    return ["stages=[judge]", "judge=openai_compatible", f"judge.base_url={server.url}", "judge.model=test-judge",
            "judge.structured_output=false", f"judge.predictions={RELEASED}", "judge.test_set=medinstruct",
            f"judge.limit={N_ITEMS}", f"judge.references=[{','.join(REFERENCES)}]", "judge.bootstrap=50",
            "logger=none", f"hydra.run.dir={run_dir}", *extra]


def _released_inputs():
    model = [r["response"].strip() for r in json.loads(RELEASED.read_text())][:N_ITEMS]
    tests = [json.loads(line) for line in (SHARED_DATA / "MedInstruct-test.jsonl").read_text().splitlines()][:N_ITEMS]
    instructions = [t["instruction"].strip() for t in tests]
    refs = {}
    for ref in REFERENCES:
        lines = (SHARED_DATA / "reference_outputs" / ref / "medsi_output.jsonl").read_text().splitlines()[:N_ITEMS]
        field = "response" if ref == "claude-2" else "output"
        refs[ref] = [json.loads(line)[field].strip() for line in lines]
    return model, instructions, refs


@needs_data
def test_win_rates_match_an_independent_count_under_both_parsing_rules(tmp_path):
    model, instructions, refs = _released_inputs()
    assert len({_kind(i) for i in instructions}) >= 5  # the sample exercises most of the rule's cases
    with OpenAITestServer(reply=server_reply) as server:
        proc = run_cli(judge_args(server, tmp_path / "lenient"), tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert len(server.state.requests) == N_ITEMS * len(REFERENCES) * 2
        assert all(r["temperature"] == 0 for r in server.state.requests)
        assert f"judge ledger  requests={N_ITEMS * len(REFERENCES) * 2}" in proc.stdout
        stats = json.loads((tmp_path / "lenient" / "judge" / "stats.json").read_text())
        for rule, run_dir in (("lenient", tmp_path / "lenient"), ("strict", tmp_path / "strict")):
            if rule == "strict":  # same requests: every verdict comes from the response cache
                proc = run_cli(judge_args(server, run_dir, "judge.strict_parsing=true"), tmp_path)
                assert proc.returncode == 0, proc.stderr[-3000:]
                assert len(server.state.requests) == N_ITEMS * len(REFERENCES) * 2
                stats = json.loads((run_dir / "judge" / "stats.json").read_text())
            expected = expected_rows(model, instructions, refs, strict=rule == "strict")
            rows = {r["reference"]: r for r in stats["win_rates"]}
            assert set(rows) == set(REFERENCES)
            for ref in REFERENCES:
                row, want = rows[ref], expected[ref]
                assert row["test_set"] == "medinstruct"
                assert row["n"] == want["n"] and row["n_unparsed"] == want["n_unparsed"], (rule, ref)
                assert row["n_dropped"] == want["n_dropped"]
                for key in ("win_rate", "se", "tie_rate", "consistency"):
                    assert row[key] == pytest.approx(want[key], abs=0.006), (rule, ref, key)
                assert row["model_len"] > 0 and row["reference_len"] > 0 and row["lc_win_rate"] is not None
                strict_drops = expected_rows(model, instructions, refs, strict=True)[ref]["n_dropped"]
                assert row["n_dropped_strict"] == strict_drops
                assert row["n_dropped_lenient"] == expected_rows(model, instructions, refs, strict=False)[ref]["n_dropped"]
        verdicts = [json.loads(line) for line in (tmp_path / "lenient" / "judge" / "verdicts.jsonl").read_text().splitlines()]
        assert len(verdicts) == N_ITEMS * len(REFERENCES) * 2
        assert {v["order"] for v in verdicts} == {"model_first", "reference_first"}
        assert all(v["raw"] for v in verdicts)
        assert (tmp_path / "lenient" / "judge" / "win_rates.png").stat().st_size > 0
        # Rerunning the same run dir asks nothing again.
        proc = run_cli(judge_args(server, tmp_path / "lenient"), tmp_path)
        assert proc.returncode == 0 and len(server.state.requests) == N_ITEMS * len(REFERENCES) * 2


@needs_data
def test_misaligned_predictions_fail_before_anything_is_judged(tmp_path):
    records = json.loads(RELEASED.read_text())
    edited = [dict(r) for r in records]
    edited[3]["instruction"] = "Something else entirely."
    (tmp_path / "edited.json").write_text(json.dumps(edited))
    (tmp_path / "short.json").write_text(json.dumps(records[:-1]))
    with OpenAITestServer(reply=server_reply) as server:
        base = [a for a in judge_args(server, tmp_path / "run") if not a.startswith("judge.predictions=")]
        line = assert_one_line_error(run_cli([*base, f"judge.predictions={tmp_path / 'edited.json'}"], tmp_path),
                                     "edited.json: record 4: instruction differs")
        assert line.startswith("alpacare: error:")
        assert_one_line_error(run_cli([*base, f"judge.predictions={tmp_path / 'short.json'}"], tmp_path),
                              "215 predictions, but medinstruct has 216 items")
        assert_one_line_error(run_cli([*base, f"judge.predictions={RELEASED}", "judge.references=[gpt-5]"], tmp_path),
                              "judge.references: unknown reference(s) ['gpt-5']")
        assert_one_line_error(run_cli([*base, f"judge.predictions={RELEASED}", "judge.test_set=pubmed"], tmp_path),
                              "judge: test set 'pubmed' has no released reference answers")
        assert server.state.requests == []
    assert not (tmp_path / "run" / "judge" / "verdicts.jsonl").exists()


@needs_data
def test_missing_reference_files_name_the_fetch_command(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "MedInstruct-test.jsonl").write_text((SHARED_DATA / "MedInstruct-test.jsonl").read_text())
    with OpenAITestServer(reply=server_reply) as server:
        proc = run_cli(judge_args(server, tmp_path / "run"), tmp_path, ALPACARE_DATA_DIR=str(data))
        assert_one_line_error(proc, "reference_outputs/gpt-4/medsi_output.jsonl", "alpacare-fetch")
        assert server.state.requests == []


def test_judge_stage_needs_predictions_or_a_file(tmp_path):
    proc = run_cli(["stages=[judge]", "logger=none", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert_one_line_error(proc, "judge: needs predict/medinstruct.jsonl", "judge.predictions=FILE")


def test_a_paid_judge_without_its_key_fails_before_any_stage_runs(tmp_path):
    proc = run_cli(["judge=gpt35_turbo", f"hydra.run.dir={tmp_path / 'run'}", "logger=none"], tmp_path,
                   OPENAI_API_KEY="")
    assert_one_line_error(proc, "judge=gpt35_turbo needs an API key", "OPENAI_API_KEY")
    assert not (tmp_path / "run" / "instructions").exists()


# -- parsing ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("reply, strict, lenient", [
    ("Output (a)", "Output (a)", "Output (a)"),
    ("Tie", "Tie", "Tie"),
    ("output (b)", None, "Output (b)"),
    ("Output (B).", None, "Output (b)"),
    ('"Output (a)"', "Output (a)", "Output (a)"),  # strict = the release's rule: punctuation goes
    ("Verdict: Output (b) because it is accurate.", None, "Output (b)"),
    ("**Tie**", "Tie", "Tie"),
    ('{"verdict": "Output (a)"}', "Output (a)", "Output (a)"),
    ("Output (a) is better than Output (b).", None, "Output (a)"),
    ("Both Output (a) and Output (b) are fine.", None, None),
    ("I cannot decide.", None, None),
    ("", None, None),
    ("Output (c)", None, None),
])
def test_parse_verdict(reply, strict, lenient):
    assert parse_verdict(reply, strict=True) == strict
    assert parse_verdict(reply, strict=False) == lenient


@needs_data
def test_judge_spend_cap_stops_cleanly_and_keeps_paid_verdicts(tmp_path):
    with OpenAITestServer(reply=server_reply) as server:
        args = judge_args(server, tmp_path / "run", "judge.price_input_per_1m=100", "judge.max_cost_usd=0.5",
                          "judge.max_concurrency=1")
        proc = run_cli(args, tmp_path)
        assert proc.returncode == 3, proc.stderr[-2000:]
        assert_one_line_error(proc, "judge.max_cost_usd=0.5")
        paid = len(server.state.requests)
        assert 0 < paid < N_ITEMS * len(REFERENCES) * 2
        logged = (tmp_path / "run" / "judge" / "requests.jsonl").read_text().splitlines()
        assert len(logged) == paid  # every paid verdict is kept for the next run
        proc = run_cli([*args[:-2], "judge.max_cost_usd=100"], tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert len(server.state.requests) == N_ITEMS * len(REFERENCES) * 2  # nothing asked twice


DAVINCI = SHARED_DATA / "reference_outputs" / "text-davinci-003" / "medsi_output.jsonl"


@needs_data
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_lc_win_rate_uses_the_texts_as_given(alpaca_eval_glm, tmp_path, monkeypatch):
    """The stage's LC win rate on all of MedInstruct-test vs text-davinci-003 equals AlpacaEval's own
    fit on the stage's verdicts and the raw character lengths (AlpacaEval measures ``len(output)``);
    text-davinci-003's answers start with whitespace, so stripped lengths give another figure."""
    model = [r["response"] for r in json.loads(RELEASED.read_text())]
    reference = [json.loads(line)["output"] for line in DAVINCI.read_text().splitlines()]
    assert sum(r != r.strip() for r in reference) > len(reference) // 2  # what makes the test bite
    run_dir = tmp_path / "run"
    with OpenAITestServer(reply=server_reply) as server:
        args = [a for a in judge_args(server, run_dir) if not a.startswith(("judge.limit=", "judge.references="))]
        proc = run_cli([*args, "judge.references=[text-davinci-003]"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row, = json.loads((run_dir / "judge" / "stats.json").read_text())["win_rates"]
    verdicts = [json.loads(line) for line in (run_dir / "judge" / "verdicts.jsonl").read_text().splitlines()]
    per_item: dict[int, list[float]] = {}
    for v in verdicts:
        if v["verdict"] is not None:
            per_item.setdefault(v["index"], []).append({"model": 1.0, "tie": 0.5, "reference": 0.0}[v["verdict"]])
    kept = sorted(per_item)
    assert len(kept) == row["n"] and len(model) == len(reference) == 216
    # Unjudged items stay in, as NaN: AlpacaEval counts them in the length differences' spread.
    preference = [sum(per_item[k]) / len(per_item[k]) if k in per_item else float("nan") for k in range(216)]

    def lc(length) -> float:
        return alpaca_eval_lc(alpaca_eval_glm, tmp_path, monkeypatch, preference,
                              [length(m) for m in model], [length(r) for r in reference])

    raw, stripped = lc(len), lc(lambda text: len(text.strip()))
    assert round(raw, 2) != round(stripped, 2)
    assert row["lc_win_rate"] == pytest.approx(round(raw, 2), abs=1e-9)
    assert row["reference_len"] == pytest.approx(sum(len(reference[k]) for k in kept) / len(kept), abs=0.01)
