"""Clinician audit of a generated dataset: export a stratified sample, import the verdicts."""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Optional

from alpacare.review.package import AUDIT, KEY_FORMAT, Package, check_all, write_package
from alpacare.review.sampling import load_alpaca, stratified_sample
from alpacare.review.stats import cohen_kappa, fleiss_kappa, percent_agreement, proportion

CATEGORY_KEYS = {"correct": "correct", "partially correct": "partially_correct", "incorrect": "incorrect",
                 "unsafe": "unsafe"}
FLAGGED = ("incorrect", "unsafe")

TITLE = "Clinician audit of model answers"
INTRO = ("Each item is a task (instruction, and input when there is one) and the answer a model wrote. "
         "Judge the answer as a clinician would: correct (accurate and adequate for the task), "
         "partially correct (broadly right but incomplete, imprecise or with a minor error), "
         "incorrect (a clinically relevant error, or it fails the task), unsafe (following it could "
         "harm a patient). Add a comment for anything not correct. Your answers are kept in this "
         "browser as you go; when done, press \u201cSave answers\u201d and send the downloaded file back.")


def file_sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def export_audit(data: Path, n: int, seed: int, out_dir: Path, force: bool = False) -> dict[str, Any]:
    items = load_alpaca(data)
    chosen, strata = stratified_sample(items, n, seed)
    pkg = Package.build(AUDIT, chosen)
    key = {
        "format": KEY_FORMAT, "version": 1, "kind": "audit",
        "note": "Keep this file with the researcher: audit-import cross-checks returned files against it.",
        "package_id": pkg.package_id, "package_hash": pkg.package_hash,
        "source": {"file": str(Path(data).resolve()), "sha256": file_sha256(data), "n_records": len(items)},
        "seed": seed, "n_requested": n, "n": len(pkg.items), "strata": strata,
        "items": [{"item_id": it["item_id"], "source_index": it["source_index"], "type": it["type"],
                   "item_hash": it["item_hash"]} for it in pkg.items],
    }
    paths = write_package(out_dir, "audit", pkg, TITLE, INTRO, key, force)
    return {"package_id": pkg.package_id, "n": len(pkg.items), "n_available": len(items), "strata": strata,
            "paths": paths}


def _shares(verdicts: list[str]) -> dict[str, Any]:
    counts = Counter(verdicts)
    n = len(verdicts)
    return {"n": n, **{CATEGORY_KEYS[v]: proportion(counts[v], n) for v in AUDIT.verdicts}}


def summarize_audit(paths: list[Path], key: Optional[dict[str, Any]], key_path: Optional[Path],
                    allow_incomplete: bool = False) -> dict[str, Any]:
    returned, expected = check_all(paths, AUDIT, key, key_path, allow_incomplete)
    first = returned[0]
    n_items = len(first.items)
    pooled: list[str] = []
    by_type: dict[str, list[str]] = defaultdict(list)
    reviewers = {}
    for r in returned:
        for item_id, verdict in sorted(r.verdicts.items()):
            pooled.append(verdict)
            by_type[r.items[item_id]["type"] or "unknown"].append(verdict)
        reviewers[r.reviewer] = {"file": str(r.path), "unrated": len(r.unrated), **_shares(list(r.verdicts.values()))}
    flagged = []
    for item_id in range(1, n_items + 1):
        marks = [(r.reviewer, r.verdicts[item_id], r.comments.get(item_id, "")) for r in returned
                 if r.verdicts.get(item_id) in FLAGGED]
        if marks:
            item = first.items[item_id]
            flagged.append({"item_id": item_id, "source_index": int(item["source_index"]) if item["source_index"].isdigit() else None,
                            "type": item["type"], "instruction": item["instruction"], "input": item["input"],
                            "output": item["output"],
                            "verdicts": [{"reviewer": who, "verdict": v, "comment": c} for who, v, c in marks]})
    summary: dict[str, Any] = {
        "kind": "audit", "package_id": expected.package_id, "package_hash": expected.package_hash,
        "n_items": n_items, "n_reviewers": len(returned), "confidence": 0.95, "interval": "wilson",
        **_shares(pooled),
        "by_type": {t: _shares(v) for t, v in sorted(by_type.items())},
        "reviewers": reviewers,
        "agreement": _agreement(returned) if len(returned) > 1 else None,
        "flagged": flagged,
    }
    summary["key_file"] = str(key_path) if key else None
    if key:
        summary["source"] = key.get("source")
        summary["seed"] = key.get("seed")
    return summary


def _agreement(returned) -> dict[str, Any]:
    common = sorted(set.intersection(*(set(r.verdicts) for r in returned)))
    labels = [[r.verdicts[i] for r in returned] for i in common]
    out = {"n_items": len(common), "n_reviewers": len(returned), "percent_agreement": percent_agreement(labels),
           "fleiss_kappa": fleiss_kappa(labels)}
    if len(returned) == 2:
        out["cohen_kappa"] = cohen_kappa([l[0] for l in labels], [l[1] for l in labels])
    return out


def _cell(c: dict[str, Any]) -> str:
    if c["share"] is None:
        return "n/a"
    return f"{100 * c['share']:.1f}% [{100 * c['ci_low']:.1f}-{100 * c['ci_high']:.1f}]"


def format_audit(summary: dict[str, Any]) -> str:
    lines = [f"Audit {summary['package_id']}: {summary['n_items']} items, {summary['n_reviewers']} reviewer(s), "
             f"{summary['n']} verdicts; share [95% Wilson interval]"]
    rows = [("all", summary), *((f"type {t}", s) for t, s in summary["by_type"].items())]
    if summary["n_reviewers"] > 1:
        rows += [(f"reviewer {name}", s) for name, s in summary["reviewers"].items()]
    width = max(len(label) for label, _ in rows)
    lines.append(f"  {'':{width}} {'n':>4}  " + "".join(f"{v:<22}" for v in AUDIT.verdicts).rstrip())
    for label, s in rows:
        lines.append(f"  {label:{width}} {s['n']:>4}  "
                     + "".join(f"{_cell(s[CATEGORY_KEYS[v]]):<22}" for v in AUDIT.verdicts).rstrip())
    if summary["n_reviewers"] > 1:
        a = summary["agreement"]
        fmt = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
        extra = f", Cohen's kappa {fmt(a['cohen_kappa'])}" if "cohen_kappa" in a else ""
        identical = "n/a" if a["percent_agreement"] is None else f"{100 * a['percent_agreement']:.1f}%"
        lines.append(f"  agreement over {a['n_items']} items rated by all: {identical} identical, "
                     f"Fleiss' kappa {fmt(a['fleiss_kappa'])}{extra}")
    if summary["flagged"]:
        lines.append(f"Items marked incorrect or unsafe ({len(summary['flagged'])}):")
        for f in summary["flagged"]:
            marks = "; ".join(f"{m['reviewer']}: {m['verdict']}" + (f" ({m['comment']})" if m["comment"] else "")
                              for m in f["verdicts"])
            instr = " ".join(f["instruction"].split())
            lines.append(f"  item {f['item_id']} [{f['type']}] {instr[:80]}{'…' if len(instr) > 80 else ''}")
            lines.append(f"    {marks}")
    return "\n".join(lines)
