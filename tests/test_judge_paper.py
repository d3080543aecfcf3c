"""``judge.prompt=paper`` and ``judge.strict_parsing=true`` against the AlpaCare release itself.

The release's own scripts (the shared copy in ../shared/alpacare-data/release, never the project)
are run here: ``evaluation/gpt_eval.py`` as a program, with an ``openai`` stand-in that records each
call it makes and answers by the same rule as our loopback judge, and ``evaluation/evaulation.py``'s
scoring imported as a module. Our judge stage, through the real CLI and the real ``openai`` client
against tests/openai_server.py, must send the same requests (system message, user message,
sampling) and score the same win rate from the same replies."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from alpacare.errors import DataError
from alpacare.prompts.judge import (RELEASE_PROMPT_FILE, RELEASE_SCRIPT_FILE, fill_release_template, load_release_judge,
                                    parse_verdict)
from tests.conftest import REPO, SHARED_DATA, run_cli
from tests.openai_server import OpenAITestServer
from tests.test_pipeline import assert_one_line_error

RELEASE = SHARED_DATA / "release"
needs_release = pytest.mark.skipif(not (RELEASE / "evaluation" / "gpt_eval.py").is_file()
                                   or not (SHARED_DATA / "MedInstruct-test.jsonl").is_file(),
                                   reason="needs ../shared/alpacare-data with release/")
MODEL = "AlpaCare-7b"
N_ITEMS = 8

# Replies a decorating judge gives; the rule below picks one per prompt, the same for both sides.
REPLIES = ("Output (a)", "Output (a).", "**Output (b)**", "It's a Tie.", "Tie", "output (a)", " Output (b)\n",
           "Output (b) is better.", "Output (a)\n\nIt is more complete.", "claude-2.", f"{MODEL}", "**Tie**")


def release_reply(user_message: str) -> str:
    return REPLIES[int(hashlib.sha256(user_message.encode()).hexdigest(), 16) % len(REPLIES)]


# The stand-in for the pre-1.0 ``openai`` module gpt_eval.py imports: records every
# ChatCompletion.acreate call as JSON and answers with release_reply.
FAKE_OPENAI = '''
import json, os
from tests.test_judge_paper import release_reply
api_key = None
class error:
    class OpenAIError(Exception):
        pass
class ChatCompletion:
    @staticmethod
    async def acreate(**kwargs):
        with open(os.environ["RELEASE_CALLS"], "a") as f:
            f.write(json.dumps(kwargs) + "\\n")
        return {"choices": [{"message": {"content": release_reply(kwargs["messages"][1]["content"])}}]}
'''


def _head(src: Path, dest: Path, n: int, **extra) -> Path:
    """The first n records of a released file, in the same format (gpt_eval.py reads both)."""
    if src.suffix == ".jsonl":
        records = [json.loads(line) for line in src.read_text().splitlines()[:n]]
        dest.write_text("".join(json.dumps({**r, **extra}) + "\n" for r in records))
    else:
        records = json.loads(src.read_text())[:n]
        dest.write_text(json.dumps([{**r, **extra} for r in records]))
    return dest


def run_release(tmp_path: Path, model_file: Path, reference_file: Path, task: str, reference: str) -> tuple[list, Path]:
    """Run the release's gpt_eval.py in both orders; its recorded calls and its output folder."""
    fake = tmp_path / "fake_openai"
    (fake / "openai").mkdir(parents=True, exist_ok=True)
    (fake / "openai" / "__init__.py").write_text(FAKE_OPENAI)
    calls, out = tmp_path / f"release_calls_{task}_{reference}.jsonl", tmp_path / f"release_out_{task}_{reference}"
    for first in (False, True):
        args = [sys.executable, str(RELEASE / "evaluation" / "gpt_eval.py"), "--model_output", str(model_file),
                "--reference_output", str(reference_file), "--model_name", MODEL, "--refer_model_name", reference,
                "--engine", "gpt-3.5-turbo", "--task_name", task, "--batch_dir", str(out)]
        proc = subprocess.run(args + (["--reference_first"] if first else []), cwd=RELEASE / "evaluation",
                              capture_output=True, text=True, timeout=120,
                              env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{fake}:{REPO}", "RELEASE_CALLS": str(calls)})
        assert proc.returncode == 0, proc.stderr[-2000:]
    return [json.loads(line) for line in calls.read_text().splitlines()], out


def release_scoring():
    spec = importlib.util.spec_from_file_location("release_evaluation", RELEASE / "evaluation" / "evaulation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CASES = [  # (our test set, release task, model outputs, reference, reference file)
    ("medinstruct", "medsi", "model_outputs/AlpaCare-7b/medinstruct/seed_0.json", "claude-2",
     "reference_outputs/claude-2/medsi_output.jsonl"),
    ("medinstruct", "medsi", "model_outputs/AlpaCare-7b/medinstruct/seed_0.json", "text-davinci-003",
     "reference_outputs/text-davinci-003/medsi_output.jsonl"),
    ("icliniq", "iCliniq", "model_outputs/AlpaCare-7b/iCliniq/seed_0.json", "text-davinci-003",
     "reference_outputs/text-davinci-003/iCliniq_output.jsonl"),
]


@needs_release
@pytest.mark.parametrize("test_set, task, model_rel, reference, reference_rel", CASES,
                         ids=[f"{c[0]}-{c[3]}" for c in CASES])
def test_paper_prompt_sends_the_releases_request_and_scores_like_it(tmp_path, test_set, task, model_rel,
                                                                     reference, reference_rel):
    model_file = _head(SHARED_DATA / model_rel, tmp_path / "model.json", N_ITEMS)
    reference_file = _head(SHARED_DATA / reference_rel, tmp_path / "reference.jsonl", N_ITEMS)
    release_calls, release_out = run_release(tmp_path, model_file, reference_file, task, reference)
    assert len(release_calls) == 2 * N_ITEMS

    ours_file = _head(SHARED_DATA / model_rel, tmp_path / "ours.json", None, generator=MODEL)  # judge.limit cuts
    with OpenAITestServer(reply=lambda body: release_reply(body["messages"][-1]["content"])) as server:
        proc = run_cli(["stages=[judge]", "judge=openai_compatible", f"judge.base_url={server.url}",
                        "judge.model=gpt-3.5-turbo", "judge.prompt=paper", "judge.strict_parsing=true",
                        f"judge.predictions={ours_file}", f"judge.test_set={test_set}", f"judge.limit={N_ITEMS}",
                        f"judge.references=[{reference}]", "judge.bootstrap=0", "logger=none",
                        f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        ours = list(server.state.requests)

    # The same requests, byte for byte: every message text and the sampling.
    def request(call: dict) -> tuple:
        return tuple((m["role"], m["content"]) for m in call["messages"])

    assert sorted(request(c) for c in ours) == sorted(request(c) for c in release_calls)
    for body in ours:
        assert body["model"] == "gpt-3.5-turbo" and "response_format" not in body
        for key in ("temperature", "top_p", "max_tokens"):
            assert body[key] == release_calls[0][key], key
        # The release sends both penalties as 0, the API's default; our client leaves defaults out.
        for key in ("frequency_penalty", "presence_penalty"):
            assert body.get(key, 0) == release_calls[0][key] == 0
    assert release_calls[0]["temperature"] == 0 and release_calls[0]["top_p"] == 1 and release_calls[0]["max_tokens"] == 100

    # The same win rate and item count from the same replies, under the release's rule.
    scoring = release_scoring()
    first = scoring.win_score_list_calculate(scoring.read_jsonl(release_out / f"{MODEL}_gpt-3.5-turbo_reference_first.jsonl"),
                                             "gpt-3.5-turbo", MODEL, reference)
    last = scoring.win_score_list_calculate(scoring.read_jsonl(release_out / f"{MODEL}_gpt-3.5-turbo_reference_last.jsonl"),
                                            "gpt-3.5-turbo", MODEL, reference)
    means = scoring.pairwise_mean(first, last)
    row = json.loads((tmp_path / "run" / "judge" / "stats.json").read_text())["win_rates"][0]
    assert row["n"] == int(np.sum(~np.isnan(means))) > 0
    assert row["win_rate"] == pytest.approx(100 * float(np.nanmean(means)), abs=0.006)
    stats = json.loads((tmp_path / "run" / "judge" / "stats.json").read_text())
    assert stats["judge"]["prompt"] == "paper" and stats["judge"]["max_tokens"] == 100
    assert stats["lc_model"].startswith("AlpacaEval 2 length_controlled_minimal")
    source = stats["judge"]["prompt_source"]
    assert source["release"].endswith("@b469c41bcd7ddd57dd0bc072ef99d017c5cb0e4b")
    assert source[RELEASE_PROMPT_FILE] == "c668196c3357383c3a8f5c8b5b61c5a4c254df400e5e04087d8913c83e629b8e"


@needs_release
def test_paper_request_shows_the_texts_exactly_as_released():
    # claude-2's MedInstruct answers all start with a space and MedInstruct-test item 193's
    # instruction ends with one: the release sends them so, and so does judge.prompt=paper.
    release = load_release_judge()
    user = release.messages("How? ", "", " Answer a.", "\n\nAnswer b.\n")[1]["content"]
    assert "## Instruction:\nHow? \n\n## Output (a):\n Answer a.\n\n## Output (b):\n\n\nAnswer b.\n\n\n## Which" in user
    assert user.endswith("or is it a Tie?\n")
    icliniq = release.messages("If you are a doctor, answer.", "I have a cough.", "x", "y")[1]["content"]
    assert "## Instruction:\nIf you are a doctor, answer.\n\nI have a cough.\n\n## Output (a):" in icliniq
    # The release fills placeholders in order, each at its first occurrence in the text so far.
    assert fill_release_template("{instruction}|{output_1}|{output_2}",
                                 {"instruction": "I", "output_1": "has {output_2}", "output_2": "B"}) == "I|has B|{output_2}"


@pytest.mark.parametrize("reply, names, expected", [
    ("Output (a).", ("AlpaCare-7b", "gpt-4"), "Output (a)"),
    ("**Output (b)**", ("AlpaCare-7b", "gpt-4"), "Output (b)"),
    ("It's a Tie.", ("AlpaCare-7b", "gpt-4"), "Tie"),
    ('"Output (a)"', ("gpt-4", "AlpaCare-7b"), "Output (a)"),
    ("  Output (b)\n", ("gpt-4", "AlpaCare-7b"), "Output (b)"),
    ("GPT-4", ("gpt-4", "AlpaCare-7b"), None),  # names compare case-sensitively
    ("gpt-4!", ("gpt-4", "AlpaCare-7b"), "Output (a)"),  # a judge that names the system
    ("Output (a) is better.", ("AlpaCare-7b", "gpt-4"), None),
    ("output (a)", ("AlpaCare-7b", "gpt-4"), None),
    ("Output (B)", ("AlpaCare-7b", "gpt-4"), None),
    ("Output (a), but a Tie on accuracy", ("AlpaCare-7b", "gpt-4"), "Tie"),  # "Tie" anywhere
    ("I cannot decide.", ("AlpaCare-7b", "gpt-4"), None),
    ("", ("AlpaCare-7b", "gpt-4"), None),
])
def test_strict_parsing_is_the_releases_rule(reply, names, expected):
    assert parse_verdict(reply, strict=True, names=names) == expected


@needs_release
def test_strict_parsing_agrees_with_the_release_on_every_reply():
    scoring = release_scoring()
    replies = [*REPLIES, "Output (a) Output (b)", "TIE", "tie", "Tie!", "Output(a)", "(a)", "Output (a)\nTie",
               "The answer is Output (b).", "AlpaCare 7b", "Both are a Tie: Output (a)"]
    for reply in replies:
        for model_first in (True, False):
            names = (MODEL, "gpt-4") if model_first else ("gpt-4", MODEL)
            record = {"response": reply, "model_1": names[0], "model_2": names[1]}
            want = scoring.win_score_list_calculate([record], "gpt-3.5-turbo", MODEL, "gpt-4")[0]
            label = parse_verdict(reply, strict=True, names=names)
            got = (np.nan if label is None else 0.5 if label == "Tie"
                   else 1.0 if (label == "Output (a)") == model_first else 0.0)
            assert (np.isnan(want) and np.isnan(got)) or want == got, (reply, model_first)


def test_paper_prompt_needs_the_release_files_and_says_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("ALPACARE_DATA_DIR", str(tmp_path / "empty"))
    with pytest.raises(DataError, match="alpacare-fetch --only release/prompt/alpaca_eval_chat_gpt.txt"):
        load_release_judge(tmp_path / "cache")
    # An edited copy never stands in for the release's wording.
    for relpath in (RELEASE_PROMPT_FILE, RELEASE_SCRIPT_FILE):
        path = tmp_path / "empty" / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("system_prompt='x'\n{instruction}")
    with pytest.raises(DataError, match="differs from the pinned release file"):
        load_release_judge(tmp_path / "cache")


@needs_release
def test_paper_prompt_without_the_release_files_fails_before_any_stage_runs(tmp_path):
    partial = tmp_path / "partial"  # every released data file, none of release/
    partial.mkdir()
    for entry in SHARED_DATA.iterdir():
        if entry.name != "release":
            (partial / entry.name).symlink_to(entry)
    model_file = _head(SHARED_DATA / CASES[0][2], tmp_path / "model.json", 2)
    proc = run_cli(["stages=[judge]", "judge=openai_compatible", "judge.base_url=http://127.0.0.1:9/v1",
                    "judge.model=m", "judge.prompt=paper", f"judge.predictions={model_file}",
                    "judge.test_set=medinstruct", "judge.references=[gpt-4]", "logger=none",
                    f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, ALPACARE_DATA_DIR=str(partial))
    assert_one_line_error(proc, RELEASE_PROMPT_FILE, f"alpacare-fetch --only {RELEASE_PROMPT_FILE}")
    assert not (tmp_path / "run" / "judge").exists()


def test_paper_presets_use_the_releases_judge_and_the_default_stays_ours():
    from tests.test_train_support import compose

    for preset in ("paper_7b", "paper_13b"):
        judge = compose([f"experiment={preset}"]).judge
        assert judge.prompt == "paper" and judge.strict_parsing is True and judge.model == "gpt-3.5-turbo"
    judge = compose([]).judge
    assert judge.prompt == "ours" and judge.strict_parsing is False
