"""Stage 3, ``responses``: the teacher answers every kept instruction, one request each.

Input: the dedup stage's ``kept.jsonl`` (or ``responses.input=FILE``), records with at least an
``instruction`` and usually an ``input`` ("<noinput>" when none). Every answer is appended to
``answers.jsonl`` as it lands, keyed by the record's id, so a killed run resumes with only the
unanswered ones (``settings.json`` records the teacher, prompt and sampling; a resume under other
settings stops with one line). Outputs, written atomically at the end: ``train.json`` (Alpaca
format: instruction, input ("" when none), output, plus the task metadata), ``failed.jsonl``,
``truncated.jsonl`` (answers cut at ``responses.max_tokens``, kept out of train.json unless
``responses.keep_truncated=true``), ``stats.json``.
"""

from __future__ import annotations

import logging
from typing import Any

from alpacare.data.jsonl import AppendLog, read_jsonl, write_json_atomic, write_jsonl_atomic
from alpacare.errors import DataError
from alpacare.fingerprint import check_settings
from alpacare.llm.client import BATCH_LOG, Completion, Request, endpoint_identity, paid_cost, work_log_usage
from alpacare.prompts.responses import PROMPT_VERSION, build_messages, has_input
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


def settings(cfg: Any) -> dict[str, Any]:
    """Everything that decides the answers (not keep_truncated: that only filters train.json)."""
    t, rc = cfg.teacher, cfg.responses
    return {
        "teacher.name": t.name, "teacher.model": t.model, "teacher.endpoint": endpoint_identity(t, t.base_url),
        **{f"responses.{k}": rc[k] for k in ("prompt", "temperature", "top_p", "presence_penalty", "max_tokens")},
        "prompt_version": PROMPT_VERSION,
    }


def run(ctx: StageContext) -> dict[str, Any]:
    cfg = ctx.cfg.responses
    path = ctx.input_path(KEPT)
    records = _load_instructions(path)
    teacher = ctx.teacher()

    with AppendLog(ctx.dir / "answers.jsonl") as work:
        check_settings(ctx.dir, settings(ctx.cfg), stage="responses", has_work=bool(work.records),
                       allow_changed=cfg.allow_changed_settings)
        resumed = len(work.records)
        ctx.teacher().count_earlier_spend(work.records)
        answered = {a["id"] for a in work.records}
        requests = [
            Request(key=r["id"], messages=build_messages(r["instruction"], r.get("input"), cfg.prompt),
                    temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens,
                    presence_penalty=cfg.presence_penalty, nonce=f"responses:{r['id']}")
            for r in records if r["id"] not in answered
        ]

        def record(request: Request, completion: Completion | None, error: str) -> None:
            work.append({
                "id": request.key,
                "output": completion.text if completion else "",
                "finish_reason": completion.finish_reason if completion else "error",
                "error": error,
                **work_log_usage(completion),
            })

        log.info("responses: %d instructions, %d already answered", len(records), len(answered))
        teacher.run(requests, record, desc="responses", batch_log=ctx.dir / BATCH_LOG)
        answers = {a["id"]: a for a in work.records}

    examples, failed, truncated = [], [], []
    for r in records:
        a = answers.get(r["id"])
        if not (a and a["output"].strip()):
            failed.append({**r, "reason": (a or {}).get("error") or "empty answer"})
        elif a["finish_reason"] == "length" and not cfg.keep_truncated:
            # Training appends EOS: a cut answer would teach the student to stop mid-sentence.
            truncated.append({**_to_alpaca(r, a["output"]),
                              "reason": f"cut at responses.max_tokens={cfg.max_tokens} (finish_reason=length)"})
        else:
            examples.append(_to_alpaca(r, a["output"]))
    paid = [a for a in answers.values() if not a["cached"]]
    stats = {
        "instructions": len(records),
        "answered": len(examples),
        "failed": len(failed),
        "records_in": len(records), "records_out": len(examples),
        "resumed_answers": resumed,
        "cached_answers": sum(a["cached"] for a in answers.values()),
        "truncated_at_max_tokens": sum(a["finish_reason"] == "length" for a in answers.values()),
        # Of those, left out of train.json (in truncated.jsonl); 0 with responses.keep_truncated=true.
        "truncated_excluded": len(truncated),
        "prompt_tokens": sum(a["prompt_tokens"] for a in answers.values()),
        "completion_tokens": sum(a["completion_tokens"] for a in answers.values()),
        "cost_usd": round(paid_cost(teacher.ledger, paid)[0], 6),
        "abandoned_attempts": sum(a.get("abandoned_attempts", 0) for a in answers.values()),
        "cost_usd_possibly_billed": round(paid_cost(teacher.ledger, paid)[1], 6),
    }
    write_jsonl_atomic(ctx.dir / "failed.jsonl", failed)
    write_jsonl_atomic(ctx.dir / "truncated.jsonl", truncated)
    write_json_atomic(TRAIN_SET.path(ctx.run_dir), examples)
    ctx.write_stats(stats)
    ctx.tracker.log({f"responses/{k}": v for k, v in stats.items()})
    ctx.log_artifact(TRAIN_SET)
    return {k: stats[k] for k in ("instructions", "answered", "failed", "truncated_excluded", "completion_tokens", "cost_usd")}
