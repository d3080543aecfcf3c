"""The judge's prompt and the parsing of its verdicts (the paper's pairwise protocol).

The judge sees an instruction and two outputs, "Output (a)" and "Output (b)", and answers with
one of "Output (a)", "Output (b)" or "Tie" (the AlpaCare paper's judge format, temperature 0).
Every item is judged twice, the reference shown first once and second once, so a judge's
preference for a position cancels out. The wording below is ours.

Two parsing rules:
- strict (``judge.strict_parsing=true``): the AlpaCare release's rule, the reply must be exactly
  one of the three strings; its evaluation drops an item when either order fails to parse;
- lenient (default): case, surrounding punctuation or quotes, a "Verdict:" prefix, a short
  explanation after the verdict, and JSON ``{"verdict": ...}`` (structured output) are accepted.
"""

from __future__ import annotations

import json
import re
from typing import Optional

VERDICTS = ("Output (a)", "Output (b)", "Tie")
# Bumped when the wording changes, so cached verdicts of an older prompt are not mixed in.
PROMPT_VERSION = "1"

SYSTEM = (
    "You are a careful, impartial evaluator. You compare two outputs written for the same instruction "
    "and decide which one follows the instruction better."
)

TEMPLATE = """Which of the two outputs below follows the instruction better? Consider whether each output is correct, helpful and complete for what was asked. Do not let the order in which the outputs appear, or their length, influence you.

## Instruction
{instruction}
{input_block}
## Output (a)
{output_a}

## Output (b)
{output_b}

Answer with exactly one of: "Output (a)", "Output (b)", or "Tie"."""

VERDICT_SCHEMA = {
    "type": "object",
    "properties": {"verdict": {"type": "string", "enum": list(VERDICTS)}},
    "required": ["verdict"],
    "additionalProperties": False,
}


def build_messages(instruction: str, input: str, output_a: str, output_b: str) -> tuple[dict[str, str], ...]:
    input_block = f"\n## Input\n{input}\n" if input else ""
    user = TEMPLATE.format(instruction=instruction, input_block=input_block, output_a=output_a, output_b=output_b)
    return ({"role": "system", "content": SYSTEM}, {"role": "user", "content": user})


def _json_verdict(text: str) -> Optional[str]:
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if isinstance(data, dict) and isinstance(data.get("verdict"), str):
        return data["verdict"]
    return None


_LABEL = re.compile(r"output\s*\(?\s*([ab])\s*\)?(?![a-z])|\btie\b", re.IGNORECASE)
_PREFIX = re.compile(r"^\W*(?:(?:final\s+)?(?:verdict|answer|decision|judgement|judgment)\s*(?:is)?\s*[:\-]?\s*)?\W*",
                     re.IGNORECASE)


def _label(match: re.Match) -> str:
    return f"Output ({match.group(1).lower()})" if match.group(1) else "Tie"


def parse_verdict(text: str, strict: bool = False) -> Optional[str]:
    """One of ``VERDICTS``, or None when the reply cannot be read as one."""
    text = (text or "").strip()
    inner = _json_verdict(text)
    if inner is not None:
        text = inner.strip()
    if strict:
        return text if text in VERDICTS else None
    head = _PREFIX.sub("", text, count=1)
    first = _LABEL.match(head)
    if first:  # the reply starts with a verdict; whatever follows is explanation
        return _label(first)
    labels = {_label(m) for m in _LABEL.finditer(text)}
    return labels.pop() if len(labels) == 1 else None
