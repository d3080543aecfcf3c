#!/usr/bin/env python3
"""Open the alpacare-review HTML forms in headless Chromium, fill them like a reviewer, save, import.

    python scripts/review_browser_check.py [--out DIR] [--chromium PATH] [--screenshots DIR]

For an audit package and a pairwise package (built from small synthetic data in DIR), it:
1. loads the form from file:// and records every network request the page makes (must be none
   beyond the file itself: the form works offline);
2. types a reviewer name and clicks a verdict for every item with real mouse events, types a few
   comments, checks the progress counter;
3. reloads the page and checks that the answers came back from localStorage (autosave);
4. takes screenshots (top of the form, a filled item) when --screenshots is given;
5. clicks "Save answers", waits for the browser's download, and imports the downloaded file with
   ``python -m alpacare.review ... --json``; the imported counts must equal what was clicked.

It talks to Chromium over the DevTools protocol on a pipe (``--remote-debugging-pipe``: fd 3 in,
fd 4 out, messages separated by NUL bytes), so it needs no websocket library and no
selenium/playwright. Exit code 0 and a JSON report on stdout when everything matched; 1 with a
message otherwise; 77 when no Chromium binary is found.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
AUDIT_CYCLE = ("correct", "partially correct", "incorrect", "unsafe")
PAIRWISE_CYCLE = ("A", "B", "tie")


def find_chromium(explicit: Optional[str] = None) -> Optional[str]:
    if explicit:
        return explicit if Path(explicit).exists() or shutil.which(explicit) else None
    env = os.environ.get("CHROMIUM")
    if env and (Path(env).exists() or shutil.which(env)):
        return env
    return next((p for p in map(shutil.which, CANDIDATES) if p), None)


class CDP:
    """A minimal DevTools-protocol client over Chromium's --remote-debugging-pipe."""

    def __init__(self, chromium: str, profile: Path):
        cmd_r, self._cmd_w = os.pipe()
        self._evt_r, evt_w = os.pipe()

        def child_fds() -> None:  # move the pipe ends to fds 3 (commands in) and 4 (replies out)
            a = fcntl.fcntl(cmd_r, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(evt_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        args = [chromium, "--headless", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--mute-audio",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--hide-scrollbars", f"--user-data-dir={profile}", "about:blank"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, preexec_fn=child_fds, pass_fds=(3, 4))
        os.close(cmd_r)
        os.close(evt_w)
        self._id = 0
        self._replies: dict[int, dict[str, Any]] = {}
        self._events: "queue.Queue[dict[str, Any]]" = queue.Queue()
        self._cond = threading.Condition()
        self.seen_events: list[dict[str, Any]] = []
        threading.Thread(target=self._reader, daemon=True).start()
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()  # drain its log

    def _reader(self) -> None:
        buf = b""
        with os.fdopen(self._evt_r, "rb", buffering=0) as f:
            while True:
                chunk = f.read(65536)
                if not chunk:
                    break
                buf += chunk
                while b"\0" in buf:
                    raw, buf = buf.split(b"\0", 1)
                    msg = json.loads(raw)
                    if "id" in msg:
                        with self._cond:
                            self._replies[msg["id"]] = msg
                            self._cond.notify_all()
                    else:
                        self.seen_events.append(msg)
                        self._events.put(msg)

    def send(self, method: str, params: Optional[dict] = None, session: Optional[str] = None,
             timeout: float = 30) -> dict[str, Any]:
        self._id += 1
        msg_id = self._id
        msg = {"id": msg_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._cond:
            while msg_id not in self._replies:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise RuntimeError(f"no reply to {method} (chromium exit code {self.proc.poll()})")
                self._cond.wait(left)
            reply = self._replies.pop(msg_id)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def wait_event(self, method: str, timeout: float = 30, where=lambda p: True) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"timed out waiting for {method}")
            try:
                ev = self._events.get(timeout=left)
            except queue.Empty:
                continue
            if ev.get("method") == method and where(ev.get("params", {})):
                return ev["params"]

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._cmd_w)


class Page:
    def __init__(self, cdp: CDP, width: int = 1280, height: int = 900):
        self.cdp = cdp
        target = cdp.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = cdp.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Network"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    def call(self, method: str, params: Optional[dict] = None, timeout: float = 30) -> dict[str, Any]:
        return self.cdp.send(method, params, self.session, timeout)

    def js(self, expression: str) -> Any:
        res = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in res:
            raise RuntimeError(f"page error in {expression[:60]!r}: {res['exceptionDetails'].get('text')} "
                               f"{res['exceptionDetails'].get('exception', {}).get('description', '')}")
        return res["result"].get("value")

    def load(self, url: str, reload: bool = False) -> None:
        if reload:
            self.call("Page.reload", {"ignoreCache": True})
        else:
            self.call("Page.navigate", {"url": url})
        self.cdp.wait_event("Page.loadEventFired", where=lambda p: True)
        self.js("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")

    def click(self, selector: str) -> None:
        """Scroll the element into view and click its centre with real mouse events."""
        box = self.js(f"""(() => {{ const e = document.querySelector({json.dumps(selector)});
            if (!e) return null; e.scrollIntoView({{block: 'center'}});
            const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; }})()""")
        if box is None:
            raise RuntimeError(f"no element {selector}")
        x, y = box
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left",
                                                   "clickCount": 0 if kind == "mouseMoved" else 1})

    def type_into(self, selector: str, text: str) -> None:
        self.click(selector)
        self.call("Input.insertText", {"text": text})

    def screenshot(self, path: Path, selector: Optional[str] = None) -> None:
        params: dict[str, Any] = {"format": "png"}
        if selector:
            self.js(f"document.querySelector({json.dumps(selector)}).scrollIntoView({{block: 'start'}})")
            self.js("new Promise(r => setTimeout(r, 100))")
        data = self.call("Page.captureScreenshot", params)["data"]
        path.write_bytes(base64.b64decode(data))


def review_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "alpacare.review", *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=120)


def build_packages(work: Path) -> dict[str, Path]:
    """A 12-item audit and a 9-item pairwise package, with text that would break naive HTML."""
    types = ["Open Q&A", "Rewrite", "Summarization", "Classification", None]
    records = []
    for i in range(30):
        r = {"instruction": f"Case {i}: a 54-year-old with chest pain <b>radiating</b> to the jaw & sweating. "
                            f"What is the most likely diagnosis?",
             "input": ("BP 150/95, HR 104, ECG: ST elevation in II, III, aVF." if i % 3 == 0 else "<noinput>"),
             "output": (f"Most likely an acute inferior myocardial infarction (case {i}).\n\n"
                        "- Give aspirin 300 mg chewed\n- Call for urgent reperfusion (PCI)\n"
                        "</script><script>alert('x')</script>")}
        if types[i % 5]:
            r["type"] = types[i % 5]
        records.append(r)
    data = work / "data.json"
    data.write_text(json.dumps(records), encoding="utf-8")
    a = work / "model_x" / "predictions.jsonl"
    b = work / "model_y" / "predictions.jsonl"
    a.parent.mkdir(parents=True, exist_ok=True)
    b.parent.mkdir(parents=True, exist_ok=True)
    a.write_text("".join(json.dumps({"instruction": r["instruction"], "input": "", "output": "First system: " + r["output"]}) + "\n"
                         for r in records[:9]), encoding="utf-8")
    b.write_text("".join(json.dumps({"instruction": r["instruction"], "input": "", "output": "Second system, longer:\n" + r["output"] * 2}) + "\n"
                         for r in records[:9]), encoding="utf-8")
    for proc in (review_cli("audit-export", "--data", str(data), "--n", "12", "--seed", "4", "--out", str(work / "audit")),
                 review_cli("pairwise-export", "--a", str(a), "--b", str(b), "--seed", "4", "--out", str(work / "pairwise"))):
        if proc.returncode != 0:
            raise RuntimeError(f"export failed: {proc.stderr.strip()}")
    return {"audit": work / "audit" / "audit.html", "pairwise": work / "pairwise" / "pairwise.html"}


def check_form(cdp: CDP, kind: str, html: Path, downloads: Path, shots: Optional[Path]) -> dict[str, Any]:
    cycle = AUDIT_CYCLE if kind == "audit" else PAIRWISE_CYCLE
    page = Page(cdp)
    cdp.send("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads),
                                             "eventsEnabled": True})
    url = html.resolve().as_uri()
    first_event = len(cdp.seen_events)
    page.load(url)
    n = page.js("JSON.parse(document.getElementById('package-data').textContent).n_items")
    if shots:
        page.screenshot(shots / f"{kind}_empty.png")
    page.click("#save")  # no name yet: nothing is saved, the name field is flagged
    warning = page.js("document.getElementById('status').textContent")
    if "enter your name" not in warning:
        raise RuntimeError(f"{kind}: saving without a name showed {warning!r}")
    page.type_into("#reviewer", f"Dr Headless {kind}")
    expected: dict[int, str] = {}
    for item_id in range(1, n + 1):
        verdict = cycle[item_id % len(cycle)]
        index = (AUDIT_CYCLE if kind == "audit" else ("A", "tie", "B")).index(verdict)  # the form's button order
        page.click(f"#v-{item_id}-{index} + span")
        expected[item_id] = verdict
        if verdict in ("incorrect", "unsafe") or (kind == "pairwise" and item_id == 2):
            page.type_into(f"#c-{item_id}", f"comment on item {item_id}: \"quoted\", <tag> & more")
    progress = page.js("document.getElementById('progress-text').textContent")
    if progress != f"{n} of {n} rated":
        raise RuntimeError(f"{kind}: progress reads {progress!r} after rating all {n} items")
    if shots:
        page.screenshot(shots / f"{kind}_filled.png", "#item-2")
        page.call("Emulation.setDeviceMetricsOverride", {"width": 760, "height": 1000, "deviceScaleFactor": 1,
                                                         "mobile": False})
        page.screenshot(shots / f"{kind}_narrow.png", "#item-2")
        page.call("Emulation.setDeviceMetricsOverride", {"width": 1280, "height": 900, "deviceScaleFactor": 1,
                                                         "mobile": False})
    # autosave: a reload restores every answer and the name from localStorage
    page.load(url, reload=True)
    restored = page.js("[document.querySelectorAll('input[type=radio]:checked').length, "
                       "document.getElementById('reviewer').value, document.getElementById('progress-text').textContent]")
    if restored != [n, f"Dr Headless {kind}", f"{n} of {n} rated"]:
        raise RuntimeError(f"{kind}: after reload the form shows {restored}, expected all {n} answers restored")
    page.click("#save")
    begin = cdp.wait_event("Browser.downloadWillBegin")
    cdp.wait_event("Browser.downloadProgress", where=lambda p: p.get("guid") == begin["guid"] and p.get("state") == "completed")
    saved = downloads / begin["suggestedFilename"]
    for _ in range(50):
        if saved.is_file() and saved.stat().st_size:
            break
        time.sleep(0.1)
    status = page.js("document.getElementById('status').textContent")
    requests = [e["params"]["request"]["url"] for e in cdp.seen_events[first_event:]
                if e.get("method") == "Network.requestWillBeSent"]
    external = [u for u in requests if not u.startswith(("file:", "data:", "blob:", "about:"))]
    if external:
        raise RuntimeError(f"{kind}: the form made network requests: {external}")
    # import what the browser saved
    imported = review_cli(f"{kind}-import", str(saved), "--key", str(html.parent), "--json")
    if imported.returncode != 0:
        raise RuntimeError(f"{kind}: import of {saved} failed: {imported.stderr.strip()}")
    summary = json.loads(imported.stdout)
    key = json.loads((html.parent / f"{kind}_key.json").read_text())
    if kind == "audit":
        got = {v: summary[v.replace(" ", "_")]["k"] for v in AUDIT_CYCLE}
        want = {v: list(expected.values()).count(v) for v in AUDIT_CYCLE}
        comments = sum(len(f["verdicts"][0]["comment"]) > 0 for f in summary["flagged"])
        want_comments = want["incorrect"] + want["unsafe"]
    else:
        winners = [("tie" if v == "tie" else key["items"][i - 1][v]) for i, v in expected.items()]
        want = {"wins_a": winners.count("a"), "wins_b": winners.count("b"), "ties": winners.count("tie")}
        got = {k: summary[k] for k in want}
        comments = sum(bool(it["comments"]) for it in summary["items"])
        want_comments = 1
    if got != want or comments != want_comments or summary["n"] != n:
        raise RuntimeError(f"{kind}: imported {got} (comments {comments}), clicked {want} (comments {want_comments})")
    reviewer = next(iter(summary["reviewers"]))
    if reviewer != f"Dr Headless {kind}":
        raise RuntimeError(f"{kind}: reviewer imported as {reviewer!r}")
    return {"items": n, "saved_file": str(saved), "counts": got, "status": status, "requests": requests,
            "reviewer": reviewer}


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="work directory (default: a temporary one)")
    ap.add_argument("--chromium", help="browser binary (default: $CHROMIUM, then chromium/chrome on PATH)")
    ap.add_argument("--screenshots", type=Path, help="write PNG screenshots of both forms here")
    args = ap.parse_args(argv)
    chromium = find_chromium(args.chromium)
    if not chromium:
        print("review_browser_check: no chromium binary found (apt-get install chromium, or set $CHROMIUM)",
              file=sys.stderr)
        return 77
    with tempfile.TemporaryDirectory(prefix="alpacare-review-browser-") as tmp:
        work = args.out or Path(tmp) / "work"
        work.mkdir(parents=True, exist_ok=True)
        if args.screenshots:
            args.screenshots.mkdir(parents=True, exist_ok=True)
        report: dict[str, Any] = {"chromium": chromium}
        cdp = CDP(chromium, Path(tmp) / "profile")
        try:
            report["version"] = cdp.send("Browser.getVersion")["product"]
            forms = build_packages(work)
            for kind, html in forms.items():
                downloads = work / f"downloads_{kind}"
                downloads.mkdir(exist_ok=True)
                report[kind] = check_form(cdp, kind, html, downloads, args.screenshots)
        except RuntimeError as e:
            print(f"review_browser_check: {e}", file=sys.stderr)
            return 1
        finally:
            cdp.close()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
