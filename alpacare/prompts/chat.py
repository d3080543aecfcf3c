"""Which prompt template a student uses: ``alpaca`` (the paper's, alpacare/prompts/alpaca.py) or
``chat`` (the tokenizer's own chat template, e.g. Llama-3.x-Instruct, Qwen2.5-Instruct,
SmolLM2-Instruct), and the one record of that choice in a trained model dir.

``chat``: the prompt is ``apply_chat_template(messages, add_generation_prompt=True)`` with the
template's own behaviour kept (SmolLM2's injects its default system prompt; the same at train and
predict time). A single-turn Alpaca task becomes one user message: the instruction, then a blank
line and the input when there is one (the Alpaca prompt's parts without its header). The response
is the assistant content followed by the template's end-of-turn token, found by rendering a
conversation and taking the first token after the assistant content (no table of model names).

The train stage writes ``prompt_template.json`` into the model dir; predict and benchmark read it
(``template_of``), so a trained model is prompted as it was trained without repeating the flag.
A dir without the file (a base model, an older alpacare model) is ``alpaca``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from alpacare.errors import ConfigError
from alpacare.prompts.alpaca import format_prompt, has_input

TEMPLATES = ("alpaca", "chat")
TEMPLATE_FILE = "prompt_template.json"  # in a trained model dir: {"template": ..., "end_of_turn": ...}
_MARKER = "ALPACARE_ASSISTANT_CONTENT"


def user_content(instruction: str, input: Optional[str] = None) -> str:
    """An Alpaca task as one user message: the instruction, and the input after a blank line."""
    return f"{instruction}\n\n{input}" if has_input(input) else instruction


def require_chat_template(tokenizer, key: str) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"{key}=chat: the tokenizer has no chat template (use {key}=alpaca or a chat model)")


def chat_prompt(tokenizer, messages: list[dict[str, str]]) -> str:
    """The prompt text before the next assistant turn."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def end_of_turn_id(tokenizer) -> int:
    """The token that ends an assistant turn in the tokenizer's chat template (``<|im_end|>`` for
    SmolLM2/Qwen, ``<|eot_id|>`` for Llama-3); EOS when the template adds nothing after the content."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}, {"role": "assistant", "content": _MARKER}], tokenize=False)
    tail = text.split(_MARKER, 1)[1] if _MARKER in text else ""
    ids = tokenizer(tail, add_special_tokens=False)["input_ids"] if tail.strip() else []
    return ids[0] if ids else tokenizer.eos_token_id


def format_task(template: str, tokenizer, instruction: str, input: Optional[str] = None) -> str:
    """The prompt for one Alpaca task under ``template`` (the text predict and train both use)."""
    if template == "chat":
        return chat_prompt(tokenizer, [{"role": "user", "content": user_content(instruction, input)}])
    return format_prompt(instruction, input)


def format_conversation(template: str, tokenizer, messages: list[dict[str, str]]) -> str:
    """The prompt for the next assistant turn of a conversation (HealthBench) under ``template``.

    ``chat``: every turn, system turns included, through the tokenizer's chat template.
    ``alpaca``: the question the model must answer, the last user turn, is the instruction (where an
    Alpaca-tuned model expects a task); the turns before it, when there are any, are the input, one
    ``role: content`` per turn separated by blank lines (the rendering simple-evals shows its grader).
    A single-turn conversation is then exactly an Alpaca task without input."""
    if template == "chat":
        return chat_prompt(tokenizer, messages)
    *earlier, last = messages
    return format_prompt(last["content"], render_turns(earlier))


def render_turns(messages: list[dict[str, str]]) -> str:
    """``role: content`` per turn, blank lines between (simple-evals' rendering of a conversation)."""
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)


def stop_token_ids(template: str, tokenizer) -> list[int]:
    """Tokens that end an answer: EOS, and for ``chat`` also the end-of-turn token."""
    ids = [tokenizer.eos_token_id]
    if template == "chat" and end_of_turn_id(tokenizer) not in ids:
        ids.append(end_of_turn_id(tokenizer))
    return ids


def write_template(model_dir: Path, template: str, tokenizer) -> None:
    record: dict[str, Any] = {"template": template}
    if template == "chat":
        record["end_of_turn"] = tokenizer.convert_ids_to_tokens(end_of_turn_id(tokenizer))
    (Path(model_dir) / TEMPLATE_FILE).write_text(json.dumps(record) + "\n", encoding="utf-8")


def template_of(source: str, override: str = "auto") -> str:
    """``override`` unless ``auto``; else what the model dir records; else ``alpaca``."""
    if override != "auto":
        return override
    path = Path(str(source)).expanduser() / TEMPLATE_FILE
    if path.is_file():
        return json.loads(path.read_text("utf-8")).get("template", "alpaca")
    return "alpaca"
