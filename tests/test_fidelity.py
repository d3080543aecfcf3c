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
