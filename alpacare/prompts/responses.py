"""The request that asks the teacher to answer one task: the instruction, then its input if any.

Two prompts (``responses.prompt``):
- ``plain`` (default): no system prompt and no extra framing. The teacher sees the task as a user
  of the tuned model would write it, so the answer is what that user should get, and a small local
  teacher is not distracted by instructions about the answer's form.
- ``paper``: the AlpaCare release's behaviour (task_output_generation/output_generation_chat_completion.py),
  in our words: a system prompt that makes the teacher a medical expert, asks for intermediate
  reasoning before the final answer where it helps, and for multiple-choice items a final
  "The answer is (X)." sentence (used by ``experiment=paper_data``, with presence_penalty 1.5).
"""

from __future__ import annotations

from typing import Optional

from alpacare.prompts.alpaca import NO_INPUT, has_input  # noqa: F401  (the one no-input definition)

PROMPTS = ("plain", "paper")
# Bumped whenever the wording below changes (part of the responses stage's settings fingerprint).
PROMPT_VERSION = "1"

PAPER_SYSTEM = """\
You are a medical expert who answers medical questions and carries out medical tasks. Follow these rules:
1. For multiple-choice, calculation and classification tasks, work through the intermediate steps when they help; for other tasks, answer directly.
2. Any intermediate steps come first; the final answer comes after them.
3. For a multiple-choice question, end with the chosen option in exactly this form: "The answer is (X)." For example, for "Which bone is in the lower leg? A) Humerus B) Ulna C) Tibia D) Radius", a good answer is: "The humerus, ulna and radius are arm bones; the tibia is the larger of the two lower-leg bones. The answer is (C)."
4. Do not use that form for any other kind of task."""


def build_messages(instruction: str, task_input: Optional[str], prompt: str = "plain") -> tuple[dict[str, str], ...]:
    content = instruction.strip()
    if has_input(task_input):
        content += "\n\n" + task_input.strip()
    user = {"role": "user", "content": content}
    if prompt == "paper":
        return ({"role": "system", "content": PAPER_SYSTEM}, user)
    return (user,)
