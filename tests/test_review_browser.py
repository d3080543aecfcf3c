"""The review forms in a real headless Chromium: filled with mouse clicks, saved, imported.

Runs scripts/review_browser_check.py (DevTools protocol over a pipe; no selenium/playwright).
Skips when no Chromium binary is installed (Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, cli_env

SCRIPT = REPO / "scripts" / "review_browser_check.py"
sys.path.insert(0, str(SCRIPT.parent))
from review_browser_check import find_chromium  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.mark.skipif(find_chromium() is None, reason="no chromium binary found (apt-get install chromium, or set $CHROMIUM)")
def test_forms_in_headless_chromium(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "work"), "--screenshots",
                           str(tmp_path / "shots")], capture_output=True, text=True, cwd=REPO,
                          env=cli_env(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["audit"]["counts"] == {"correct": 3, "partially correct": 3, "incorrect": 3, "unsafe": 3}
    assert sum(report["pairwise"]["counts"].values()) == 9
    for kind in ("audit", "pairwise"):
        # the only thing the page ever loads is itself
        assert all(u.startswith("file:") for u in report[kind]["requests"])
        assert (tmp_path / "shots" / f"{kind}_filled.png").stat().st_size > 10_000
