"""The ``<stage>/stats.json`` schema, in one place: what every stage writes and which of its numbers
are headline metrics.

Every stage's ``stats.json`` (written last by ``StageContext.write_stats``, so its presence means
the stage completed) starts with the common header:

    schema_version   int, ``STATS_SCHEMA_VERSION`` (alpacare/stages/__init__.py); bumped when a key
                     below changes meaning or name
    stage            the stage's name
    seconds          wall time of the stage, in seconds

Counts use the same names in every stage that has them:

    records_in         records the stage read from its input artifact (instructions: none)
    records_out        records written to its main output artifact (train, benchmark: none)
    prompt_tokens      LLM prompt tokens of the stage's requests (teacher or judge role)
    completion_tokens  LLM completion tokens
    cost_usd           USD for the requests actually paid (cached ones cost nothing)

Stage-specific keys (the stage modules document them): instructions ``tasks_parsed``, ``rejects``,
``reject_reasons``, ``types``/``views``/``difficulties``; dedup ``total``/``kept``/``dropped``/
``kept_ratio``/``threshold``/``mode``/``histogram``/``contaminated``/``contamination`` (``rows``: source, items,
removed); responses ``answered``/``failed``/
``truncated_at_max_tokens``; train ``final_loss``, ``tokens_per_s``, ``peak_rss_gb``, ``steps``,
``train_seconds``, ``world_size``/``num_nodes``/``devices_per_node`` (per-step metrics in
``train/metrics.jsonl``); predict ``test_sets`` (per set:
items, mean_new_tokens, new_tokens_per_s...); judge ``win_rates`` rows (test_set, reference,
win_rate, se, n, lc_win_rate, lc_se, ...) and ``healthbench`` rows (test_set, score, bootstrap_std, n, themes,
axes, clusters, metrics: simple-evals' names); grader_check ``grader_f1_balanced``, ``physicians_f1_balanced`` and
``categories`` rows; benchmark ``table`` rows (task, metric, value, stderr,
n, shots); report ``sections``, ``omitted``.

``HEADLINE`` below names each stage's headline metrics: the report's summary, the columns of
``alpacare-compare`` and the W&B summary keys (``<stage>/<name>``) all come from it, so they agree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

COMMON_KEYS = ("schema_version", "stage", "seconds")
COUNT_KEYS = ("records_in", "records_out", "prompt_tokens", "completion_tokens", "cost_usd")

# A key, or alternatives tried in order (older runs wrote the count under its first name).
KeyPath = Union[str, tuple[str, ...]]


@dataclass(frozen=True)
class Rows:
    """Headline metrics that live in a list of rows (judge ``win_rates``, benchmark ``table``):
    one metric per row and value key, named ``<row key values joined by />/<value name>``."""

    key: str  # dotted for a nested list ("contamination.rows")
    by: tuple[str, ...]
    values: tuple[tuple[str, str], ...]  # (key in the row, name); name "" = use the row's "metric"


# stage -> (key in stats.json, display name). Order = column order in alpacare-compare.
HEADLINE: dict[str, tuple[Union[tuple[KeyPath, str], Rows], ...]] = {
    "instructions": ((("records_out", "tasks_kept"), "tasks"), ("rejects", "rejects"), ("cost_usd", "cost_usd")),
    "dedup": ((("records_in", "total"), "total"), (("records_out", "kept"), "kept"), ("kept_ratio", "kept_ratio"),
              ("contaminated", "contaminated"), Rows("contamination.rows", ("source",), (("removed", "contaminated"),))),
    "responses": ((("records_out", "answered"), "answered"), ("failed", "failed"), ("cost_usd", "cost_usd")),
    "train": (("final_loss", "final_loss"), ("tokens_per_s", "tokens_per_s"), ("peak_rss_gb", "peak_rss_gb")),
    "predict": ((("records_out", "items"), "items"),),
    "judge": (Rows("win_rates", ("test_set", "reference"), (("win_rate", "win_rate"), ("lc_win_rate", "lc_win_rate"))),
              Rows("healthbench", ("test_set",), (("score", "score"), ("bootstrap_std", "bootstrap_std"))),
              ("cost_usd", "cost_usd")),
    "grader_check": (("grader_f1_balanced", "grader_f1_balanced"), ("physicians_f1_balanced", "physicians_f1_balanced"),
                     ("cost_usd", "cost_usd")),
    "benchmark": (Rows("table", ("task",), (("value", ""),)),),
    "report": (),
}
# Every stage also has ``seconds`` (common header); compare sums it and cost_usd over stages.


def _get(stats: dict[str, Any], path: KeyPath) -> Any:
    for key in (path,) if isinstance(path, str) else path:
        if key in stats:
            return stats[key]
    return None


def _dig(stats: dict[str, Any], dotted: str) -> Any:
    for key in dotted.split("."):
        stats = stats.get(key) if isinstance(stats, dict) else None
    return stats


def _number(v: Any) -> Optional[float]:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return v


def headline(stage: str, stats: dict[str, Any]) -> dict[str, float]:
    """A stage's headline metrics from its stats.json, ``{name: number}`` (missing ones left out)."""
    out: dict[str, float] = {}
    for item in HEADLINE.get(stage, ()):
        if isinstance(item, Rows):
            rows = _dig(stats, item.key)
            for row in rows if isinstance(rows, list) else []:
                if not isinstance(row, dict):
                    continue
                prefix = "/".join(str(row.get(k)) for k in item.by)
                for key, name in item.values:
                    v = _number(row.get(key))
                    if v is not None:
                        out.setdefault(f"{prefix}/{name or row.get('metric', key)}", v)
        else:
            path, name = item
            v = _number(_get(stats, path))
            if v is not None:
                out[name] = v
    return out


class StatsProblem(Exception):
    """A stats.json that exists but cannot be used (corrupt, wrong shape, newer schema)."""


def read_stats(run_dir: Path, stage: str) -> Optional[dict[str, Any]]:
    """``<run_dir>/<stage>/stats.json``; None when the stage did not run (no file). A corrupt or
    foreign file raises StatsProblem with a one-line reason naming the path."""
    from alpacare.stages import STATS_FILE, STATS_SCHEMA_VERSION

    path = Path(run_dir) / stage / STATS_FILE
    if not path.is_file():
        return None
    try:
        stats = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StatsProblem(f"{path}: not valid JSON ({getattr(e, 'msg', type(e).__name__)})") from None
    if not isinstance(stats, dict):
        raise StatsProblem(f"{path}: expected a JSON object, got {type(stats).__name__}")
    version = stats.get("schema_version")
    if isinstance(version, int) and version > STATS_SCHEMA_VERSION:
        raise StatsProblem(f"{path}: schema_version {version} is newer than this alpacare's ({STATS_SCHEMA_VERSION})")
    return stats
