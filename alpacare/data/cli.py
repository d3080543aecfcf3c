"""``alpacare-fetch``: download the AlpaCare release (alpacare/data/fetch.py); with
``alpacare-fetch benchmarks [--tasks T ...]``, the benchmark datasets
(alpacare/evaluation/benchmarks/data.py); with ``alpacare-fetch healthbench [--only SET ...]``,
HealthBench and the pinned simple-evals protocol files (alpacare/data/healthbench.py). Kept apart
from all three so that none imports the others.

Usage: ``alpacare-fetch [--dest DIR] [--base-url URL] [--only PATTERN ...] [--list] [--quiet]``;
``alpacare-fetch healthbench [--dest DIR] [--base-url URL] [--mirror URL] [--only SET ...] [--quiet]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from alpacare.data.fetch import (
    CACHE_DIR_ENV,
    DEFAULT_BASE_URL,
    UPSTREAM_COMMIT,
    UPSTREAM_REPO,
    FetchResult,
    default_data_dir,
    fetch_files,
    select_files,
)
from alpacare.errors import AlpacareError



def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alpacare-fetch",
        description=f"Download the AlpaCare data release ({UPSTREAM_REPO}@{UPSTREAM_COMMIT[:7]}), "
        "verified against pinned sha256 checksums.",
        epilog="Also: `alpacare-fetch benchmarks --help` (lm-eval benchmark data) and "
        "`alpacare-fetch healthbench --help` (HealthBench and simple-evals' protocol files).",
    )
    parser.add_argument("--dest", help="target data directory (default: <cache>/data, "
                        f"cache = ${CACHE_DIR_ENV} or ~/.cache/alpacare)")
    parser.add_argument("--base-url", default=DEFAULT_BASE_URL,
                        help="mirror laid out like the upstream repository (default: %(default)s)")
    parser.add_argument("--only", action="append", metavar="PATTERN",
                        help="fetch only files matching this relpath, folder or glob (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the released files and exit")
    parser.add_argument("--quiet", action="store_true", help="print only the summary")
    return parser


def _summary(results: Sequence[FetchResult], dest: Path) -> str:
    counts = {status: sum(r.status == status for r in results) for status in ("downloaded", "present", "unavailable")}
    # HealthBench data: a first download records the file's sha256; a hand-placed file gets one.
    counts["downloaded"] += sum(r.status == "first_download" for r in results)
    counts["present"] += sum(r.status == "recorded" for r in results)
    line = f"{len(results)} files in {dest}: {counts['downloaded']} downloaded, {counts['present']} already present"
    if counts["unavailable"]:
        line += f", {counts['unavailable']} optional unavailable"
    return line


def _healthbench_parser() -> argparse.ArgumentParser:
    from alpacare.data.healthbench import HEALTHBENCH_SETS, SIMPLE_EVALS_BASE_URL, SIMPLE_EVALS_COMMIT, SIMPLE_EVALS_REPO

    parser = argparse.ArgumentParser(
        prog="alpacare-fetch healthbench",
        description=f"Download HealthBench (the URLs in {SIMPLE_EVALS_REPO}@{SIMPLE_EVALS_COMMIT[:7]}'s healthbench_eval.py "
        "and healthbench_meta_eval.py, themselves pinned by sha256); each data file's sha256 is recorded at its first "
        "download and a later file that differs is refused.")
    parser.add_argument("--dest", help="target data directory (default: <cache>/data)")
    parser.add_argument("--base-url", default=SIMPLE_EVALS_BASE_URL,
                        help="mirror of the simple-evals repository at the pinned commit (default: %(default)s)")
    parser.add_argument("--mirror", help="host serving the data files under their upstream paths (default: the URLs as assigned)")
    parser.add_argument("--only", action="append", metavar="SET", choices=list(HEALTHBENCH_SETS),
                        help=f"fetch only this set (repeatable): {', '.join(HEALTHBENCH_SETS)}")
    parser.add_argument("--quiet", action="store_true", help="print only the summary")
    return parser


def _fetch_healthbench(argv: list[str]) -> tuple[list[FetchResult], Path]:
    from alpacare.data.healthbench import fetch_healthbench

    args = _healthbench_parser().parse_args(argv)
    dest = Path(args.dest).expanduser() if args.dest else default_data_dir()
    return fetch_healthbench(dest, args.only, args.base_url, args.mirror, progress=not args.quiet), dest


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["benchmarks"]:
        from alpacare.evaluation.benchmarks.data import main as fetch_benchmarks_main

        return fetch_benchmarks_main(argv[1:])
    healthbench = argv[:1] == ["healthbench"]
    args = None if healthbench else _build_parser().parse_args(argv)
    if args is not None and args.list:
        for released in select_files(None):
            print(f"{released.relpath}  {released.sha256}")
        return 0
    try:
        if healthbench:
            results, dest = _fetch_healthbench(argv[1:])
        else:
            dest = Path(args.dest).expanduser() if args.dest else default_data_dir()
            results = fetch_files(dest, args.base_url, args.only, progress=not args.quiet)
    except AlpacareError as e:
        print(f"alpacare-fetch: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # disk full, permission denied on --dest: still one line, no traceback
        print(f"alpacare-fetch: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("alpacare-fetch: interrupted", file=sys.stderr)
        return 130
    print(_summary(results, dest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
