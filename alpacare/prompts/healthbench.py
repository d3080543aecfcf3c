"""HealthBench's grader request, read from the pinned simple-evals files, and its verdict parsing.

Each rubric item of a conversation is one grader request, built as simple-evals builds it
(``HealthBenchEval.grade_sample``): the conversation with the model's answer appended as the last
assistant turn, rendered one ``role: content`` per turn joined by blank lines; the rubric item as
``[points] criterion`` (points as Python prints the JSON number: ``7``, ``-3``, ``0.5``); both put
into ``GRADER_TEMPLATE`` by plain replacement of ``<<conversation>>`` then ``<<rubric_item>>``.
The request is the one simple-evals' grader sampler sends: the system message
``OPENAI_SYSTEM_MESSAGE_API`` first, then the prompt as the user message, at the sampler's default
temperature and the ``max_tokens`` simple-evals gives the grader, to the model it names.

None of that wording is copied here: ``load_protocol`` reads the template, the system message,
the temperature, the grader's model and max_tokens, and the regular expression that strips a
Markdown fence off a reply, from the pinned files (sha256 checked on every read).

Parsing (``parse_verdict``), as simple-evals' ``parse_json_to_dict`` and its caller: the reply,
stripped, without a leading ```json fence and a trailing ```, must be a JSON object whose
``criteria_met`` is true or false; anything else is unparsed (simple-evals then asks again, for
ever; the stage asks again a bounded number of times, alpacare/evaluation/healthbench.py).

``VERDICT_SCHEMA``: the JSON schema the embedded local grader is held to (llama.cpp grammar), so a
135M model always returns a parseable verdict; a hosted grader gets simple-evals' request unchanged.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from alpacare.data.fetch import assigned_string, literal_string
from alpacare.data.healthbench import (EVAL_SCRIPT, META_EVAL_SCRIPT, SAMPLER_SCRIPT, SIMPLE_EVALS_COMMIT,
                                       SIMPLE_EVALS_FILES, SIMPLE_EVALS_REPO, pinned_file)
from alpacare.errors import DataError

# Names in the pinned files.
_TEMPLATE_VARIABLE = "GRADER_TEMPLATE"
_SYSTEM_VARIABLE = "OPENAI_SYSTEM_MESSAGE_API"
_SAMPLER_CLASS = "ChatCompletionSampler"
_PARSER_FUNCTION = "parse_json_to_dict"
CONVERSATION_SLOT = "<<conversation>>"
RUBRIC_SLOT = "<<rubric_item>>"
# Bumped when our rendering of a request changes, so cached verdicts of an older one are not reused.
REQUEST_VERSION = "1"

VERDICT_SCHEMA = {
    "type": "object",
    "properties": {"explanation": {"type": "string", "maxLength": 400}, "criteria_met": {"type": "boolean"}},
    "required": ["explanation", "criteria_met"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class GraderProtocol:
    """simple-evals' grader request and parsing, as read from the pinned files."""

    template: str
    system: str
    temperature: float
    max_tokens: int
    model: str
    fence: str  # the pattern parse_json_to_dict deletes from the stripped reply

    @staticmethod
    def source() -> dict[str, str]:
        """Where the protocol comes from, for stats: the commit and each file's sha256."""
        return {"simple_evals": f"{SIMPLE_EVALS_REPO}@{SIMPLE_EVALS_COMMIT}",
                **{f.relpath: f.sha256 for f in SIMPLE_EVALS_FILES if f.relpath in (EVAL_SCRIPT, META_EVAL_SCRIPT, SAMPLER_SCRIPT)}}

    def user_message(self, conversation: Sequence[dict[str, str]], answer: Optional[str], rubric_item: str) -> str:
        """The grader prompt: ``conversation`` (plus ``answer`` as the last assistant turn, when given)
        and the rubric item, filled in as simple-evals fills them."""
        turns = list(conversation) + ([{"role": "assistant", "content": answer}] if answer is not None else [])
        rendered = "\n\n".join(f"{m['role']}: {m['content']}" for m in turns)
        return self.template.replace(CONVERSATION_SLOT, rendered).replace(RUBRIC_SLOT, rubric_item)

    def messages(self, user_message: str) -> tuple[dict[str, str], ...]:
        return ({"role": "system", "content": self.system}, {"role": "user", "content": user_message})

    def parse(self, text: str) -> Optional[dict[str, Any]]:
        return parse_verdict(text, self.fence)


def rubric_item(criterion: str, points: Any) -> str:
    """``[points] criterion``: simple-evals' ``str(RubricItem)``, points as Python prints them."""
    return f"[{points}] {criterion}"


def parse_verdict(text: str, fence: str) -> Optional[dict[str, Any]]:
    """The reply as a verdict dict (``criteria_met`` true or false, ``explanation`` if any), or None."""
    cleaned = re.sub(fence, "", (text or "").strip())
    try:
        data = json.loads(cleaned)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("criteria_met"), bool):
        return None
    return data


def load_protocol(cache_dir: Optional[str | Path] = None) -> GraderProtocol:
    """The grader request and parsing rule from the pinned simple-evals files."""
    eval_path = pinned_file(EVAL_SCRIPT, cache_dir)
    sampler_path = pinned_file(SAMPLER_SCRIPT, cache_dir)
    eval_tree = ast.parse(eval_path.read_text(encoding="utf-8"))
    grader = _grader_call(eval_tree, eval_path)
    defaults = _init_defaults(ast.parse(sampler_path.read_text(encoding="utf-8")), sampler_path)
    system_name = grader.get("system_message")
    if not isinstance(system_name, ast.Name):
        raise DataError(f"{eval_path}: the grader's system_message is not a named constant")
    return GraderProtocol(
        template=assigned_string(eval_path, _TEMPLATE_VARIABLE),
        system=assigned_string(sampler_path, system_name.id),
        temperature=float(_constant(grader.get("temperature", defaults.get("temperature")), "temperature", sampler_path)),
        max_tokens=int(_constant(grader.get("max_tokens", defaults.get("max_tokens")), "max_tokens", eval_path)),
        model=str(_constant(grader.get("model", defaults.get("model")), "model", eval_path)),
        fence=_fence_pattern(eval_tree, eval_path),
    )


def _grader_call(tree: ast.AST, path: Path) -> dict[str, ast.AST]:
    """The keyword arguments of the one grader sampler healthbench_eval.py builds."""
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
             and node.func.id == _SAMPLER_CLASS]
    if len(calls) != 1:
        raise DataError(f"{path}: expected one {_SAMPLER_CLASS}(...) for the grader, found {len(calls)}")
    return {k.arg: k.value for k in calls[0].keywords if k.arg}


def _init_defaults(tree: ast.AST, path: Path) -> dict[str, ast.AST]:
    """The default values of the sampler's ``__init__`` arguments."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == _SAMPLER_CLASS:
            init = next((f for f in node.body if isinstance(f, ast.FunctionDef) and f.name == "__init__"), None)
            if init is not None:
                args = init.args.args[len(init.args.args) - len(init.args.defaults):]
                return {a.arg: d for a, d in zip(args, init.args.defaults)}
    raise DataError(f"{path}: no {_SAMPLER_CLASS}.__init__")


def _constant(node: Optional[ast.AST], what: str, path: Path) -> Any:
    if isinstance(node, ast.Constant) and node.value is not None:
        return node.value
    raise DataError(f"{path}: the grader's {what} is not a literal")


def _fence_pattern(tree: ast.AST, path: Path) -> str:
    """The pattern ``parse_json_to_dict`` passes to ``re.sub`` (the Markdown fence it strips)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == _PARSER_FUNCTION:
            for call in ast.walk(node):
                if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "sub"
                        and call.args and (pattern := literal_string(call.args[0])) is not None):
                    return pattern
    raise DataError(f"{path}: no re.sub pattern in {_PARSER_FUNCTION}")
