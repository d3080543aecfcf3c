"""Stage 6, ``judge``: pairwise win rates against reference models, the paper's protocol.

For each test set and each reference model (their released answers; alpacare/data/eval_sets.py),
the judge (``judge=<endpoint preset>``) sees the instruction and the two answers twice, the
reference first once and second once, and answers "Output (a)", "Output (b)" or "Tie" at
temperature 0, with our prompt or the release's exact request (``judge.prompt=paper``), parsed
leniently or by the release's rule (``judge.strict_parsing=true``) (alpacare/prompts/judge.py).
Scores and statistics: alpacare/evaluation/winrates.py.

HealthBench sets (``healthbench``, ``healthbench_hard``, ``healthbench_consensus``) among the test sets
are graded instead as simple-evals grades them: every rubric item of every answered conversation is
one request to the judge endpoint with simple-evals' grader request (alpacare/prompts/healthbench.py),
a reply that does not parse is asked again up to ``healthbench.retries`` times, and each set is scored
as simple-evals scores it (alpacare/evaluation/healthbench.py). Their work log is
``judge/healthbench_requests.jsonl``; outputs ``healthbench_grades.jsonl`` (every verdict),
``healthbench_scores.jsonl`` (every conversation), ``healthbench.png`` and the ``healthbench`` rows
of ``stats.json``.

Inputs: this run's ``predict/<test_set>.jsonl`` for each of ``judge.test_sets``, or
``judge.predictions=FILE`` with ``judge.test_set=NAME`` (e.g. the released AlpaCare-7b
generations: records with ``output`` or ``response``). Items align by position and instruction
text; a mismatch fails before anything is judged.

Paid work is never repeated: each verdict is appended to ``judge/requests.jsonl`` as it lands,
keyed by the exact request (judge endpoint, model, prompt, sampling), and the endpoint's response
cache serves any request seen before in any run. Outputs: ``verdicts.jsonl`` (every verdict, both
orders, raw judge text), ``stats.json`` (``win_rates`` rows), ``win_rates.png`` (grouped bars as in
the paper's Figure 2), and in W&B the table, the chart and a table of sample items.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from alpacare.data.eval_sets import EVAL_SETS, REFERENCE_MODELS, check_eval_set, load_items, load_reference
from alpacare.data.fetch import resolve_data_file
from alpacare.data.jsonl import AppendLog, read_records, write_jsonl_atomic
from alpacare.errors import ConfigError, DataError
from alpacare.llm.client import (BATCH_LOG, Completion, Ledger, Request, endpoint_identity, json_response_format,
                                 paid_cost, work_log_usage)
from alpacare.evaluation import healthbench as hb_eval
from alpacare.report.plots import healthbench_chart, win_rate_chart
from alpacare.data.healthbench import CONVERSATION_SETS, is_healthbench
from alpacare.prompts import healthbench as healthbench_prompt
from alpacare.prompts import judge as judge_prompt
from alpacare.stages import HEALTHBENCH_GRADES, HEALTHBENCH_SCORES, PREDICTIONS, VERDICTS, WIN_RATES, StageContext
from alpacare.evaluation.winrates import LC_MODEL, ItemVerdicts, dropped, win_rate_row

log = logging.getLogger(__name__)

ORDERS = ("model_first", "reference_first")
# Which system each label names, per order.
_LABELS = {
    "model_first": {"Output (a)": "model", "Output (b)": "reference", "Tie": "tie"},
    "reference_first": {"Output (a)": "reference", "Output (b)": "model", "Tie": "tie"},
}


def check(cfg: Any) -> None:
    """Before any stage runs: names known, predictions and reference files present."""
    j = cfg.judge
    unknown = [r for r in j.references if r not in REFERENCE_MODELS]
    if unknown:
        raise ConfigError(f"judge.references: unknown reference(s) {unknown}; choose from {list(REFERENCE_MODELS)}")
    if not j.references:
        raise ConfigError("judge.references: is empty")
    sets = _test_sets(cfg)
    for name in sets:
        if is_healthbench(name):
            check_eval_set(name, "judge.test_set", cfg.cache_dir)
            continue
        if name not in EVAL_SETS:
            raise ConfigError(f"judge: test set {name!r} has no released reference answers; "
                              f"judge one of {sorted(EVAL_SETS) + list(CONVERSATION_SETS)} "
                              "(judge.test_set=NAME with judge.predictions=FILE)")
        check_eval_set(name, "judge.test_set", cfg.cache_dir)
        refs = _references(cfg, name)
        if not refs:
            raise ConfigError(f"judge.references: {name} has none of {list(j.references)}; it has {sorted(EVAL_SETS[name].references)}")
        for ref in refs:
            relpath = EVAL_SETS[name].references[ref].relpath
            if resolve_data_file(relpath, cache_dir=cfg.cache_dir) is None:
                raise DataError(f"{relpath}: reference answers of {ref} not found; run `alpacare-fetch`")
    if j.prompt == "paper" and any(not is_healthbench(t) for t in sets):  # the release's prompt files: present and unaltered
        judge_prompt.load_release_judge(cfg.cache_dir)
    if any(is_healthbench(t) for t in sets):  # simple-evals' grader protocol: present, unaltered, readable
        healthbench_prompt.load_protocol(cfg.cache_dir)


def _test_sets(cfg: Any) -> list[str]:
    if cfg.judge.predictions:
        if not cfg.judge.test_set:
            raise ConfigError("judge.predictions: set judge.test_set=NAME too (medinstruct, icliniq, alpaca_eval or a "
                              "HealthBench set)")
        return [str(cfg.judge.test_set)]
    from alpacare.data.eval_sets import eval_set_name

    return [eval_set_name(str(t)) for t in cfg.judge.test_sets]


def _references(cfg: Any, test_set: str) -> list[str]:
    return [r for r in cfg.judge.references if r in EVAL_SETS[test_set].references]


# ---------------------------------------------------------------------------------------------
# Aligning predictions with the test set
# ---------------------------------------------------------------------------------------------


def _normalized(text: Any) -> str:
    return " ".join(str(text or "").split())


def load_predictions(path: Path, test_set: str, cache_dir: str, limit: Optional[int]) -> list[dict[str, Any]]:
    """The predictions aligned with the test set's items: ``{**item, output}`` per item.

    Our predict files carry ``index`` and may cover the first N items (``predict.limit``); other
    files (released generations) must cover the whole test set. Instructions must match."""
    records = read_records(path)
    if not records:
        raise DataError(f"{path}: no predictions (empty file)")
    items = load_items(test_set, cache_dir, raw=True)
    if all("index" in r for r in records):
        if [r["index"] for r in records] != list(range(len(records))) or len(records) > len(items):
            raise DataError(f"{path}: indices are not 0..{len(records) - 1} of {test_set}'s {len(items)} items")
    elif len(records) != len(items):
        raise DataError(f"{path}: {len(records)} predictions, but {test_set} has {len(items)} items")
    aligned = []
    for k, (item, r) in enumerate(zip(items, records)):
        output = r.get("output", r.get("response"))
        if not isinstance(output, str):
            raise DataError(f"{path}: record {k + 1} has no output (or response) text")
        if "instruction" not in r:
            raise DataError(f"{path}: record {k + 1} has no instruction")
        if _normalized(r["instruction"]) != _normalized(item["instruction"]):
            raise DataError(f"{path}: record {k + 1}: instruction differs from {test_set} item {k} "
                            f"({_normalized(r['instruction'])[:60]!r} vs {_normalized(item['instruction'])[:60]!r})")
        if r.get("input") and _normalized(r["input"]) != _normalized(item["input"]):
            raise DataError(f"{path}: record {k + 1}: input differs from {test_set} item {k}")
        aligned.append({**item, "output": output.strip(), "output_raw": output, "generator": r.get("generator")})
    return aligned[:limit] if limit is not None else aligned


# ---------------------------------------------------------------------------------------------
# Judging
# ---------------------------------------------------------------------------------------------


@dataclass
class Pair:
    test_set: str
    reference: str
    item: dict[str, Any]
    model_output: str
    reference_output: str
    # As written, for the length control: AlpacaEval measures the raw character length.
    model_raw: str
    reference_raw: str


def _request(pair: Pair, order: str, cfg: Any, response_format: Optional[dict],
             release: Optional[judge_prompt.ReleaseJudge] = None) -> Request:
    """The judge request for one order: our prompt, or with ``release`` the release's exact one
    (its texts unstripped, as gpt_eval.py sends them)."""
    a, b = (pair.model_output, pair.reference_output) if order == "model_first" else (pair.reference_output, pair.model_output)
    if release is not None:
        messages = release.messages(pair.item["instruction_raw"], pair.item["input_raw"], a, b)
        nonce = "judge:paper"
    else:
        messages = judge_prompt.build_messages(pair.item["instruction"], pair.item["input"], a, b)
        nonce = f"judge:v{judge_prompt.PROMPT_VERSION}"
    return Request(
        key=f"{pair.test_set}:{pair.reference}:{pair.item['index']}:{order}",
        messages=messages, temperature=cfg.temperature, top_p=1.0, max_tokens=max_tokens(cfg),
        response_format=response_format, nonce=nonce,
    )


def max_tokens(cfg: Any) -> int:
    """``judge.max_tokens``, or the prompt's own when unset."""
    return cfg.max_tokens if cfg.max_tokens is not None else judge_prompt.MAX_TOKENS[cfg.prompt]


def _response_format(cfg: Any) -> Optional[dict]:
    if not cfg.structured_output or cfg.prompt == "paper":  # the release asks for no schema
        return None
    return json_response_format(judge_prompt.VERDICT_SCHEMA, "verdict", cfg.schema_style)


def run(ctx: StageContext) -> dict[str, Any]:
    """Win rates for the paper's test sets, HealthBench scores for HealthBench's (either may be absent)."""
    sets = _test_sets(ctx.cfg)
    pairwise = [t for t in sets if not is_healthbench(t)]
    hb_sets = [t for t in sets if is_healthbench(t)]
    stats: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    spends = []
    if pairwise or not hb_sets:
        win_stats, win_summary, rows, chart, samples = _win_rates(ctx, pairwise)
        stats.update(win_stats)
        summary.update(win_summary)
        spends.append(win_stats)
    if hb_sets:
        hb_stats, hb_summary = _healthbench(ctx, hb_sets)
        for key, n in (("records_in", "conversations"), ("records_out", "criteria")):  # counts of both kinds
            stats[key] = stats.get(key, 0) + sum(r[n] for r in hb_stats["healthbench"])
        stats.update(hb_stats)
        summary.update(hb_summary)
        spends.append(hb_stats["healthbench_spend"])
    for key in ("prompt_tokens", "completion_tokens"):
        stats[key] = sum(s[key] for s in spends)
    for key in ("cost_usd", "cost_usd_possibly_billed"):
        stats[key] = round(sum(s[key] for s in spends), 6)
    ctx.write_stats(stats)
    if pairwise or not hb_sets:
        _log_to_wandb(ctx, rows, chart, samples)
        ctx.log_artifact(VERDICTS, WIN_RATES.path(ctx.run_dir))
    if hb_sets:
        _log_healthbench_to_wandb(ctx, stats)
    if ctx.cfg.judge.launch_local:
        summary["note"] = "weak local judge"
    return summary


def _win_rates(ctx: StageContext, test_sets: list[str]) -> tuple[dict[str, Any], dict[str, Any], list, Path, list]:
    """The paper's protocol on ``test_sets``: (stats, console summary, rows, chart, W&B samples)."""
    cfg = ctx.cfg.judge
    identity = endpoint_identity(cfg, cfg.base_url)
    response_format = _response_format(cfg)

    pairs: list[Pair] = []
    skipped: list[str] = []
    for test_set in test_sets:
        path = ctx.input_path(PREDICTIONS, test_set=test_set)
        predictions = load_predictions(path, test_set, ctx.cfg.cache_dir, cfg.limit)
        ctx.use_artifact(PREDICTIONS, path, test_set=test_set)
        for ref in cfg.references:
            if ref not in EVAL_SETS[test_set].references:
                skipped.append(f"{test_set}/{ref}")
                log.warning("judge: %s has no %s reference (it has %s); skipped", test_set, ref,
                            sorted(EVAL_SETS[test_set].references))
                continue
            raws = load_reference(test_set, ref, predictions, ctx.cfg.cache_dir, raw=True)
            # The release's judge sees both answers exactly as written; ours, stripped.
            shown = raws if cfg.prompt == "paper" else [a.strip() for a in raws]
            pairs += [Pair(test_set, ref, p, p["output_raw" if cfg.prompt == "paper" else "output"], a,
                           p["output_raw"], r) for p, a, r in zip(predictions, shown, raws)]

    judged = [p for p in pairs if p.reference_output.strip()]
    # Requests that share a long prefix go back to back, so a server that keeps the last prompt's KV
    # cache (llama.cpp) reads it once: per item, the model-first prompts of every reference share
    # everything up to the model's answer.
    ordered = sorted(((p, order) for p in judged for order in ORDERS),
                     key=lambda po: (po[0].test_set, po[0].item["index"], ORDERS.index(po[1])))
    release = judge_prompt.load_release_judge(ctx.cfg.cache_dir) if cfg.prompt == "paper" else None
    requests = {(id(p), order): _request(p, order, cfg, response_format, release) for p, order in ordered}
    hashes = {k: r.cache_key(cfg.name, cfg.model, identity) for k, r in requests.items()}

    with AppendLog(ctx.dir / "requests.jsonl") as work:
        done = {r["hash"] for r in work.records}
        todo = [requests[k] for k in requests if hashes[k] not in done]
        by_key = {r.key: hashes[k] for k, r in requests.items()}
        log.info("judge: %d verdicts to ask (%d pairs x 2 orders), %d already in the work log",
                 len(todo), len(judged), len(requests) - len(todo))
        if todo:
            client = ctx.endpoint("judge")
            client.count_earlier_spend(work.records)

            def record(request: Request, completion: Optional[Completion], error: str) -> None:
                work.append({"hash": by_key[request.key], "key": request.key,
                             "raw": completion.text if completion else "", "error": error,
                             "finish_reason": completion.finish_reason if completion else "error",
                             **work_log_usage(completion)})

            client.run(todo, record, desc="judge", batch_log=ctx.dir / BATCH_LOG)
        replies = {r["hash"]: r for r in work.records}
    current = [replies[h] for h in hashes.values() if h in replies]
    paid = [r for r in current if not r["cached"]]
    received_usd, possibly_billed_usd = paid_cost(Ledger(cfg.price_input_per_1m, cfg.price_output_per_1m), paid)

    verdicts, rows, samples = _score(ctx, judged, requests, hashes, replies)
    empty_refs = len(pairs) - len(judged)
    write_jsonl_atomic(VERDICTS.path(ctx.run_dir), verdicts)
    n_items = max((r["n"] for r in rows), default=0)
    chart = win_rate_chart(ctx.dir / "win_rates.png", rows, title=f"{_generator(judged)} vs reference answers (n <= {n_items} per bar)\n"
                           f"judge: {cfg.model}{' (weak local judge)' if cfg.launch_local else ''}, both orders, SE bars")
    stats = {
        "judge": {"preset": cfg.name, "model": cfg.model, "endpoint": identity, "local": bool(cfg.launch_local),
                  "prompt": cfg.prompt, "prompt_version": judge_prompt.PROMPT_VERSION if cfg.prompt == "ours" else None,
                  "prompt_source": judge_prompt.ReleaseJudge.source() if cfg.prompt == "paper" else "alpacare/prompts/judge.py",
                  "temperature": cfg.temperature, "max_tokens": max_tokens(cfg),
                  "strict_parsing": bool(cfg.strict_parsing)},
        "weak_judge": bool(cfg.launch_local),
        "win_rates": rows,
        "lc_model": LC_MODEL,
        "lc_se": f"bootstrap over items, {cfg.bootstrap} resamples" if cfg.bootstrap > 1 else None,
        "pairs": len(judged),
        "verdicts_requested": len(requests),
        "empty_references_excluded": empty_refs,
        "prompt_tokens": sum(r["prompt_tokens"] for r in current),
        "completion_tokens": sum(r["completion_tokens"] for r in current),
        "cached_verdicts": sum(r["cached"] for r in current),
        "cost_usd": round(received_usd, 6),
        "cost_usd_possibly_billed": round(possibly_billed_usd, 6),
        "skipped": skipped,
        "records_in": len(judged), "records_out": len(verdicts),
    }
    headline = {f"{r['test_set']}/{r['reference']}": r["win_rate"] for r in rows}
    return stats, {"pairs": len(judged), "unparsed": sum(r["n_unparsed"] for r in rows), **headline}, rows, chart, samples


# ---------------------------------------------------------------------------------------------
# HealthBench: every rubric item graded as simple-evals grades it
# ---------------------------------------------------------------------------------------------

HEALTHBENCH_WORK_LOG = "healthbench_requests.jsonl"
HEALTHBENCH_BATCH_LOG = "healthbench_batches.jsonl"


def _healthbench(ctx: StageContext, test_sets: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Grade every rubric item of every answered conversation; score each set as simple-evals does."""
    cfg, hb = ctx.cfg.judge, ctx.cfg.healthbench
    protocol = healthbench_prompt.load_protocol(ctx.cfg.cache_dir)
    settings = hb_eval.grader_settings(cfg, hb, protocol, kind="healthbench")
    pairs = {}
    for test_set in test_sets:
        path = ctx.input_path(PREDICTIONS, test_set=test_set)
        pairs[test_set] = hb_eval.align_predictions(path, test_set, ctx.cfg.cache_dir, cfg.limit)
        ctx.use_artifact(PREDICTIONS, path, test_set=test_set)
    subjects = [s for t in test_sets for s in hb_eval.rubric_subjects(t, pairs[t], protocol)]
    graded = hb_eval.grade(subjects, protocol, settings, cfg, endpoint_identity(cfg, cfg.base_url),
                           ctx.dir / HEALTHBENCH_WORK_LOG, ctx.dir / HEALTHBENCH_BATCH_LOG,
                           lambda: ctx.endpoint("judge"), desc="healthbench grader")
    grades, scores, rows = [], [], []
    for test_set in test_sets:
        g, s, row = hb_eval.score_set(test_set, pairs[test_set], graded.graded, hb.bootstrap, hb.bootstrap_seed)
        grades += g
        scores += s
        rows.append(row)
    write_jsonl_atomic(HEALTHBENCH_GRADES.path(ctx.run_dir), grades)
    write_jsonl_atomic(HEALTHBENCH_SCORES.path(ctx.run_dir), scores)
    grader = hb_eval.grader_description(cfg, settings, protocol)
    chart = healthbench_chart(ctx.dir / "healthbench.png", rows,
                              f"HealthBench, grader {cfg.model}{' (weak local grader)' if cfg.launch_local else ''}: "
                              "mean clipped to [0, 1], bootstrap std bars")
    stats = {"healthbench": rows, "healthbench_grader": grader, "weak_grader": bool(cfg.launch_local),
             "healthbench_spend": hb_eval.spend(cfg, graded.work_records), "healthbench_chart": str(chart)}
    summary = {f"{r['test_set']}/score": None if r["score"] is None else round(r["score"], 4) for r in rows}
    summary["criteria_unparsed"] = sum(r["criteria_unparsed"] for r in rows)
    return stats, summary


def _log_healthbench_to_wandb(ctx: StageContext, stats: dict[str, Any]) -> None:
    rows = stats["healthbench"]
    columns = ["test_set", "kind", "name", "score", "bootstrap_std", "n"]
    table = [[r["test_set"], "overall", "overall", r["score"], r["bootstrap_std"], r["n"]] for r in rows]
    table += [[r["test_set"], kind, t["tag"], t["score"], t["bootstrap_std"], t["n"]]
              for r in rows for kind in ("themes", "axes", "clusters") for t in r[kind]]
    ctx.tracker.table("judge/healthbench", columns, table)
    ctx.tracker.image("judge/healthbench_chart", Path(stats["healthbench_chart"]))
    ctx.tracker.summary({f"judge/{r['test_set']}/score": r["score"] for r in rows}
                        | {f"judge/{r['test_set']}/bootstrap_std": r["bootstrap_std"] for r in rows})
    ctx.log_artifact(HEALTHBENCH_GRADES, HEALTHBENCH_SCORES.path(ctx.run_dir))


def _generator(pairs: list[Pair]) -> str:
    names = {p.item.get("generator") for p in pairs if p.item.get("generator")}
    return names.pop() if len(names) == 1 else "model"


def _shown_names(pair: Pair, order: str) -> tuple[str, str]:
    """The names of the systems shown as Output (a) and (b), which the release's rule compares a
    reply against: the generator's (or "model" when unknown or indistinct) and the reference's."""
    model = pair.item.get("generator") or "model"
    if judge_prompt.alphanumeric(model) in ("", judge_prompt.alphanumeric(pair.reference)):
        model = "model"
    return (model, pair.reference) if order == "model_first" else (pair.reference, model)


def _score(ctx: StageContext, pairs: list[Pair], requests, hashes, replies) -> tuple[list, list, list]:
    """Verdicts parsed under both rules; rows scored under the configured one, with how many
    items each rule drops."""
    cfg = ctx.cfg.judge
    strict = bool(cfg.strict_parsing)
    verdicts, groups, samples = [], {}, []
    for p in pairs:
        per_rule: dict[bool, dict[str, Optional[str]]] = {True: {}, False: {}}
        for order in ORDERS:
            reply = replies.get(hashes[(id(p), order)], {})
            for rule in (True, False):
                label = judge_prompt.parse_verdict(reply.get("raw", ""), strict=rule, names=_shown_names(p, order))
                per_rule[rule][order] = _LABELS[order][label] if label else None
            verdicts.append({"test_set": p.test_set, "reference": p.reference, "index": p.item["index"],
                             "instruction": p.item["instruction"], "order": order, "verdict": per_rule[strict][order],
                             "raw": reply.get("raw", ""), "error": reply.get("error", "")})
        items = {rule: ItemVerdicts(v["model_first"], v["reference_first"], len(p.model_raw), len(p.reference_raw))
                 for rule, v in per_rule.items()}
        groups.setdefault((p.test_set, p.reference), []).append((p, items))
        if len(samples) < cfg.samples_to_log:
            samples.append([p.test_set, p.reference, p.item["instruction"], p.model_output, p.reference_output,
                            str(per_rule[strict]["model_first"]), str(per_rule[strict]["reference_first"])])
    rows = []
    for (test_set, reference), members in groups.items():
        row = win_rate_row([items[strict] for _, items in members], strict=strict, bootstrap=cfg.bootstrap, seed=cfg.seed)
        rows.append({"test_set": test_set, "reference": reference, **row,
                     "n_dropped_strict": dropped([items[True] for _, items in members], strict=True),
                     "n_dropped_lenient": dropped([items[False] for _, items in members], strict=False),
                     "n_empty_outputs": sum(not p.model_output.strip() for p, _ in members)})
    return verdicts, rows, samples


def _log_to_wandb(ctx: StageContext, rows: list[dict], chart: Path, samples: list[list]) -> None:
    columns = ["test_set", "reference", "win_rate", "se", "n", "n_unparsed", "tie_rate", "consistency",
               "lc_win_rate", "lc_se", "model_len", "reference_len"]
    ctx.tracker.table("judge/win_rates", columns, [[r[c] for c in columns] for r in rows])
    ctx.tracker.image("judge/win_rates_chart", chart)
    ctx.tracker.table("judge/samples", ["test_set", "reference", "instruction", "model", "reference_answer",
                                        "verdict_model_first", "verdict_reference_first"], samples)
    ctx.tracker.summary({f"judge/{r['test_set']}/{r['reference']}/win_rate": r["win_rate"] for r in rows}
                        | {f"judge/{r['test_set']}/{r['reference']}/lc_win_rate": r["lc_win_rate"] for r in rows})
