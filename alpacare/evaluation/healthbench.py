"""HealthBench grading and scores, as simple-evals computes them (``openai/simple-evals``,
healthbench_eval.py and healthbench_meta_eval.py at the pinned commit; alpacare/data/healthbench.py).

Grading (``grade``): one grader request per subject (a rubric item of a conversation, or a
meta-eval row) through the endpoint machinery (alpacare/llm/client.py: response cache, rate
limits, spend cap, Batch API), each reply appended to the stage's work log as it lands (a killed
run resumes where it stopped). A reply that does not parse (alpacare/prompts/healthbench.py) is
asked again, as simple-evals does, but at most ``retries`` times (simple-evals: until it parses),
each retry a request of its own (its own cache key: the same request would come back from the
cache); a subject still unparsed after that is counted and left out of the scores.

Scores (``example_metrics``, ``aggregate``), as simple-evals':
- per conversation: the points of the criteria met (negative points count when met) over the sum
  of the positive points (``overall_score``, which may be negative or pass 1); the same score under
  each example tag (themes: the conversation's score), and per rubric tag (axes, clusters) over the
  criteria carrying that tag, when they hold positive points;
- over conversations, for every name: the mean clipped to [0, 1], the std of 1,000 bootstrap means
  (each clipped) and n (``name``, ``name:bootstrap_std``, ``name:n_samples``); the headline score
  is that of ``overall_score``. The bootstrap draws from a numpy ``RandomState(seed)`` in the order
  simple-evals' unseeded ``np.random.choice`` calls draw, so the same seed gives the same std.
  A criterion left unparsed is left out of its conversation's score (numerator and denominator);
  a conversation without a parsed positive criterion has no score and is counted apart.

Meta-eval agreement (``rater_agreement``), as healthbench_meta_eval.py's
``compute_metrics_for_rater_by_class``: every (rater label, other physician's label) pair counts
toward precision (keyed by the rater's label: pos/neg) and recall (keyed by the other label), per
category and overall; F1 of each precision/recall pair and the balanced (pos/neg mean) metrics,
with the same key names. The grader is compared with every physician; each physician with the
others on the same row, averaged over physicians (``physician_mean``).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from alpacare.data.healthbench import load_conversations
from alpacare.data.jsonl import AppendLog, read_records
from alpacare.errors import DataError
from alpacare.llm.client import (Completion, Ledger, LLMClient, Request, endpoint_identity, json_response_format,
                                 paid_cost, work_log_usage)
from alpacare.prompts.healthbench import REQUEST_VERSION, VERDICT_SCHEMA, GraderProtocol, rubric_item

log = logging.getLogger(__name__)

OVERALL = "overall_score"


# ---------------------------------------------------------------------------------------------
# Grading
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GraderSettings:
    """What shapes every grader request besides its prompt (the endpoint config ``cfg`` decides
    the model, the request fields and the cache identity)."""

    temperature: float
    max_tokens: int
    retries: int
    response_format: Optional[dict[str, Any]]
    # Names the kind of subject in the cache nonce ("healthbench", "healthbench_meta").
    kind: str = "healthbench"


@dataclass
class Graded:
    """A subject's outcome: its verdict (None when no reply parsed), requests spent, last reply."""

    verdict: Optional[dict[str, Any]]
    attempts: int
    raw: str
    error: str = ""


@dataclass
class GradingRun:
    graded: dict[str, Graded]
    work_records: list[dict[str, Any]] = field(default_factory=list)  # this run's work-log lines (current requests)


def grader_settings(cfg: Any, hb: Any, protocol: GraderProtocol, kind: str) -> GraderSettings:
    """simple-evals' sampling unless ``healthbench.*`` overrides it; the verdict schema for the
    embedded grader (or as ``healthbench.schema`` says)."""
    schema = hb.schema if hb.schema is not None else bool(cfg.launch_local)
    response_format = None
    if schema:
        verdict = VERDICT_SCHEMA
        if cfg.schema_style != "llama_cpp":  # OpenAI's strict schemas take no maxLength
            verdict = {**verdict, "properties": {**verdict["properties"], "explanation": {"type": "string"}}}
        response_format = json_response_format(verdict, "rubric_verdict", cfg.schema_style)
    return GraderSettings(
        temperature=protocol.temperature if hb.temperature is None else hb.temperature,
        max_tokens=protocol.max_tokens if hb.max_tokens is None else hb.max_tokens,
        retries=hb.retries, response_format=response_format, kind=kind)


def grader_description(cfg: Any, settings: GraderSettings, protocol: GraderProtocol) -> dict[str, Any]:
    """The grader as stats.json records it (simple-evals' own grader is ``protocol.model``)."""
    return {"preset": cfg.name, "model": cfg.model, "endpoint": endpoint_identity(cfg, cfg.base_url),
            "local": bool(cfg.launch_local), "simple_evals_grader": protocol.model,
            "temperature": settings.temperature, "max_tokens": settings.max_tokens, "retries": settings.retries,
            "schema": settings.response_format is not None, "protocol_source": protocol.source()}


def _request(key: str, attempt: int, messages: tuple[dict[str, str], ...], settings: GraderSettings) -> Request:
    return Request(key=f"{key}#{attempt}", messages=messages, temperature=settings.temperature, top_p=1.0,
                   max_tokens=settings.max_tokens, response_format=settings.response_format,
                   nonce=f"{settings.kind}:v{REQUEST_VERSION}" + (f":retry{attempt}" if attempt else ""))


def grade(subjects: Sequence[tuple[str, str]], protocol: GraderProtocol, settings: GraderSettings, cfg: Any,
          identity: str, work_log: Path, batch_log: Path, client: Callable[[], LLMClient], desc: str) -> GradingRun:
    """Grade ``subjects`` (key, grader user message), asking again up to ``settings.retries`` times
    for a reply that does not parse. ``client()`` opens the endpoint, only when a request is not
    already in ``work_log`` (a rerun of finished work opens nothing); ``batch_log``: the Batch
    API's record of submitted batches (``<role>.batch``)."""
    messages = {key: protocol.messages(user) for key, user in subjects}
    graded: dict[str, Graded] = {}
    pending = list(messages)
    opened: list[LLMClient] = []
    current: list[dict[str, Any]] = []
    with AppendLog(work_log) as work:
        replies = {r["hash"]: r for r in work.records}
        for attempt in range(settings.retries + 1):
            if not pending:
                break
            requests = {key: _request(key, attempt, messages[key], settings) for key in pending}
            hashes = {key: r.cache_key(cfg.name, cfg.model, identity) for key, r in requests.items()}
            by_key = {r.key: hashes[key] for key, r in requests.items()}
            todo = [requests[k] for k in pending if hashes[k] not in replies]
            if todo:
                log.info("%s: %d grader requests (attempt %d), %d already in the work log", desc, len(todo),
                         attempt + 1, len(pending) - len(todo))
                if not opened:
                    opened.append(client())
                    opened[0].count_earlier_spend(work.records)

                def record(request: Request, completion: Optional[Completion], error: str) -> None:
                    line = {"hash": by_key[request.key], "key": request.key, "raw": completion.text if completion else "",
                            "error": error, "finish_reason": completion.finish_reason if completion else "error",
                            **work_log_usage(completion)}
                    work.append(line)
                    replies[line["hash"]] = line

                opened[0].run(todo, record, desc=f"{desc} (attempt {attempt + 1})" if attempt else desc,
                              batch_log=batch_log)
            still = []
            for key in pending:
                reply = replies.get(hashes[key])
                if reply is None:  # the endpoint stopped before answering (raised above); kept for the rerun
                    still.append(key)
                    continue
                current.append(reply)
                verdict = protocol.parse(reply["raw"])
                graded[key] = Graded(verdict, attempt + 1, reply["raw"], reply.get("error", ""))
                if verdict is None:
                    still.append(key)
            pending = still
    return GradingRun(graded, current)


def spend(cfg: Any, work_records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Tokens and USD of a grading run's requests (cached ones cost nothing again)."""
    paid = [r for r in work_records if not r["cached"]]
    received, possibly = paid_cost(Ledger(cfg.price_input_per_1m, cfg.price_output_per_1m), paid)
    return {"requests": len(work_records), "cached": sum(bool(r["cached"]) for r in work_records),
            "prompt_tokens": sum(r["prompt_tokens"] for r in work_records),
            "completion_tokens": sum(r["completion_tokens"] for r in work_records),
            "cost_usd": round(received, 6), "cost_usd_possibly_billed": round(possibly, 6)}


# ---------------------------------------------------------------------------------------------
# Conversations: predictions in, grades and scores out
# ---------------------------------------------------------------------------------------------


def align_predictions(path: Path, test_set: str, cache_dir: Any, limit: Optional[int]) -> list[tuple[dict[str, Any], str]]:
    """(conversation, answer) per prediction, in the file's order (predict's: the drawn subset's).
    Records name their conversation by ``prompt_id`` and hold the answer in ``output`` (or
    ``response`` / ``completion``); a conversation they carry (``messages``) must be the set's."""
    records = read_records(path)
    if not records:
        raise DataError(f"{path}: no predictions (empty file)")
    examples = {c["prompt_id"]: c for c in load_conversations(test_set, cache_dir)}
    pairs, seen = [], set()
    for k, r in enumerate(records):
        where = f"{path}: record {k + 1}"
        prompt_id = r.get("prompt_id")
        if prompt_id not in examples:
            raise DataError(f"{where}: prompt_id {prompt_id!r} is not a {test_set} conversation")
        if prompt_id in seen:
            raise DataError(f"{where}: prompt_id {prompt_id!r} appears twice")
        seen.add(prompt_id)
        answer = next((r[f] for f in ("output", "response", "completion") if isinstance(r.get(f), str)), None)
        if answer is None:
            raise DataError(f"{where}: no answer text (output, response or completion)")
        shown = r.get("messages")
        if shown is not None and [{"role": m.get("role"), "content": m.get("content")} for m in shown] != examples[prompt_id]["prompt"]:
            raise DataError(f"{where}: its conversation differs from {test_set}'s {prompt_id}")
        pairs.append((examples[prompt_id], answer))
    return pairs[:limit] if limit is not None else pairs


def criterion_key(test_set: str, prompt_id: str, k: int) -> str:
    return f"{test_set}:{prompt_id}:{k}"


def rubric_subjects(test_set: str, pairs: Sequence[tuple[dict[str, Any], str]], protocol: GraderProtocol) -> list[tuple[str, str]]:
    """One (key, grader prompt) per rubric item of every conversation."""
    return [(criterion_key(test_set, ex["prompt_id"], k),
             protocol.user_message(ex["prompt"], answer, rubric_item(r["criterion"], r["points"])))
            for ex, answer in pairs for k, r in enumerate(ex["rubrics"])]


def score_set(test_set: str, pairs: Sequence[tuple[dict[str, Any], str]], graded: dict[str, Graded],
              bootstrap: int, seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """(a record per rubric item, a record per conversation, the set's stats row)."""
    grades, scores, per_example = [], [], []
    for ex, answer in pairs:
        met: list[Optional[bool]] = []
        for k, r in enumerate(ex["rubrics"]):
            g = graded.get(criterion_key(test_set, ex["prompt_id"], k))
            verdict = g.verdict if g else None
            met.append(verdict["criteria_met"] if verdict else None)
            grades.append({"test_set": test_set, "prompt_id": ex["prompt_id"], "criterion_index": k,
                           "criterion": r["criterion"], "points": r["points"], "tags": r["tags"],
                           "criteria_met": met[-1], "explanation": str(verdict.get("explanation", "")) if verdict else "",
                           "points_lost": points_lost(r["points"], met[-1]), "attempts": g.attempts if g else 0,
                           "raw": "" if verdict else (g.raw if g else ""), "error": g.error if g else "not graded"})
        metrics = example_metrics(ex["rubrics"], met, ex["example_tags"])
        scores.append({"test_set": test_set, "prompt_id": ex["prompt_id"], "index": ex["index"],
                       "score": metrics[OVERALL] if metrics else None, "metrics": metrics,
                       "criteria_unparsed": sum(m is None for m in met), "question": ex["prompt"][-1]["content"],
                       "turns": len(ex["prompt"]), "answer": answer})
        if metrics is not None:
            per_example.append(metrics)
    agg = aggregate(per_example, bootstrap, seed) if per_example else {"score": None, "metrics": {}}
    m = agg["metrics"]
    row = {"test_set": test_set, "score": agg["score"], "bootstrap_std": m.get("score:bootstrap_std"),
           "n": m.get("score:n_samples", 0), "conversations": len(pairs), "criteria": len(grades),
           "criteria_unparsed": sum(g["criteria_met"] is None for g in grades),
           "criteria_retried": sum(g["attempts"] > 1 for g in grades),
           "conversations_unscored": sum(s["score"] is None for s in scores),
           "themes": tag_rows(m, "theme:"), "axes": tag_rows(m, "axis:"), "clusters": tag_rows(m, "cluster:"),
           "metrics": m}
    return grades, scores, row


# ---------------------------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------------------------


def calculate_score(rubrics: Sequence[dict[str, Any]], met: Sequence[bool]) -> Optional[float]:
    """Points of the criteria met over the positive points; None without positive points."""
    possible = sum(r["points"] for r in rubrics if r["points"] > 0)
    if possible == 0:
        return None
    if len(met) != len(rubrics):
        raise ValueError("one verdict per rubric item")
    return sum(r["points"] for r, m in zip(rubrics, met) if m) / possible


def example_metrics(rubrics: Sequence[dict[str, Any]], met: Sequence[Optional[bool]],
                    example_tags: Sequence[str]) -> Optional[dict[str, float]]:
    """One conversation's metrics (``overall_score``, then each example tag, then each rubric tag),
    over the criteria with a verdict (``met[k]`` None: unparsed, left out); None when no criterion
    with positive points has one."""
    graded = [(r, m) for r, m in zip(rubrics, met) if m is not None]
    overall = calculate_score([r for r, _ in graded], [m for _, m in graded])
    if overall is None:
        return None
    metrics = {OVERALL: overall}
    metrics.update({tag: overall for tag in example_tags})
    by_tag: dict[str, list[tuple[dict[str, Any], bool]]] = defaultdict(list)
    for r, m in graded:
        for tag in dict.fromkeys(r["tags"]):
            by_tag[tag].append((r, m))
    for tag, pairs in by_tag.items():
        score = calculate_score([r for r, _ in pairs], [m for _, m in pairs])
        if score is not None:
            metrics[tag] = score
    return metrics


def _clipped_mean(values: Sequence[float]) -> float:
    return float(np.clip(np.mean(values), 0, 1))


def aggregate(per_example: Sequence[dict[str, float]], bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """simple-evals' aggregation over conversations: ``{"score": clipped mean of the overall
    scores, "metrics": {name, name:n_samples, name:bootstrap_std, ...}}``, names in the order they
    first appear (each conversation's metrics, then its score), the bootstrap drawn in that order."""
    values: dict[str, list[float]] = defaultdict(list)
    for metrics in per_example:
        for name, value in metrics.items():
            values[name].append(value)
        values["score"].append(metrics[OVERALL])
    rng = np.random.RandomState(seed)
    final: dict[str, Any] = {}
    for name, vals in values.items():
        final[name] = _clipped_mean(vals)
        final[f"{name}:n_samples"] = len(vals)
        means = [_clipped_mean(rng.choice(vals, len(vals))) for _ in range(bootstrap)]
        final[f"{name}:bootstrap_std"] = float(np.std(means)) if bootstrap else None
    return {"score": final.pop("score", None), "metrics": final}


def tag_rows(metrics: dict[str, Any], prefix: str) -> list[dict[str, Any]]:
    """``{tag, score, bootstrap_std, n}`` for every aggregated tag that starts with ``prefix``
    (``theme:``, ``axis:``, ``cluster:``), best first."""
    rows = [{"tag": name, "score": metrics[name], "bootstrap_std": metrics.get(f"{name}:bootstrap_std"),
             "n": metrics.get(f"{name}:n_samples")}
            for name in metrics if name.startswith(prefix) and ":" not in name[len(prefix):]]
    return sorted(rows, key=lambda r: -r["score"])


def points_lost(points: float, met: Optional[bool]) -> float:
    """What a criterion cost the answer: positive points not met, negative points met."""
    if met is None:
        return 0.0
    return points if (points > 0 and not met) else (-points if (points < 0 and met) else 0.0)


# ---------------------------------------------------------------------------------------------
# Meta-eval: agreement with physicians
# ---------------------------------------------------------------------------------------------

_INDEX = "pairwise_{rater}_{metric}_{pred}"


def rater_agreement(self_labels: Sequence[bool], other_labels: Sequence[Sequence[bool]], clusters: Sequence[str],
                    rater: str) -> dict[str, dict[str, Optional[float]]]:
    """``{key: {"n", "value"}}`` of one rater's agreement with the other labels of each row."""
    lists: dict[str, list[bool]] = defaultdict(list)
    for own, others, cluster in zip(self_labels, other_labels, clusters, strict=True):
        for other in others:
            agree = own == other
            for metric, pred in (("precision", own), ("recall", other)):
                key = _INDEX.format(rater=rater, metric=metric, pred="pos" if pred else "neg")
                lists[key].append(agree)
                lists[f"{cluster}: {key}"].append(agree)
    metrics: dict[str, dict[str, Optional[float]]] = {
        key: {"n": len(v), "value": sum(v) / len(v) if v else None} for key, v in lists.items()}
    metrics.update(_f1(metrics))
    metrics.update(_balanced(metrics))
    return metrics


def _f1(metrics: dict[str, dict[str, Optional[float]]]) -> dict[str, dict[str, Optional[float]]]:
    out = {}
    for key in metrics:
        recall_key = key.replace("precision", "recall")
        if "precision" not in key or recall_key not in metrics:
            continue
        p, r = metrics[key], metrics[recall_key]
        if p["value"] is None or r["value"] is None:
            value, n = None, p["n"] + r["n"]
        else:
            true_pos = p["value"] * p["n"]
            value = 0.0 if p["value"] == 0 and r["value"] == 0 else 2 * p["value"] * r["value"] / (p["value"] + r["value"])
            n = p["n"] + r["n"] - true_pos
        out[key.replace("precision", "f1")] = {"n": n, "value": value}
    return out


def _balanced(metrics: dict[str, dict[str, Optional[float]]]) -> dict[str, dict[str, Optional[float]]]:
    out = {}
    for key in metrics:
        neg_key = key.replace("pos", "neg")
        if "pos" not in key or neg_key not in metrics:
            continue
        pos, neg = metrics[key], metrics[neg_key]
        value = None if pos["value"] is None or neg["value"] is None else (pos["value"] + neg["value"]) / 2
        out[key.replace("pos", "balanced")] = {"n": pos["n"] + neg["n"], "value": value}
    return out


def physician_agreement(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, Optional[float]]]]:
    """Each physician against the other physicians of the rows they labelled:
    ``{key: {physician: {"n", "value"}}}``."""
    per: dict[str, tuple[list[bool], list[list[bool]], list[str]]] = defaultdict(lambda: ([], [], []))
    for row in rows:
        labels = row["binary_labels"]
        for i, physician in enumerate(row["anonymized_physician_ids"]):
            own, others, clusters = per[physician]
            own.append(labels[i])
            others.append(labels[:i] + labels[i + 1:])
            clusters.append(row["category"])
    by_key: dict[str, dict[str, dict[str, Optional[float]]]] = defaultdict(dict)
    for physician, (own, others, clusters) in per.items():
        for key, m in rater_agreement(own, others, clusters, "physician").items():
            by_key[key][physician] = m
    return by_key


def physician_mean(by_key: dict[str, dict[str, dict[str, Optional[float]]]], key: str) -> tuple[Optional[float], int]:
    """The mean of ``key`` over the physicians who have a value, and how many do."""
    values = [m["value"] for m in by_key.get(key, {}).values() if m["value"] is not None]
    return (float(np.mean(values)) if values else None), len(values)
