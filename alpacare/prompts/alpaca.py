"""The Stanford Alpaca prompt template: what the student sees during training and at inference.

AlpaCare trains with Alpaca's ``train.py`` unchanged, so the student prompt is Alpaca's
``PROMPT_DICT`` verbatim: a with-input and a no-input variant, ending in ``### Response:``.
The response follows directly (no separator) and ends with the tokenizer's EOS token.
The predict stage formats prompts with the same function, so train and inference never drift.
"""

from __future__ import annotations

from typing import Optional

# Verbatim from stanford_alpaca/train.py (PROMPT_DICT["prompt_input"] / ["prompt_no_input"]).
PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)

# Self-instruct and the MedInstruct generator write this placeholder when a task has no input.
NO_INPUT_MARKERS = ("", "<noinput>", "<no input>", "noinput")


def has_input(value: Optional[str]) -> bool:
    """True when ``value`` is a real input, not empty or a no-input placeholder."""
    return value is not None and value.strip().lower() not in NO_INPUT_MARKERS


def format_prompt(instruction: str, input: Optional[str] = None) -> str:
    """The Alpaca prompt for one task; the no-input variant when ``input`` is empty or a placeholder."""
    if has_input(input):
        return PROMPT_WITH_INPUT.format(instruction=instruction, input=input)
    return PROMPT_NO_INPUT.format(instruction=instruction)
