"""Fidelity to the AlpaCare release where it matters for results, and the no-input marker:
task types, the teacher prompts, dedup semantics, tokenization of the training pair (fast tests)."""

from __future__ import annotations

import pytest

from alpacare.prompts.alpaca import NO_INPUT, format_prompt, has_input

# -- 12. one no-input marker ------------------------------------------------------------------

MARKERS = ["", "  ", "<noinput>", "<noinput>}", '"<noinput>",', "<No Input>", "noinput", "<none>", "N/A"]


@pytest.mark.parametrize("marker", MARKERS)
def test_every_stage_reads_every_no_input_spelling_the_same_way(marker):
    from alpacare.data.seeds import validate_task
    from alpacare.prompts.responses import build_messages
    from alpacare.stages.responses import _to_alpaca

    assert not has_input(marker)
    task = {"type": "Open Q&A", "topic": "t", "view": "Patient", "difficulty": 1, "instruction": "Why?", "input": marker}
    assert validate_task(task, "x")["input"] == NO_INPUT  # seeds and generated tasks
    assert build_messages("Why?", marker)[-1]["content"] == "Why?"  # responses: the bare instruction
    assert _to_alpaca(task, "Because.")["input"] == ""  # train.json: Alpaca's "" for none
    assert "### Input:" not in format_prompt("Why?", marker)  # train and predict


def test_a_real_input_is_kept():
    assert has_input("A 54-year-old man presents with chest pain.")
    assert "### Input:" in format_prompt("Why?", "None of the above applies; the patient is 54.")


# -- 1. task types: open by default, closed on request ---------------------------------------

def _task(type_: str) -> dict:
    return {"type": type_, "topic": "Renal", "view": "Clinician", "difficulty": 2,
            "instruction": "Explain AKI staging.", "input": "<noinput>"}


def test_task_types_other_than_the_ten_are_kept_as_written_unless_closed():
    import json

    from alpacare.prompts.instructions import parse_structured, task_batch_schema

    text = json.dumps({"tasks": [_task("USMLE style Q&A"), _task(" Case report. "), _task("Translation")]})
    tasks, rejects = parse_structured(text)
    assert [t["type"] for t in tasks] == ["USMLE-style Q&A", "Case report", "Translation"] and not rejects
    tasks, rejects = parse_structured(text, closed_types=True)
    assert [t["type"] for t in tasks] == ["USMLE-style Q&A"] and len(rejects) == 2
    assert "enum" not in task_batch_schema(12)["properties"]["tasks"]["items"]["properties"]["type"]
    assert "enum" in task_batch_schema(12, closed_types=True)["properties"]["tasks"]["items"]["properties"]["type"]


def test_open_types_are_the_default_and_counted_in_stats(tmp_path):
    from tests.openai_server import OpenAITestServer
    from tests.conftest import run_cli, teacher_args
    from tests.test_train_support import compose

    assert compose([]).instructions.closed_types is False
    with OpenAITestServer(open_types=True) as server:
        run_dir = tmp_path / "run"
        proc = run_cli([*teacher_args(server), "stages=[instructions]", "instructions.count=12", "logger=none",
                        f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    stats = json_file(run_dir / "instructions" / "stats.json")
    assert stats["tasks_kept"] == 12 and stats["open_type_tasks"] > 0
    assert "Case report" in stats["types"]


def json_file(path):
    import json

    return json.loads(path.read_text())


# -- 2. the teacher prompt for new tasks --------------------------------------------------------

SEEDS = [{**_task("Open Q&A"), "topic": f"topic {i}", "instruction": f"Seed instruction {i}."} for i in range(3)]


@pytest.mark.parametrize("structured", [True, False])
def test_task_prompt_states_the_release_requirements_and_objective(structured):
    from alpacare.prompts.instructions import build_messages

    system, user = build_messages(SEEDS, 12, structured)
    assert system["role"] == "system" and "diverse" in system["content"] and "medical" in system["content"]
    text = " ".join(user["content"].split())
    assert "must contain every task format named in point 4" in text  # every format in each batch
    assert "never a placeholder or a request for the user to supply something" in text  # concrete inputs
    assert "USMLE-style question stem runs longer than 50 words" in text
    assert "input lengths clearly different" in text
    assert "or any other format" in text  # open types


def test_free_text_prompt_is_a_numbered_list_the_teacher_continues():
    from alpacare.prompts.instructions import build_messages, parse_free_text

    _, user = build_messages(SEEDS, 2, structured=False)
    content = user["content"]
    assert "List of 5 tasks:\n###\n1. Type: Open Q&A\nTopic: topic 0\n" in content
    assert "###\n3. Type: Open Q&A\nTopic: topic 2\n" in content
    assert content.endswith("###\n4. Type:")
    # The reply continues after "4. Type:", as GPT-4 did for the release.
    reply = (" Case report\nTopic: Cardiology\nView: Clinician\nDifficulty: 3\nInstruction: Write a case report.\n"
             "Input: A 61-year-old woman with two hours of chest pain and ST elevation in II, III and aVF.\n###\n"
             "5. Type: Open Q&A\nTopic: Renal\nView: Patient\nDifficulty: 1\nInstruction: What does creatinine show?\n"
             "Input: <noinput>}")
    tasks, rejects = parse_free_text(reply, first_number=4)
    assert [t["type"] for t in tasks] == ["Case report", "Open Q&A"] and not rejects
    assert tasks[1]["input"] == "<noinput>"


# -- 3 and 4. the response prompt and dedup: the paper preset and the default ------------------

def test_response_prompt_plain_by_default_and_the_releases_in_the_paper_preset():
    from alpacare.prompts.responses import build_messages
    from tests.test_train_support import compose

    default, paper = compose([]), compose(["experiment=paper_data"])
    assert default.responses.prompt == "plain" and default.responses.presence_penalty == 0.0
    assert build_messages("Pick one.", "A) x B) y", "plain") == ({"role": "user", "content": "Pick one.\n\nA) x B) y"},)
    system, user = build_messages("Pick one.", "A) x B) y", "paper")
    assert "medical expert" in system["content"] and '"The answer is (X)."' in system["content"]
    assert "steps come first" in system["content"] and user["content"] == "Pick one.\n\nA) x B) y"
    assert paper.responses.prompt == "paper" and paper.responses.presence_penalty == 1.5
    assert paper.instructions.presence_penalty == 1.5 and paper.teacher.structured_output is False
    assert (default.dedup.mode, default.dedup.against_seeds) == ("greedy", True)
    assert (paper.dedup.mode, paper.dedup.against_seeds, paper.dedup.threshold) == ("pairwise", False, 0.7)
    for preset in ("paper_7b", "paper_13b"):  # the training presets carry the same data half
        cfg = compose([f"experiment={preset}"])
        assert cfg.responses.prompt == "paper" and cfg.dedup.mode == "pairwise" and cfg.experiment == preset


def test_pairwise_dedup_drops_both_members_and_ignores_seeds():
    from alpacare.data.rouge import greedy_filter, pairwise_filter

    texts = ["Explain the stages of acute kidney injury in adults.",
             "Explain the stages of acute kidney injury in children.",
             "List three drugs that prolong the QT interval."]
    result = pairwise_filter(texts, 0.7, [])
    assert sorted(result.kept) == [2]  # both near-duplicates go (the release's filter.py)
    assert sorted(greedy_filter(texts, 0.7, []).kept) == [0, 2]  # self-instruct keeps the first


def test_paper_preset_runs_the_data_half_with_the_releases_requests(tmp_path):
    from tests.openai_server import OpenAITestServer
    from tests.conftest import run_cli, teacher_args

    run_dir = tmp_path / "run"
    with OpenAITestServer() as server:
        proc = run_cli([*teacher_args(server), "experiment=paper_data", "stages=[instructions,dedup,responses]",
                        "instructions.count=12", "logger=none", f"hydra.run.dir={run_dir}"], tmp_path)
        requests = server.state.requests
    assert proc.returncode == 0, proc.stderr
    task_requests = [r for r in requests if "List of" in r["messages"][-1]["content"]]
    answer_requests = [r for r in requests if r not in task_requests]
    assert task_requests and answer_requests
    assert all(r["messages"][0]["role"] == "system" and "response_format" not in r for r in task_requests)
    assert all("medical expert" in r["messages"][0]["content"] for r in answer_requests)
    assert all(r.get("presence_penalty") == 1.5 and r["temperature"] == 1.0 and r["top_p"] == 1.0 for r in requests)
    dedup = json_file(run_dir / "dedup" / "stats.json")
    assert dedup["mode"] == "pairwise" and dedup["against_seeds"] is False and dedup["seeds"] == 0
    assert json_file(run_dir / "instructions" / "stats.json")["tasks_kept"] == 12
