"""``alpacare-review``: human review packages (clinician audit, blinded pairwise study) out and back in.

    alpacare-review audit-export --data FILE --n 50 --seed 0 --out DIR
    alpacare-review audit-import FILE [FILE ...] [--key DIR/audit_key.json] [--json] [--run-dir RUN_DIR]
    alpacare-review pairwise-export --a FILE --b FILE --out DIR [--names A B] [--n N] [--seed S]
    alpacare-review pairwise-import FILE [FILE ...] [--key DIR/pairwise_key.json] [--json] [--run-dir RUN_DIR]
                    [--judge-verdicts FILE] [--judge-model-system a|b]

Bad input ends with one line on stderr, ``alpacare-review: <message>``, and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from alpacare.data.jsonl import write_json_atomic
from alpacare.errors import AlpacareError, DataError
from alpacare.review.audit import export_audit, format_audit, summarize_audit
from alpacare.review.package import AUDIT, PAIRWISE, Spec, load_key
from alpacare.review.pairwise import export_pairwise, format_pairwise, summarize_pairwise

PROG = "alpacare-review"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Human review of generated data and model outputs: "
                                "export a package for clinicians (CSV + offline HTML form), import what they return.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ae = sub.add_parser("audit-export", help="sample a dataset, stratified by task type, into an audit package")
    ae.add_argument("--data", type=Path, help="Alpaca JSON list or JSONL (default: RUN_DIR/responses/train.json)")
    ae.add_argument("--run-dir", type=Path, help="a run directory: default --data and --out (RUN_DIR/review/audit)")
    ae.add_argument("--n", type=int, default=50, help="items to sample (default 50; the paper advises 30-50)")
    ae.add_argument("--seed", type=int, default=0, help="sampling seed, recorded in the key (default 0)")
    ae.add_argument("--out", type=Path, help="export directory")
    ae.add_argument("--force", action="store_true", help="replace an export of another sample in --out")

    ai = sub.add_parser("audit-import", help="score returned audit files (CSV or the form's saved JSON)")
    _import_args(ai, "audit")

    pe = sub.add_parser("pairwise-export", help="blind two systems' answers into an A/B preference package")
    pe.add_argument("--a", required=True, type=Path, help="system a's outputs (predict JSONL, released JSON, reference JSONL)")
    pe.add_argument("--b", required=True, type=Path, help="system b's outputs, same instructions in the same order")
    pe.add_argument("--names", nargs=2, metavar=("A_NAME", "B_NAME"), help="system names (default: from the file paths)")
    pe.add_argument("--n", type=int, help="sample this many items (default: all)")
    pe.add_argument("--seed", type=int, default=0, help="seed for the sample and the A/B order (default 0)")
    pe.add_argument("--run-dir", type=Path, help="a run directory: default --out is RUN_DIR/review/pairwise")
    pe.add_argument("--out", type=Path, help="export directory")
    pe.add_argument("--force", action="store_true", help="replace an export of another study in --out (its key is lost)")

    pi = sub.add_parser("pairwise-import", help="un-blind and score returned pairwise files")
    _import_args(pi, "pairwise")
    pi.add_argument("--judge-verdicts", type=Path,
                    help="LLM judge verdicts JSONL (default with --run-dir: RUN_DIR/judge/verdicts.jsonl when present)")
    pi.add_argument("--judge-model-system", choices=("a", "b"), default="a",
                    help="which pairwise system the judge scored as the model (default a)")
    pi.add_argument("--judge-reference", help="the judge's reference to compare with (default: system name or the only one)")
    pi.add_argument("--judge-test-set", help="the judge's test set to compare with (default: the one matching the items)")
    return p


def _import_args(p: argparse.ArgumentParser, kind: str) -> None:
    p.add_argument("files", nargs="+", type=Path, metavar="FILE", help="returned files, one per reviewer")
    p.add_argument("--key", type=Path, help=f"the export's {kind}_key.json (or its directory; default: beside the "
                   f"first file, else RUN_DIR/review/{kind}/)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--run-dir", type=Path, help=f"also write RUN_DIR/review/{kind}_summary.json for the report")
    p.add_argument("--allow-incomplete", action="store_true", help="score only rated items instead of failing on unrated ones")


def _find_key(args: argparse.Namespace, spec: Spec) -> Optional[Path]:
    name = f"{spec.kind}_key.json"
    if args.key is not None:
        key = args.key / name if args.key.is_dir() else args.key
        if not key.exists():
            raise DataError(f"{key}: no such key file")
        return key
    candidates = [args.files[0].parent / name]
    if args.run_dir is not None:
        candidates.append(args.run_dir / "review" / spec.kind / name)
    return next((c for c in candidates if c.is_file()), None)


def _emit(summary: dict[str, Any], args: argparse.Namespace, text: str, kind: str) -> None:
    if args.run_dir is not None:
        write_json_atomic(args.run_dir / "review" / f"{kind}_summary.json", summary)
    if args.json:
        print(json.dumps(summary, ensure_ascii=False, indent=2))
    else:
        print(text)
        if args.run_dir is not None:
            print(f"summary: {args.run_dir / 'review' / f'{kind}_summary.json'}")


def _out_dir(args: argparse.Namespace, kind: str) -> Path:
    if args.out is not None:
        return args.out
    if args.run_dir is not None:
        return args.run_dir / "review" / kind
    raise DataError("--out DIR is required (or --run-dir RUN_DIR)")


def _run(args: argparse.Namespace) -> None:
    if args.command == "audit-export":
        data = args.data or (args.run_dir / "responses" / "train.json" if args.run_dir else None)
        if data is None:
            raise DataError("--data FILE is required (or --run-dir RUN_DIR with responses/train.json)")
        res = export_audit(data, args.n, args.seed, _out_dir(args, "audit"), args.force)
        p = res["paths"]
        note = f" (the data has only {res['n_available']})" if res["n"] < args.n else ""
        strata = ", ".join(f"{t} {s['sampled']}/{s['available']}" for t, s in res["strata"].items())
        print(f"audit {res['package_id']}: {res['n']} items{note}, seed {args.seed}; by type: {strata}\n"
              f"send to reviewers: {p['html']} (open in a browser) or {p['csv']} (spreadsheet)\n"
              f"keep: {p['key']}")
    elif args.command == "pairwise-export":
        res = export_pairwise(args.a, args.b, _out_dir(args, "pairwise"), args.names, args.n, args.seed, args.force)
        p = res["paths"]
        print(f"pairwise {res['package_id']}: {res['n']} of {res['n_available']} items, seed {args.seed}; "
              f"a = {res['names'][0]}, b = {res['names'][1]}\n"
              f"send to reviewers: {p['html']} (open in a browser) or {p['csv']} (spreadsheet)\n"
              f"keep, DO NOT SEND: {p['key']} (un-blinds the answers; pairwise-import needs it)")
    elif args.command == "audit-import":
        key_path = _find_key(args, AUDIT)
        key = load_key(key_path, AUDIT) if key_path else None
        summary = summarize_audit(args.files, key, key_path, args.allow_incomplete)
        text = format_audit(summary)
        if key is None:
            text += "\n(no audit_key.json found: the files were checked against their own hashes; --key adds the source)"
        _emit(summary, args, text, "audit")
    elif args.command == "pairwise-import":
        key_path = _find_key(args, PAIRWISE)
        if key_path is None:
            raise DataError(f"no pairwise_key.json beside {args.files[0]}; pass --key EXPORT_DIR/pairwise_key.json")
        judge = args.judge_verdicts
        if judge is None and args.run_dir is not None and (args.run_dir / "judge" / "verdicts.jsonl").is_file():
            judge = args.run_dir / "judge" / "verdicts.jsonl"
        summary = summarize_pairwise(args.files, load_key(key_path, PAIRWISE), key_path, args.allow_incomplete,
                                     judge, args.judge_model_system, args.judge_reference, args.judge_test_set)
        _emit(summary, args, format_pairwise(summary), "pairwise")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        _run(args)
    except AlpacareError as e:
        print(f"{PROG}: " + str(e).replace("\n", " "), file=sys.stderr)
        return e.exit_code
    except OSError as e:  # permission denied, disk full: still one line
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
