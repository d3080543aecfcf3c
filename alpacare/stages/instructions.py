"""Stage 1, ``instructions``: the teacher writes new medical tasks from sampled seed tasks.

Each request shows the teacher ``seeds_per_request`` seed tasks drawn at random (paper: 3), plus
optionally some tasks it wrote earlier, and asks for ``tasks_per_request`` new ones (paper: 12).
Requests go out in waves until ``count`` tasks parse or the request budget runs out.

Resume: every finished request is appended to ``requests.jsonl`` (raw text, parsed tasks,
rejects) before anything else happens, and request i always samples the same examples, so a run
killed at any point and restarted on the same run dir sends only the requests it lacks. The
settings that decide the tasks (teacher, sampling, prompt, seeds) are recorded in
``settings.json``; a resume under other settings stops with one line naming the change
(alpacare/fingerprint.py).
Outputs, written atomically once the stage is done: ``instructions.jsonl`` (the tasks, with ids),
``rejects.jsonl`` (raw text + reason for everything that did not parse), ``stats.json`` and
``distribution.png`` (task types, views and difficulties of what was generated).
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from typing import Any

from alpacare.data.jsonl import AppendLog, write_jsonl_atomic
from alpacare.data.seeds import TASK_TYPES, load_seed_tasks, resolve_seed_file, seed_source
from alpacare.fingerprint import check_settings, file_digest
from alpacare.llm.client import BATCH_LOG, Completion, Request, endpoint_identity, paid_cost, work_log_usage
from alpacare.report.plots import bar_charts
from alpacare.prompts.instructions import PROMPT_VERSION, build_messages, parse_tasks, task_batch_schema
from alpacare.stages import INSTRUCTIONS, StageContext

log = logging.getLogger(__name__)


def _sample_examples(i: int, seeds: list[dict], generated: list[dict], cfg: Any) -> list[dict]:
    rng = random.Random(f"{cfg.seed}:{i}")  # request i always shows the same examples
    examples = rng.sample(seeds, min(cfg.seeds_per_request, len(seeds)))
    if cfg.generated_per_request and generated:
        examples += rng.sample(generated, min(cfg.generated_per_request, len(generated)))
    rng.shuffle(examples)
    return examples


def _request(i: int, examples: list[dict], ctx: StageContext) -> Request:
    cfg, teacher = ctx.cfg.instructions, ctx.teacher()
    return Request(
        key=str(i),
        messages=build_messages(examples, cfg.tasks_per_request, teacher.structured_output, cfg.closed_types),
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        presence_penalty=cfg.presence_penalty,
        max_tokens=cfg.max_tokens,
        response_format=teacher.json_response_format(
            task_batch_schema(cfg.tasks_per_request, bounded=teacher.schema_style == "llama_cpp",
                              closed_types=cfg.closed_types), "task_batch"),
        nonce=f"instructions:{cfg.seed}:{i}",
    )


def _generate(ctx: StageContext, seeds: list[dict], work: AppendLog) -> None:
    cfg = ctx.cfg.instructions
    teacher = ctx.teacher()
    max_requests = math.ceil(cfg.count / cfg.tasks_per_request * cfg.max_requests_factor)

    def parsed() -> int:
        return sum(len(r["tasks"]) for r in work.records)

    first_number: dict[str, int] = {}  # free text: the reply continues the list after the examples

    def record(request: Request, completion: Completion | None, error: str) -> None:
        text = completion.text if completion else ""
        tasks, rejects = (parse_tasks(text, teacher.structured_output, cfg.closed_types, first_number.get(request.key))
                          if completion else ([], [{"raw": "", "reason": error}]))
        if completion and completion.finish_reason == "length":
            for r in rejects:
                r["reason"] += " (finish_reason=length)"
        work.append({
            "request": int(request.key), "raw": text, "tasks": tasks, "rejects": rejects,
            **work_log_usage(completion),
        })

    while parsed() < cfg.count:
        done = {r["request"] for r in work.records}
        missing = math.ceil((cfg.count - parsed()) / cfg.tasks_per_request)
        todo = [i for i in range(max_requests) if i not in done][:max(missing, 1)]
        if not todo:
            log.warning("instructions: request budget (%d) spent with %d of %d tasks parsed",
                        max_requests, parsed(), cfg.count)
            return
        generated = [t for r in work.records for t in r["tasks"]]
        examples = {i: _sample_examples(i, seeds, generated, cfg) for i in todo}
        first_number.update({str(i): len(ex) + 1 for i, ex in examples.items()})
        requests = [_request(i, examples[i], ctx) for i in todo]
        teacher.run(requests, record, desc=f"instructions ({parsed()}/{cfg.count} tasks)", batch_log=ctx.dir / BATCH_LOG)


def _collect(work: AppendLog, count: int) -> tuple[list[dict], list[dict]]:
    tasks, rejects = [], []
    for r in sorted(work.records, key=lambda r: r["request"]):
        for k, task in enumerate(r["tasks"]):
            tasks.append({"id": f"gen-{r['request']:06d}-{k:02d}", **task})
        rejects += [{"request": r["request"], **x} for x in r["rejects"]]
    return tasks[:count], rejects


def settings(cfg: Any) -> dict[str, Any]:
    """Everything that decides what the teacher writes (not ``count``: raising it extends a run)."""
    t, ic = cfg.teacher, cfg.instructions
    seed_file, _ = resolve_seed_file(ic.seeds, cfg.cache_dir)
    return {
        "teacher.name": t.name, "teacher.model": t.model, "teacher.endpoint": endpoint_identity(t, t.base_url),
        "teacher.structured_output": t.structured_output, "teacher.schema_style": t.schema_style,
        "instructions.seeds": file_digest(seed_file),
        **{f"instructions.{k}": ic[k] for k in ("seeds_per_request", "generated_per_request", "tasks_per_request",
                                                 "temperature", "top_p", "presence_penalty", "max_tokens",
                                                 "closed_types", "seed")},
        "prompt_version": PROMPT_VERSION,
    }


def check(cfg: Any) -> None:
    """Before any stage runs: the seed file reads and every seed task is valid (one line if not)."""
    load_seed_tasks(cfg.instructions.seeds, cfg.cache_dir, closed_types=cfg.instructions.closed_types)


def run(ctx: StageContext) -> dict[str, Any]:
    cfg = ctx.cfg.instructions
    seeds = load_seed_tasks(cfg.seeds, ctx.cfg.cache_dir, closed_types=cfg.closed_types)
    source = seed_source(cfg.seeds, ctx.cfg.cache_dir)
    log.info("instructions: %d seed tasks from %s", len(seeds), source)
    with AppendLog(ctx.dir / "requests.jsonl") as work:
        check_settings(ctx.dir, settings(ctx.cfg), stage="instructions", has_work=bool(work.records),
                       allow_changed=cfg.allow_changed_settings)
        resumed = len(work.records)
        ctx.teacher().count_earlier_spend(work.records)
        _generate(ctx, seeds, work)
        tasks, rejects = _collect(work, cfg.count)
        records = work.records
    paid = [r for r in records if not r["cached"]]
    cost, possibly_billed = paid_cost(ctx.teacher().ledger, paid)
    stats = {
        "seed_tasks": len(seeds),
        "seed_source": source,
        "requests": len(records),
        "requests_resumed": resumed,
        "requests_cached": sum(r["cached"] for r in records),
        "tasks_parsed": sum(len(r["tasks"]) for r in records),
        "tasks_kept": len(tasks),
        "records_out": len(tasks),
        "rejects": len(rejects),
        "reject_reasons": dict(Counter(x["reason"].split(" (")[0][:80] for x in rejects).most_common(10)),
        "prompt_tokens": sum(r["prompt_tokens"] for r in records),
        "completion_tokens": sum(r["completion_tokens"] for r in records),
        "cost_usd": round(cost, 6),
        # Attempts sent and abandoned (timed out, cut off): a real API may have billed them; the
        # cautious total counts them at their worst case (prompt + max_tokens).
        "abandoned_attempts": sum(r.get("abandoned_attempts", 0) for r in records),
        "cost_usd_possibly_billed": round(possibly_billed, 6),
        "types": dict(Counter(t["type"] for t in tasks)),
        # Tasks whose type is none of the paper's ten, kept as the teacher wrote it (closed_types=false).
        "open_type_tasks": sum(t["type"] not in TASK_TYPES for t in tasks),
        "views": dict(Counter(t["view"] for t in tasks)),
        "difficulties": dict(Counter(str(t["difficulty"]) for t in tasks)),
    }
    write_jsonl_atomic(ctx.dir / "rejects.jsonl", rejects)
    write_jsonl_atomic(INSTRUCTIONS.path(ctx.run_dir), tasks)
    plot = bar_charts(ctx.dir / "distribution.png", "Generated tasks",
                      {"type (top 20)": dict(Counter(stats["types"]).most_common(20)), "view": stats["views"], "difficulty": stats["difficulties"]},
                      ordered=("difficulty",))
    ctx.write_stats(stats)
    ctx.tracker.log({f"instructions/{k}": v for k, v in stats.items() if isinstance(v, (int, float))})
    ctx.tracker.image("instructions/distribution", plot)
    return {k: stats[k] for k in ("requests", "tasks_parsed", "tasks_kept", "rejects", "completion_tokens", "cost_usd")}
