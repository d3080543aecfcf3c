"""``alpacare-fetch``: download the AlpaCare release (alpacare/data/fetch.py) or, with
``alpacare-fetch benchmarks [--tasks T ...]``, the benchmark datasets
(alpacare/evaluation/benchmarks/data.py). Kept apart from both so that neither imports the other.

Usage: ``alpacare-fetch [--dest DIR] [--base-url URL] [--only PATTERN ...] [--list] [--quiet]``.
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
    line = f"{len(results)} files in {dest}: {counts['downloaded']} downloaded, {counts['present']} already present"
    if counts["unavailable"]:
        line += f", {counts['unavailable']} optional unavailable"
    return line


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["benchmarks"]:
        from alpacare.evaluation.benchmarks.data import main as fetch_benchmarks_main

        return fetch_benchmarks_main(argv[1:])
    args = _build_parser().parse_args(argv)
    if args.list:
        for released in select_files(None):
            print(f"{released.relpath}  {released.sha256}")
        return 0
    dest = Path(args.dest).expanduser() if args.dest else default_data_dir()
    try:
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
