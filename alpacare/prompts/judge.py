"""The judge's prompt and the parsing of its verdicts (the paper's pairwise protocol).

The judge sees an instruction and two outputs, "Output (a)" and "Output (b)", and answers with
one of "Output (a)", "Output (b)" or "Tie" (the AlpaCare paper's judge format, temperature 0).
Every item is judged twice, the reference shown first once and second once, so a judge's
preference for a position cancels out.

Two prompts (``judge.prompt``):
- ``ours`` (default): our wording below: a rubric (correct, helpful, complete), a request to ignore
  order and length, the input under its own heading, no worked example, max_tokens 32. It is the
  default because it states what a medical answer is judged on and asks the judge to resist the
  two biases the paper's protocol is known for (position, length), and a small local judge follows
  it better than a prompt built around a worked example.
- ``paper``: the AlpaCare release's request, byte for byte (evaluation/gpt_eval.py): its one-sentence
  system message, then ``prompt/alpaca_eval_chat_gpt.txt`` plus a newline as the user message with
  the release's placeholder filling, temperature 0, top_p 1, max_tokens 100; the instruction shown
  is the task's instruction, and for a task with an input (iCliniq) the instruction, a blank line and
  the input. Neither text is copied here: both files are fetched from the pinned release commit
  (``alpacare-fetch``) and checked against their sha256 each time they are read.

Two parsing rules:
- strict (``judge.strict_parsing=true``): the release's rule (evaluation/evaulation.py): in the
  stripped reply, "Output (a)" and "Output (b)" are replaced by the names of the systems shown there,
  every character that is not an ASCII letter or digit is deleted, and the rest must equal one
  system's name (deleted the same way); otherwise "Tie" anywhere in it is a tie; otherwise unparsed.
  So "Output (a).", "**Output (b)**" and "It's a Tie." count, "output (a)" and "Output (a) is better"
  do not. An item is dropped when either order is unparsed (alpacare/evaluation/winrates.py);
- lenient (default): case, surrounding punctuation or quotes, a "Verdict:" prefix, a short
  explanation after the verdict, and JSON ``{"verdict": ...}`` (structured output) are accepted.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from alpacare.data.fetch import UPSTREAM_COMMIT, UPSTREAM_REPO, assigned_string, released_file, verified_release_file
from alpacare.errors import DataError

VERDICTS = ("Output (a)", "Output (b)", "Tie")
PROMPTS = ("ours", "paper")
# Bumped when the wording changes, so cached verdicts of an older prompt are not mixed in.
PROMPT_VERSION = "1"
# max_tokens per prompt when judge.max_tokens is unset. Ours: a verdict is a few tokens, with room
# for a short explanation after it. Paper: the release's --max_tokens default (evaluation/gpt_eval.py).
MAX_TOKENS = {"ours": 32, "paper": 100}

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


# ---------------------------------------------------------------------------------------------
# judge.prompt=paper: the release's request, read from its pinned files
# ---------------------------------------------------------------------------------------------

RELEASE_PROMPT_FILE = "release/prompt/alpaca_eval_chat_gpt.txt"
RELEASE_SCRIPT_FILE = "release/evaluation/gpt_eval.py"
# The variable of gpt_eval.py that holds the system message of its gpt-3.5-turbo judge.
_RELEASE_SYSTEM_VARIABLE = "system_prompt"
# The release's placeholder syntax (utils.eval_make_prompt): "{name}" without whitespace inside.
_PLACEHOLDER = re.compile(r"{([^\s]+?)}")


@dataclass(frozen=True)
class ReleaseJudge:
    """The release's judge request: its system message and its user-message template (the prompt
    file's text plus the newline gpt_eval.py appends)."""

    system: str
    template: str

    @staticmethod
    def source() -> dict[str, str]:
        """Where the wording comes from, for stats: the release commit and each file's sha256."""
        return {"release": f"{UPSTREAM_REPO}@{UPSTREAM_COMMIT}",
                **{relpath: released_file(relpath).sha256 for relpath in (RELEASE_PROMPT_FILE, RELEASE_SCRIPT_FILE)}}

    def messages(self, instruction: str, input: str, output_a: str, output_b: str) -> tuple[dict[str, str], ...]:
        values = {"instruction": release_instruction(instruction, input), "output_1": output_a, "output_2": output_b}
        return ({"role": "system", "content": self.system},
                {"role": "user", "content": fill_release_template(self.template, values)})


def release_instruction(instruction: str, input: str) -> str:
    """The instruction the release shows: MedInstruct's and AlpacaFarm's as they are; iCliniq's
    instruction, a blank line and the patient's text (gpt_eval.py, task iCliniq)."""
    return f"{instruction}\n\n{input}" if input else instruction


def fill_release_template(template: str, values: dict[str, str]) -> str:
    """The release's filling (utils.eval_make_prompt): each placeholder of the template, in order,
    replaces its first occurrence in the text filled so far (so an answer that itself contains
    "{output_2}" is treated as the release treats it)."""
    text = template
    for name in _PLACEHOLDER.findall(template):
        if name not in values:
            raise DataError(f"{RELEASE_PROMPT_FILE}: unknown placeholder {{{name}}}")
        text = text.replace("{" + name + "}", values[name], 1)
    return text


def load_release_judge(cache_dir: Optional[str | Path] = None) -> ReleaseJudge:
    """The release's system message and prompt, from the pinned files (sha256 checked)."""
    prompt_path = verified_release_file(RELEASE_PROMPT_FILE, cache_dir)
    script_path = verified_release_file(RELEASE_SCRIPT_FILE, cache_dir)
    # gpt_eval.py reads the file with open().read() (text mode) and appends "\n".
    template = prompt_path.read_text(encoding="utf-8") + "\n"
    return ReleaseJudge(system=assigned_string(script_path, _RELEASE_SYSTEM_VARIABLE), template=template)


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------


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


def alphanumeric(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9]", "", text)


def release_verdict(text: str, name_a: str, name_b: str) -> Optional[str]:
    """The release's rule (module docstring) for a reply where ``name_a`` was shown as Output (a)
    and ``name_b`` as Output (b); the names must differ once reduced to letters and digits."""
    a, b = alphanumeric(name_a), alphanumeric(name_b)
    if not a or not b or a == b:
        raise ValueError(f"system names {name_a!r} and {name_b!r} are not distinct in letters and digits")
    reply = alphanumeric(text.strip().replace("Output (a)", name_a).replace("Output (b)", name_b))
    if reply == a:
        return "Output (a)"
    if reply == b:
        return "Output (b)"
    return "Tie" if "Tie" in reply else None


def parse_verdict(text: str, strict: bool = False, names: tuple[str, str] = ("Output (a)", "Output (b)")) -> Optional[str]:
    """One of ``VERDICTS``, or None when the reply cannot be read as one.

    ``names``: the systems shown as Output (a) and (b), which the strict rule compares against
    (the release compares against generator names; the labels themselves serve when unknown)."""
    text = (text or "").strip()
    inner = _json_verdict(text)
    if inner is not None:
        text = inner.strip()
    if strict:
        return release_verdict(text, *names)
    head = _PREFIX.sub("", text, count=1)
    first = _LABEL.match(head)
    if first:  # the reply starts with a verdict; whatever follows is explanation
        return _label(first)
    labels = {_label(m) for m in _LABEL.finditer(text)}
    return labels.pop() if len(labels) == 1 else None
