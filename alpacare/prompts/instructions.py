"""The teacher prompt that writes new medical tasks, its JSON schema, and the two parsers.

Two output formats:
- structured (default): a JSON object ``{"tasks": [...]}`` constrained by ``task_batch_schema``
  through ``response_format``; decoding cannot leave the schema, so even a 135M teacher returns
  well-formed tasks (their content is another matter);
- free text (the paper's format, for fidelity with GPT-4 runs): numbered blocks of
  ``Type: / Topic: / View: / Difficulty: / Instruction: / Input:`` lines separated by ``###``.

Both parsers return (tasks, rejects); a reject keeps the raw text and the reason. Field-level
validation (canonical type/view, difficulty 1-5, non-empty instruction) is ``validate_task``'s.
"""

from __future__ import annotations

import json
import re
from typing import Any, Sequence

from alpacare.data.seeds import TASK_FIELDS, TASK_TYPES, validate_task
from alpacare.errors import DataError



REQUIREMENTS = """\
You are helping build a diverse, high-quality set of medical instruction-following tasks, written
the way clinicians write them. Here are the requirements:
1. Every task must be about medicine or health care: clinical care, basic medical science,
   pharmacology, public health, medical education, or patient communication.
2. Vary the view (who is asking): medical students, clinicians and other experts, nurses,
   pharmacists, researchers, patients and their families, the general public.
3. Cover a wide range of topics: specialties, diseases, anatomy, genetics, drugs, diagnostics,
   epidemiology, ethics, nutrition, and so on. Do not repeat a topic from the examples.
4. Use all of these task types: {types}.
5. Give each task a difficulty from 1 (a first-year student could do it) to 5 (specialist level).
6. Write the instruction in one to three sentences, in wording that fits the view: plain first
   person for patients, precise terminology for clinicians and experts.
7. Where the task needs an input, write 50 to 200 words of concrete clinical context (a case
   vignette, a clinical note, lab results, a paragraph to rewrite or summarize). Multiple-choice and
   USMLE-style tasks put the question stem and the lettered choices in the input. Where no input is
   needed, the input is "<noinput>".
8. Do not write the answer. Each task must be answerable by a text-only assistant."""

EXAMPLES_HEADER = "Here are examples of tasks:"

STRUCTURED_TAIL = """\
Now write {n} new, different tasks. Answer with a JSON object {{"tasks": [...]}} whose items have
the fields "type", "topic", "view", "difficulty" (an integer 1-5), "instruction" and "input"."""

FREE_TEXT_TAIL = """\
Now write {n} new, different tasks in exactly this format, one block per task, blocks separated by
a line with ###:
N. Type: <task type>
N. Topic: <topic>
N. View: <who is asking>
N. Difficulty: <1-5>
N. Instruction: <the instruction>
N. Input: <the input, or <noinput>>"""


def _shown(task: dict[str, Any]) -> dict[str, Any]:
    # Show the seed's own view label ("Radiologist"), not its canonical bucket ("Clinician"):
    # specific views in the examples make for more varied views in the output.
    return {k: task.get("view_raw", task[k]) if k == "view" else task[k] for k in TASK_FIELDS}


def _example_json(task: dict[str, Any]) -> str:
    return json.dumps(_shown(task), ensure_ascii=False)


def _example_text(task: dict[str, Any], number: int) -> str:
    return "\n".join(f"{number}. {k.capitalize()}: {v}" for k, v in _shown(task).items())


def build_messages(examples: Sequence[dict[str, Any]], n_tasks: int, structured: bool) -> tuple[dict[str, str], ...]:
    """One user message: requirements, the sampled example tasks, and the ask."""
    parts = [REQUIREMENTS.format(types=", ".join(TASK_TYPES)), EXAMPLES_HEADER]
    if structured:
        parts.append("\n".join(_example_json(t) for t in examples))
        parts.append(STRUCTURED_TAIL.format(n=n_tasks))
    else:
        parts.append("\n###\n".join(_example_text(t, i + 1) for i, t in enumerate(examples)))
        parts.append(FREE_TEXT_TAIL.format(n=n_tasks))
    return ({"role": "user", "content": "\n\n".join(parts)},)


def task_batch_schema(n_tasks: int, bounded: bool = True) -> dict[str, Any]:
    """JSON schema for a batch of 1 to ``n_tasks`` tasks (grammar-constrained decoding).

    Not exactly ``n_tasks``: llama.cpp unrolls the array into one grammar rule per item, and with
    12 required items SmolLM2 decoded at 11 tokens/s against 46 with 1-12 (measured here); the
    prompt asks for ``n_tasks`` either way. ``bounded=False`` drops minItems/maxItems for OpenAI's
    strict mode, which does not accept them. No minLength/maxLength: llama.cpp expands those into
    one rule per character and overflows its grammar limits; ``validate_task`` checks content."""
    task = {
        "type": "object",
        "properties": {
            "type": {"type": "string", "enum": list(TASK_TYPES)},
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


def _validated(candidates: list[Any], raw_parts: list[str]) -> tuple[list[dict], list[dict]]:
    tasks, rejects = [], []
    for i, (candidate, raw) in enumerate(zip(candidates, raw_parts)):
        if not isinstance(candidate, dict):
            rejects.append({"raw": raw, "reason": "not an object"})
            continue
        try:
            tasks.append(validate_task(candidate, where=f"task {i}"))
        except DataError as e:
            rejects.append({"raw": raw, "reason": str(e)})
    return tasks, rejects


def parse_structured(text: str) -> tuple[list[dict], list[dict]]:
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
    return _validated(items, [json.dumps(t, ensure_ascii=False) for t in items])


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


def parse_free_text(text: str) -> tuple[list[dict], list[dict]]:
    """Parse the paper's numbered ``Field: value`` blocks separated by ``###``."""
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
    tasks, more = _validated(candidates, raws)
    return tasks, rejects + more


def parse_tasks(text: str, structured: bool) -> tuple[list[dict], list[dict]]:
    return parse_structured(text) if structured else parse_free_text(text)
