"""Blinded pairwise preference study: export two systems' answers as A/B, import and un-blind."""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Optional

from alpacare.data.jsonl import read_jsonl
from alpacare.errors import DataError
from alpacare.review.audit import file_sha256
from alpacare.review.package import KEY_FORMAT, PAIRWISE, Package, check_all, write_package
from alpacare.review.sampling import align, load_outputs, system_name
from alpacare.review.stats import cohen_kappa, fleiss_kappa, percent_agreement, t_interval

TITLE = "Blinded answer comparison"
INTRO = ("Each item is a task and two answers, A and B, written by two different systems (which is which "
         "is hidden, and the order changes from item to item). Choose the answer you would rather give a "
         "patient or colleague: A, B, or tie when they are equally good (or equally bad). Judge medical "
         "accuracy and safety first, then helpfulness and clarity; length is not a merit in itself. Your "
         "answers are kept in this browser as you go; when done, press \u201cSave answers\u201d and send "
         "the downloaded file back.")
JUDGE_SCORES = {"model": 1.0, "tie": 0.5, "reference": 0.0}
SCORE_A = {"a": 1.0, "tie": 0.5, "b": 0.0}  # system a's score for one verdict
INTERVAL = "t over items (each item's verdicts averaged over its reviewers first)"


def export_pairwise(path_a: Path, path_b: Path, out_dir: Path, names: Optional[list[str]] = None,
                    n: Optional[int] = None, seed: int = 0, force: bool = False) -> dict[str, Any]:
    aligned = align(load_outputs(path_a), load_outputs(path_b), Path(path_a), Path(path_b))
    total = len(aligned)
    if n is not None:
        if n < 1:
            raise DataError(f"--n must be at least 1, got {n}")
        if n < total:
            aligned = [aligned[i] for i in sorted(random.Random(seed).sample(range(total), n))]
    order = random.Random(f"alpacare-review:{seed}:order")  # its own stream: the A/B order per item
    items, shown_first = [], []
    for al in aligned:
        first = "a" if order.random() < 0.5 else "b"
        second = "b" if first == "a" else "a"
        shown_first.append(first)
        items.append({"instruction": al["instruction"], "input": al["input"],
                      "answer_a": al["answer_of"][first], "answer_b": al["answer_of"][second]})
    pkg = Package.build(PAIRWISE, items)
    name_a, name_b = names if names else (system_name(path_a), system_name(path_b))
    if name_a == name_b:
        name_a, name_b = f"{name_a} (a)", f"{name_b} (b)"
    key = {
        "format": KEY_FORMAT, "version": 1, "kind": "pairwise",
        "note": "DO NOT SEND TO REVIEWERS: this file un-blinds the study. pairwise-import needs it.",
        "package_id": pkg.package_id, "package_hash": pkg.package_hash,
        "systems": {"a": {"name": name_a, "file": str(Path(path_a).resolve()), "sha256": file_sha256(path_a)},
                    "b": {"name": name_b, "file": str(Path(path_b).resolve()), "sha256": file_sha256(path_b)}},
        "seed": seed, "n_available": total, "n_requested": n, "n": len(pkg.items),
        "items": [{"item_id": it["item_id"], "source_index": al["source_index"], "instruction": it["instruction"],
                   "item_hash": it["item_hash"], "A": first, "B": "b" if first == "a" else "a"}
                  for it, al, first in zip(pkg.items, aligned, shown_first)],
    }
    paths = write_package(out_dir, "pairwise", pkg, TITLE, INTRO, key, force)
    return {"package_id": pkg.package_id, "n": len(pkg.items), "n_available": total, "paths": paths,
            "names": (name_a, name_b)}


def _score(winners: dict[str, dict[int, str]]) -> dict[str, Any]:
    """Win rate of system a (win 1, tie 0.5) from ``{reviewer: {item_id: winner}}``: each item's
    score is the mean over the reviewers who rated it, the win rate the mean over items, and the
    95% interval a t interval over items. Reviewers who rate the same items are not independent
    samples: pooling their verdicts as n = reviewers x items would narrow the interval by up to
    the square root of the number of reviewers."""
    per_item: dict[int, list[float]] = defaultdict(list)
    for per in winners.values():
        for item_id, winner in per.items():
            per_item[item_id].append(SCORE_A[winner])
    item_scores = [math.fsum(v) / len(v) for _, v in sorted(per_item.items())]
    mean, low, high = t_interval(item_scores)
    c = Counter(w for per in winners.values() for w in per.values())
    return {"n": sum(c.values()), "wins_a": c["a"], "wins_b": c["b"], "ties": c["tie"],
            "n_items_rated": len(item_scores), "win_rate": mean,
            # Scores lie in [0, 1]; so does the interval.
            "ci_low": None if low is None else max(0.0, low), "ci_high": None if high is None else min(1.0, high)}


def summarize_pairwise(paths: list[Path], key: dict[str, Any], key_path: Path, allow_incomplete: bool = False,
                       judge_path: Optional[Path] = None, judge_model_system: str = "a",
                       judge_reference: Optional[str] = None, judge_test_set: Optional[str] = None) -> dict[str, Any]:
    returned, expected = check_all(paths, PAIRWISE, key, key_path, allow_incomplete)
    key_items = {int(it["item_id"]): it for it in key["items"]}
    winners: dict[str, dict[int, str]] = {}
    shown: Counter = Counter()
    for r in returned:
        winners[r.reviewer] = {}
        for item_id, verdict in r.verdicts.items():
            shown[verdict] += 1
            winners[r.reviewer][item_id] = "tie" if verdict == "tie" else key_items[item_id][verdict]
    decisive = shown["A"] + shown["B"]
    summary: dict[str, Any] = {
        "kind": "pairwise", "package_id": expected.package_id, "package_hash": expected.package_hash,
        "systems": {s: {"name": v["name"], "file": v["file"]} for s, v in key["systems"].items()},
        "seed": key.get("seed"), "key_file": str(key_path), "n_items": len(key_items), "n_reviewers": len(returned),
        "confidence": 0.95, "interval": INTERVAL, "scoring": "win 1, tie 0.5",
        **_score(winners),
        "first_shown_preferred": (shown["A"] / decisive) if decisive else None,
        "reviewers": {r.reviewer: {"file": str(r.path), "unrated": len(r.unrated),
                                   **_score({r.reviewer: winners[r.reviewer]})} for r in returned},
        "agreement": _agreement(winners) if len(returned) > 1 else None,
        "judge_agreement": None,
        "items": [{"item_id": i, "source_index": key_items[i]["source_index"],
                   "instruction": key_items[i]["instruction"],
                   "winners": {name: per[i] for name, per in winners.items() if i in per},
                   "comments": {r.reviewer: r.comments[i] for r in returned if r.comments.get(i)}}
                  for i in sorted(key_items)],
    }
    if judge_path is not None:
        summary["judge_agreement"] = judge_agreement(judge_path, key, winners, judge_model_system,
                                                     judge_reference, judge_test_set)
    return summary


def _agreement(winners: dict[str, dict[int, str]]) -> dict[str, Any]:
    per = list(winners.values())
    common = sorted(set.intersection(*(set(p) for p in per)))
    labels = [[p[i] for p in per] for i in common]
    out = {"n_items": len(common), "n_reviewers": len(per), "percent_agreement": percent_agreement(labels),
           "fleiss_kappa": fleiss_kappa(labels)}
    if len(per) == 2:
        out["cohen_kappa"] = cohen_kappa([l[0] for l in labels], [l[1] for l in labels])
    return out


def _side(score: float) -> str:
    return "model" if score > 0.5 else "reference" if score < 0.5 else "tie"


def _norm(text: Any) -> str:
    return " ".join(str(text).split())


def _read_judge(path: Path) -> list[dict[str, Any]]:
    records = read_jsonl(path)
    for i, r in enumerate(records, 1):
        if not isinstance(r.get("instruction"), str):
            raise DataError(f"{path}: record {i}: no instruction text")
        if not isinstance(r.get("index"), int) or isinstance(r.get("index"), bool):
            raise DataError(f"{path}: record {i}: no item index (the judge stage's verdicts.jsonl has one per verdict)")
        if r.get("verdict") not in (*JUDGE_SCORES, None):
            raise DataError(f"{path}: record {i}: verdict {r.get('verdict')!r} is not model, reference, tie or null")
    return records


def judge_agreement(path: Path, key: dict[str, Any], winners: dict[str, dict[int, str]], model_system: str,
                    reference: Optional[str], test_set: Optional[str]) -> dict[str, Any]:
    """Agreement between the human verdicts and the LLM judge's on the items both rated.

    A verdict is about the study item at the same test-set position (the judge's ``index``, the
    study's ``source_index``), never matched by instruction text alone: iCliniq's items all share
    one instruction. The instruction must agree too, a check that both number the same test set.
    Per item, the judge's preference is the mean over its parsed orders (model 1, tie 0.5,
    reference 0) and the humans' the mean over reviewers of the same score for the judged model
    (``model_system``); each becomes a class (model / tie / reference). Reported: the share of
    items in the same class, Cohen's kappa over the three classes, and the confusion counts.
    """
    path = Path(path)
    if model_system not in ("a", "b"):
        raise DataError(f"--judge-model-system must be a or b, got {model_system!r}")
    other = "b" if model_system == "a" else "a"
    records = _read_judge(path)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(str(r.get("test_set", "")), str(r.get("reference", "")))].append(r)
    refs = sorted({g[1] for g in groups})
    if reference is None:
        hint = key["systems"][other]["name"]
        reference = hint if hint in refs else (refs[0] if len(refs) == 1 else None)
        if reference is None:
            raise DataError(f"{path}: holds verdicts against several references ({', '.join(refs)}); "
                            f"pick one with --judge-reference")
    elif reference not in refs:
        raise DataError(f"{path}: no verdicts against reference {reference!r} (it has: {', '.join(refs)})")
    candidates = {g: recs for g, recs in groups.items() if g[1] == reference and (test_set is None or g[0] == test_set)}
    if not candidates:
        raise DataError(f"{path}: no verdicts for test set {test_set!r} against {reference!r}")
    by_index = {int(it["source_index"]): it for it in key["items"]}

    def study_item(r: dict[str, Any]) -> Optional[dict[str, Any]]:
        it = by_index.get(r["index"])
        return it if it is not None and _norm(it["instruction"]) == _norm(r["instruction"]) else None

    matches = {g: sum(study_item(r) is not None for r in recs) for g, recs in candidates.items()}
    best = max(matches.values())
    chosen = [g for g, m in matches.items() if m == best]
    if len(chosen) > 1 and best > 0:
        raise DataError(f"{path}: several test sets match ({', '.join(g[0] for g in chosen)}); pick one with --judge-test-set")
    group = chosen[0]
    judge_scores: dict[int, list[float]] = defaultdict(list)
    unparsed = 0
    for r in candidates[group]:
        item = study_item(r)
        if item is None:
            continue
        if r.get("verdict") is None:
            unparsed += 1
            continue
        judge_scores[int(item["item_id"])].append(JUDGE_SCORES[r["verdict"]])
    human, judge, confusion = [], [], Counter()
    for item_id in sorted(judge_scores):
        scores = [1.0 if w[item_id] == model_system else 0.0 if w[item_id] == other else 0.5
                  for w in winners.values() if item_id in w]
        if not scores:
            continue
        h = _side(sum(scores) / len(scores))
        j = _side(sum(judge_scores[item_id]) / len(judge_scores[item_id]))
        human.append(h)
        judge.append(j)
        confusion[f"{h}/{j}"] += 1
    n = len(human)
    win = {"model": 1.0, "tie": 0.5, "reference": 0.0}
    return {
        "file": str(path), "test_set": group[0], "reference": group[1], "model_system": model_system,
        "model_name": key["systems"][model_system]["name"], "reference_name": key["systems"][other]["name"],
        "n_items": n, "unparsed_verdicts": unparsed,
        "agreement": (sum(h == j for h, j in zip(human, judge)) / n) if n else None,
        "cohen_kappa": cohen_kappa(human, judge) if n else None,
        "human_win_rate": (sum(win[h] for h in human) / n) if n else None,
        "judge_win_rate": (sum(win[j] for j in judge) / n) if n else None,
        "confusion_human_judge": dict(sorted(confusion.items())),
    }


def format_pairwise(summary: dict[str, Any]) -> str:
    a, b = summary["systems"]["a"]["name"], summary["systems"]["b"]["name"]

    def line(label: str, s: dict[str, Any]) -> str:
        if not s["n"]:
            return f"  {label}: no verdicts"
        interval = ("no interval (one item)" if s["ci_low"] is None
                    else f"[{100 * s['ci_low']:.1f}-{100 * s['ci_high']:.1f}]")
        return (f"  {label}: {a} wins {s['wins_a']}, {b} wins {s['wins_b']}, ties {s['ties']} of {s['n']} verdicts "
                f"on {s['n_items_rated']} items: win rate of {a} {100 * s['win_rate']:.1f}% {interval}")

    out = [f"Pairwise {summary['package_id']}: {a} (a) vs {b} (b), {summary['n_items']} items, "
           f"{summary['n_reviewers']} reviewer(s) (win 1, tie 0.5; per item averaged over reviewers, "
           f"95% t interval over items)", line("all", summary)]
    if summary["n_reviewers"] > 1:
        out += [line(f"reviewer {name}", s) for name, s in summary["reviewers"].items()]
        g = summary["agreement"]
        fk = "n/a" if g["fleiss_kappa"] is None else f"{g['fleiss_kappa']:.3f}"
        out.append(f"  reviewer agreement over {g['n_items']} items: Fleiss' kappa {fk}")
    if summary["first_shown_preferred"] is not None:
        out.append(f"  answer shown first (A) preferred in {100 * summary['first_shown_preferred']:.1f}% of decisive verdicts")
    j = summary.get("judge_agreement")
    if j:
        if j["n_items"]:
            kappa = "n/a" if j["cohen_kappa"] is None else f"{j['cohen_kappa']:.3f}"
            out.append(f"  LLM judge ({j['test_set']}, vs {j['reference']}): same side on {100 * j['agreement']:.1f}% of "
                       f"{j['n_items']} shared items, Cohen's kappa {kappa}; {j['model_name']} win rate: humans "
                       f"{100 * j['human_win_rate']:.1f}%, judge {100 * j['judge_win_rate']:.1f}%")
        else:
            out.append(f"  LLM judge ({j['file']}): no shared items")
    return "\n".join(out)
