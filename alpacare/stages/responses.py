"""Stage 3, ``responses``: the teacher answers every kept instruction, one request each.

Input: the dedup stage's ``kept.jsonl`` (or ``responses.input=FILE``), records with at least an
``instruction`` and usually an ``input`` ("<noinput>" when none). Every answer is appended to
``answers.jsonl`` as it lands, keyed by the record's id, so a killed run resumes with only the
unanswered ones. Outputs, written atomically at the end: ``train.json`` (Alpaca format:
instruction, input ("" when none), output, plus the task metadata), ``failed.jsonl``, ``stats.json``.
"""

from __future__ import annotations

import logging
from typing import Any

from alpacare.data.jsonl import AppendLog, read_jsonl, write_json_atomic, write_jsonl_atomic
from alpacare.errors import DataError
from alpacare.llm.client import Completion, Request
from alpacare.prompts.responses import build_messages, has_input
from alpacare.stages import KEPT, TRAIN_SET, StageContext

log = logging.getLogger(__name__)


def _load_instructions(path) -> list[dict[str, Any]]:
    records = read_jsonl(path)
    if not records:
        raise DataError(f"{path}: no instructions (empty file)")
    seen: set[str] = set()
    for i, r in enumerate(records):
        if not isinstance(r.get("instruction"), str) or not r["instruction"].strip():
            raise DataError(f"{path}: record {i + 1} has no instruction")
        r.setdefault("id", f"rec-{i:06d}")
        r["id"] = str(r["id"])
        if r["id"] in seen:
            raise DataError(f"{path}: record {i + 1}: duplicate id {r['id']!r}")
        seen.add(r["id"])
    return records


def _to_alpaca(record: dict[str, Any], output: str) -> dict[str, Any]:
    meta = {k: v for k, v in record.items() if k not in ("instruction", "input", "output")}
    return {
        "instruction": record["instruction"].strip(),
        "input": record["input"].strip() if has_input(record.get("input")) else "",
        "output": output.strip(),
        **meta,
    }


def run(ctx: StageContext) -> dict[str, Any]:
    cfg = ctx.cfg.responses
    path = ctx.input_path(KEPT)
    records = _load_instructions(path)
    teacher = ctx.teacher()

    with AppendLog(ctx.dir / "answers.jsonl") as work:
        resumed = len(work.records)
        ctx.teacher().count_earlier_spend(work.records)
        answered = {a["id"] for a in work.records}
        requests = [
            Request(key=r["id"], messages=build_messages(r["instruction"], r.get("input")),
                    temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens,
                    nonce=f"responses:{r['id']}")
            for r in records if r["id"] not in answered
        ]

        def record(request: Request, completion: Completion | None, error: str) -> None:
            work.append({
                "id": request.key,
                "output": completion.text if completion else "",
                "finish_reason": completion.finish_reason if completion else "error",
                "error": error,
                "cached": bool(completion and completion.cached),
                "prompt_tokens": completion.prompt_tokens if completion else 0,
                "completion_tokens": completion.completion_tokens if completion else 0,
            })

        log.info("responses: %d instructions, %d already answered", len(records), len(answered))
        teacher.run(requests, record, desc="responses")
        answers = {a["id"]: a for a in work.records}

    examples, failed = [], []
    for r in records:
        a = answers.get(r["id"])
        if a and a["output"].strip():
            examples.append(_to_alpaca(r, a["output"]))
        else:
            failed.append({**r, "reason": (a or {}).get("error") or "empty answer"})
    paid = [a for a in answers.values() if not a["cached"]]
    stats = {
        "instructions": len(records),
        "answered": len(examples),
        "failed": len(failed),
        "records_in": len(records), "records_out": len(examples),
        "resumed_answers": resumed,
        "cached_answers": sum(a["cached"] for a in answers.values()),
        "truncated_at_max_tokens": sum(a["finish_reason"] == "length" for a in answers.values()),
        "prompt_tokens": sum(a["prompt_tokens"] for a in answers.values()),
        "completion_tokens": sum(a["completion_tokens"] for a in answers.values()),
        "cost_usd": round(teacher.ledger.cost_of(sum(a["prompt_tokens"] for a in paid),
                                                 sum(a["completion_tokens"] for a in paid)), 6),
    }
    write_jsonl_atomic(ctx.dir / "failed.jsonl", failed)
    write_json_atomic(TRAIN_SET.path(ctx.run_dir), examples)
    ctx.write_stats(stats)
    ctx.tracker.log({f"responses/{k}": v for k, v in stats.items()})
    return {k: stats[k] for k in ("instructions", "answered", "failed", "truncated_at_max_tokens", "completion_tokens", "cost_usd")}
