"""Teacher output parsing: structured JSON and the paper's free-text format, both robust."""

from __future__ import annotations

import json

from alpacare.prompts.instructions import build_messages, parse_free_text, parse_structured, task_batch_schema
from tests.conftest import run_cli, teacher_args

GOOD = {"type": "USMLE style Q&A", "topic": "Cardiology", "view": "Medical students", "difficulty": "3",
        "instruction": "Answer the question.", "input": "A 60-year-old man... A) x B) y C) z D) w"}


def test_structured_tolerates_fences_raw_newlines_and_bad_items():
    text = "Sure!\n```json\n" + json.dumps({"tasks": [GOOD, {**GOOD, "difficulty": 9}, "junk"]}).replace(
        "A 60", "A\n60") + "\n```"
    tasks, rejects = parse_structured(text)
    assert len(tasks) == 1 and tasks[0]["type"] == "USMLE-style Q&A" and tasks[0]["view"] == "Medical Student"
    assert tasks[0]["difficulty"] == 3
    assert len(rejects) == 2 and all(r["raw"] and r["reason"] for r in rejects)


def test_structured_cut_off_response_is_one_reject_with_raw_text():
    text = json.dumps({"tasks": [GOOD]})[:40]
    tasks, rejects = parse_structured(text)
    assert tasks == [] and rejects[0]["raw"] == text and "JSON" in rejects[0]["reason"]


def test_free_text_blocks_with_multiline_input_and_missing_fields():
    text = ("1. Type: Open Q&A\n1. Topic: Renal\n1. View: Clinician\n1. Difficulty: 2\n"
            "1. Instruction: Explain AKI staging.\n1. Input: <noinput>\n###\n"
            "2. Type: Summarization\n2. Topic: Notes\n2. View: Nurse\n2. Difficulty: 1\n"
            "2. Instruction: Summarize the note.\n2. Input: Line one of the note.\nLine two.\n###\n"
            "3. Type: Chat\n3. Instruction: Missing fields here.")
    tasks, rejects = parse_free_text(text)
    assert [t["topic"] for t in tasks] == ["Renal", "Notes"]
    assert tasks[0]["input"] == "<noinput>" and tasks[1]["input"] == "Line one of the note.\nLine two."
    assert len(rejects) == 1 and "missing" in rejects[0]["reason"]


def test_prompt_shows_examples_and_asks_for_the_batch():
    system, message = build_messages([GOOD] * 3, 12, structured=True)
    assert system["role"] == "system" and "diverse" in system["content"]
    assert "Now write 12 new" in message["content"] and message["content"].count("Answer the question.") == 3
    assert task_batch_schema(12, bounded=False)["properties"]["tasks"] == {
        "type": "array", "items": task_batch_schema(12)["properties"]["tasks"]["items"]}


def test_free_text_format_end_to_end(tmp_path, openai_server):
    run_dir = tmp_path / "run"
    proc = run_cli([*teacher_args(openai_server), "teacher.structured_output=false", "stages=[instructions]",
                    "instructions.count=12", "logger=none", f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "response_format" not in openai_server.state.requests[0]
    stats = json.loads((run_dir / "instructions" / "stats.json").read_text())
    assert stats["tasks_kept"] == 12 and stats["rejects"] == 0


def test_instructions_without_words_are_rejected_not_kept():
    import json

    from alpacare.prompts.instructions import parse_structured

    task = {"type": "Open Q&A", "topic": "hematology", "view": "Patient", "difficulty": 2, "input": ""}
    raw = json.dumps({"tasks": [{**task, "instruction": "{"}, {**task, "instruction": "Explain what anemia is."}]})
    tasks, rejects = parse_structured(raw)
    assert [t["instruction"] for t in tasks] == ["Explain what anemia is."]
    assert rejects[0]["reason"] == "instruction has fewer than 3 words"
