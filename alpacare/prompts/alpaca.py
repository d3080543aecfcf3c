"""The Stanford Alpaca prompt template: what the student sees during training and at inference.

AlpaCare trains with Alpaca's ``train.py`` unchanged, so the student prompt is Alpaca's
``PROMPT_DICT`` verbatim: a with-input and a no-input variant, ending in ``### Response:``.
The response follows directly (no separator) and ends with the tokenizer's EOS token.
The predict stage formats prompts with the same function, so train and inference never drift.
"""

from __future__ import annotations

import re
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

# The one definition of "this task has no input", used by every stage (seeds, instructions,
# responses, train, predict). Self-instruct and the MedInstruct generator write "<noinput>"; teachers
# also write "<no input>", "<none>", "N/A" or add stray punctuation ("<noinput>}", '"<noinput>",').
# A value is compared after folding: lowercased, everything but letters and digits removed.
NO_INPUT = "<noinput>"
NO_INPUT_MARKERS = frozenset({"", "noinput", "none", "na", "noinputrequired", "noinputneeded", "notapplicable"})


def _fold(value: str) -> str:
    return re.sub(r"[^a-z0-9]+", "", value.lower())


def has_input(value: Optional[str]) -> bool:
    """True when ``value`` is a real input, not empty or a no-input placeholder (any spelling above)."""
    return isinstance(value, str) and _fold(value) not in NO_INPUT_MARKERS


def format_prompt(instruction: str, input: Optional[str] = None) -> str:
    """The Alpaca prompt for one task; the no-input variant when ``input`` is empty or a placeholder."""
    if has_input(input):
        return PROMPT_WITH_INPUT.format(instruction=instruction, input=input)
    return PROMPT_NO_INPUT.format(instruction=instruction)


def _jinja_text(text: str) -> str:
    """Literal template text: Jinja only interprets ``{{``, ``{%`` and ``{#``."""
    assert "{{" not in text and "{%" not in text and "{#" not in text
    return text


def alpaca_chat_template() -> str:
    """The Alpaca template as a Jinja ``chat_template``, built from the two prompts above.

    Saved with every trained model's tokenizer, so ``apply_chat_template`` (vLLM, lm-eval's
    ``--apply_chat_template``, a user's script) gives the model the prompt it was trained on rather
    than the base model's own chat format. A user message becomes the no-input prompt, or the
    with-input prompt when the message also has an ``input`` field; an assistant message is its
    content followed by EOS (as in training). The prompt already ends with ``### Response:``, so
    ``add_generation_prompt`` adds nothing.
    """
    no_input_head, no_input_tail = PROMPT_NO_INPUT.split("{instruction}")
    with_input_head, rest = PROMPT_WITH_INPUT.split("{instruction}")
    with_input_mid, with_input_tail = rest.split("{input}")
    return (
        "{%- for message in messages %}"
        "{%- if message['role'] == 'user' %}"
        "{%- if message.input is defined and message.input %}"
        + _jinja_text(with_input_head) + "{{ message['content'] }}" + _jinja_text(with_input_mid)
        + "{{ message.input }}" + _jinja_text(with_input_tail)
        + "{%- else %}"
        + _jinja_text(no_input_head) + "{{ message['content'] }}" + _jinja_text(no_input_tail)
        + "{%- endif %}"
        "{%- elif message['role'] == 'assistant' %}"
        "{{ message['content'] }}{{ eos_token }}"
        "{%- endif %}"
        "{%- endfor %}"
    )
