"""The teacher prompt that writes new medical tasks, its JSON schema, and the two parsers.

Two output formats:
- structured (default): a JSON object ``{"tasks": [...]}`` constrained by ``task_batch_schema``
  through ``response_format``; decoding cannot leave the schema, so even a 135M teacher returns
  well-formed tasks (their content is another matter);
- free text (the paper's format, for fidelity with GPT-4 runs): numbered blocks of
  ``Type: / Topic: / View: / Difficulty: / Instruction: / Input:`` lines separated by ``###``;
  the examples are shown as the start of that numbered list and the teacher continues it, as in
  the release's ``task_encode_prompt``.

Both formats send the release's kind of system message (the objective: diverse medical tasks)
and requirements that cover every point of the release's prompt (prompt/instrcution_prompt.txt),
in our own words. Task types are open by default, as in the release, whose prompt lists formats
"etc."; ``instructions.closed_types=true`` restricts them to the paper's ten.

Both parsers return (tasks, rejects); a reject keeps the raw text and the reason. Field-level
validation (type, view, difficulty 1-5, non-empty instruction) is ``validate_task``'s.
"""

from __future__ import annotations

import json
import re
from typing import Any, Sequence

from alpacare.data.seeds import TASK_FIELDS, TASK_TYPES, validate_task
from alpacare.errors import DataError



# Bumped whenever the wording below changes: part of the instructions stage's settings
# fingerprint, so a resumed run never mixes tasks written under two prompts.
PROMPT_VERSION = "2"

# The release sends this objective as the system message of every request; ours in our words.
SYSTEM = "You write diverse, realistic medical tasks: the kind of requests clinicians, students and patients bring to an assistant."

REQUIREMENTS = """\
You are helping build a diverse, high-quality set of medical instruction-following tasks, written
the way clinicians write them. Here are the requirements:
1. Every task must be about medicine or health care: clinical care, basic medical science,
   pharmacology, public health, medical education, or patient communication.
2. Vary the view (who is asking): medical students, clinicians and other experts, nurses,
   pharmacists, researchers, patients and their families, the general public.
3. Cover a wide range of topics: specialties, diseases, anatomy, genetics, drugs, diagnostics,
   epidemiology, ethics, nutrition, and so on. Do not repeat a topic from the examples.
4. {formats}
5. Each batch you write must contain every task format named in point 4 at least once (as far
   as the number of tasks allows).
6. Give each task a difficulty from 1 (a first-year student could do it) to 5 (specialist level).
7. Vary the wording of the instructions: mix questions with commands, in one to three
   sentences, in wording that fits the view: plain first person for patients, precise
   terminology for clinicians and experts.
8. Where the task needs an input, write 50 to 200 words of concrete clinical context (a case
   vignette, a clinical note, lab results, a radiology report, a paragraph to rewrite or
   summarize). The input must be complete as written: never a placeholder or a request for the
   user to supply something ("[insert history]", "Describe your symptoms"). Where no input is
   needed, the input is "<noinput>".
9. Multiple-choice and USMLE-style tasks put the question stem and the lettered choices in the
   input, with a detailed context; a USMLE-style question stem runs longer than 50 words.
10. Make the input lengths clearly different from one task to the next: some short, some long.
11. Do not write the answer. Each task must be answerable by a text-only assistant."""

OPEN_FORMATS = ("Use many task formats, for example {types}, or any other format a medical task "
                "can take; name each task's format in its type.")
CLOSED_FORMATS = "Use only these task formats, named exactly as written: {types}."

EXAMPLES_HEADER = "Here are examples of tasks:"

STRUCTURED_TAIL = """\
Now write {n} new, different tasks. Answer with a JSON object {{"tasks": [...]}} whose items have
the fields "type", "topic", "view", "difficulty" (an integer 1-5), "instruction" and "input"."""

# The paper's free-text format, laid out as the release lays it out: the examples are the first
# items of a numbered list, each starting after a "###" line, and the teacher continues the list.
FREE_TEXT_ASK = """\
12. Write {n} new tasks by continuing the numbered list below (tasks {first} to {last}). Start each
    task with a line "###", then the lines "N. Type:", "Topic:", "View:", "Difficulty:",
    "Instruction:" and "Input:" as in the examples."""


def _shown(task: dict[str, Any]) -> dict[str, Any]:
    # Show the seed's own view label ("Radiologist"), not its canonical bucket ("Clinician"):
    # specific views in the examples make for more varied views in the output.
    return {k: task.get("view_raw", task[k]) if k == "view" else task[k] for k in TASK_FIELDS}


def _example_json(task: dict[str, Any]) -> str:
    return json.dumps(_shown(task), ensure_ascii=False)


def _example_text(task: dict[str, Any], number: int) -> str:
    shown = _shown(task)
    lines = [f"{number}. Type: {shown['type']}"]
    lines += [f"{k.capitalize()}: {shown[k]}" for k in TASK_FIELDS if k != "type"]
    return "\n".join(lines)


def requirements(closed_types: bool) -> str:
    formats = (CLOSED_FORMATS if closed_types else OPEN_FORMATS).format(types=", ".join(TASK_TYPES))
    return REQUIREMENTS.format(formats=formats)


def build_messages(examples: Sequence[dict[str, Any]], n_tasks: int, structured: bool,
                   closed_types: bool = False) -> tuple[dict[str, str], ...]:
    """The system message (the objective) and one user message: requirements, examples, the ask.

    Free text (the paper's format): the examples are items 1..k of a numbered list and the user
    message ends with "###" and "k+1. Type:", which the teacher continues (``parse_free_text``
    with ``first_number=k+1`` reads the continuation)."""
    parts = [requirements(closed_types)]
    if structured:
        parts += [EXAMPLES_HEADER, "\n".join(_example_json(t) for t in examples), STRUCTURED_TAIL.format(n=n_tasks)]
    else:
        k = len(examples)
        parts[0] += "\n" + FREE_TEXT_ASK.format(n=n_tasks, first=k + 1, last=k + n_tasks)
        listing = "".join(f"###\n{_example_text(t, i + 1)}\n" for i, t in enumerate(examples))
        parts.append(f"List of {k + n_tasks} tasks:\n{listing}###\n{k + 1}. Type:")
    return ({"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n\n".join(parts)})


def task_batch_schema(n_tasks: int, bounded: bool = True, closed_types: bool = False) -> dict[str, Any]:
    """JSON schema for a batch of 1 to ``n_tasks`` tasks (grammar-constrained decoding).

    Not exactly ``n_tasks``: llama.cpp unrolls the array into one grammar rule per item, and with
    12 required items SmolLM2 decoded at 11 tokens/s against 46 with 1-12 (measured here); the
    prompt asks for ``n_tasks`` either way. ``bounded=False`` drops minItems/maxItems for OpenAI's
    strict mode, which does not accept them. No minLength/maxLength: llama.cpp expands those into
    one rule per character and overflows its grammar limits; ``validate_task`` checks content.
    ``closed_types``: the type is one of the ten canonical types; else any string."""
    task_type: dict[str, Any] = {"type": "string", "enum": list(TASK_TYPES)} if closed_types else {"type": "string"}
    task = {
        "type": "object",
        "properties": {
            "type": task_type,
            "topic": {"type": "string"},
            "view": {"type": "string"},
            "difficulty": {"type": "integer", "enum": [1, 2, 3, 4, 5]},
            "instruction": {"type": "string"},
            "input": {"type": "string"},
        },
        "required": list(TASK_FIELDS),
        "additionalProperties": False,
    }
    tasks: dict[str, Any] = {"type": "array", "items": task}
    if bounded:
        tasks.update(minItems=1, maxItems=n_tasks)
    return {
        "type": "object",
        "properties": {"tasks": tasks},
        "required": ["tasks"],
        "additionalProperties": False,
    }


def _validated(candidates: list[Any], raw_parts: list[str], closed_types: bool) -> tuple[list[dict], list[dict]]:
    tasks, rejects = [], []
    for i, (candidate, raw) in enumerate(zip(candidates, raw_parts)):
        if not isinstance(candidate, dict):
            rejects.append({"raw": raw, "reason": "not an object"})
            continue
        try:
            task = validate_task(candidate, where=f"task {i}", closed_types=closed_types)
        except DataError as e:
            rejects.append({"raw": raw, "reason": str(e)})
            continue
        if len(_WORD.findall(task["instruction"])) < MIN_INSTRUCTION_WORDS:
            # A weak teacher fills the field with JSON debris ("{"); ROUGE-L sees no tokens in it,
            # so dedup would keep every copy.
            rejects.append({"raw": raw, "reason": f"instruction has fewer than {MIN_INSTRUCTION_WORDS} words"})
            continue
        tasks.append(task)
    return tasks, rejects


# Fewer than 3 words is debris, not a task (the shortest of the 167 clinician seeds has 6).
MIN_INSTRUCTION_WORDS = 3
_WORD = re.compile(r"[^\W\d_]{2,}")


def parse_structured(text: str, closed_types: bool = False) -> tuple[list[dict], list[dict]]:
    """Parse ``{"tasks": [...]}``; tolerate prose or code fences around the JSON object."""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return [], [{"raw": text, "reason": "no JSON object in the response"}]
    try:
        data = json.loads(text[start:end + 1], strict=False)  # raw newlines inside strings are common
    except json.JSONDecodeError as e:
        return [], [{"raw": text, "reason": f"invalid JSON ({e.msg}); the response was probably cut off at max_tokens"}]
    items = data.get("tasks") if isinstance(data, dict) else None
    if not isinstance(items, list):
        return [], [{"raw": text, "reason": 'no "tasks" list in the JSON object'}]
    return _validated(items, [json.dumps(t, ensure_ascii=False) for t in items], closed_types)


_SEPARATOR = re.compile(r"^\s*#{3,}\s*$")
_FIELD_LINE = re.compile(r"^\s*(?:\d+\s*[.)]\s*)?(type|topic|view|difficulty|instruction|input)\s*:\s*(.*)$", re.IGNORECASE)


def _parse_block(block: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    current = None
    for line in block.splitlines():
        m = _FIELD_LINE.match(line)
        if m:
            current = m.group(1).lower()
            fields[current] = m.group(2).strip()
        elif current is not None and line.strip():
            fields[current] += "\n" + line.strip()  # multi-line inputs continue the last field
    return fields


def parse_free_text(text: str, closed_types: bool = False, first_number: int | None = None) -> tuple[list[dict], list[dict]]:
    """Parse the paper's numbered ``Field: value`` blocks separated by ``###``. ``first_number``:
    the reply continues a prompt that ended with "N. Type:", so it may start with the type itself
    (the release prepends "N. Type: " to the reply the same way)."""
    first_line = text.lstrip().splitlines()[0] if text.strip() else ""
    if first_number is not None and first_line and not (_FIELD_LINE.match(first_line) or _SEPARATOR.match(first_line)):
        text = f"{first_number}. Type: {text.lstrip()}"
    blocks = [b for b in re.split(r"^\s*#{3,}\s*$", text, flags=re.MULTILINE) if b.strip()]
    if not blocks:
        return [], [{"raw": text, "reason": "empty response"}]
    candidates, raws, rejects = [], [], []
    for block in blocks:
        fields = _parse_block(block)
        missing = [f for f in TASK_FIELDS if f not in fields and f != "input"]
        if missing:
            rejects.append({"raw": block.strip(), "reason": f"missing field(s) {missing}"})
            continue
        candidates.append(fields)
        raws.append(block.strip())
    tasks, more = _validated(candidates, raws, closed_types)
    return tasks, rejects + more


def parse_tasks(text: str, structured: bool, closed_types: bool = False,
                first_number: int | None = None) -> tuple[list[dict], list[dict]]:
    if structured:
        return parse_structured(text, closed_types)
    return parse_free_text(text, closed_types, first_number)
