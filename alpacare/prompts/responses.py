"""The request that asks the teacher to answer one task: the instruction, then its input if any.

No system prompt and no extra framing, as in the paper: the teacher sees the task as a user would
write it, so the answer is what a user of the tuned model should get.
"""

from __future__ import annotations

from typing import Optional

from alpacare.prompts.alpaca import NO_INPUT, has_input  # noqa: F401  (the one no-input definition)


def build_messages(instruction: str, task_input: Optional[str]) -> tuple[dict[str, str], ...]:
    content = instruction.strip()
    if has_input(task_input):
        content += "\n\n" + task_input.strip()
    return ({"role": "user", "content": content},)
