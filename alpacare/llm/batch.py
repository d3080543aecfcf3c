"""OpenAI's Batch API for a stage's requests (``<role>.batch=true``): the same answers at
``<role>.batch_discount`` of the price (OpenAI: half), within 24 hours.

The requests are written as JSONL (one line per distinct request, ``custom_id`` = the request's
cache key, the body exactly what the live path sends), uploaded with ``files.create(purpose=
"batch")`` and run with ``batches.create(completion_window="24h")``. A batch holds at most
``<role>.batch_max_lines`` lines (OpenAI: 50,000) and 200 MB, and, when
``<role>.batch_max_enqueued_tokens`` is set, the batches of this role in flight together stay
under that many prompt tokens (OpenAI's per-model queue limit; a batch over it fails).

Nothing is paid twice. Every step is recorded in the stage's batch log (``<stage>/batches.jsonl``)
before the next: the uploaded file and the requests in it, then the batch id, then the batch's
closing once its results are in the stage's work log. A rerun (after kill -9, Ctrl-C or a reboot)
re-attaches to the batches the log shows open and submits only requests in none of them; a file
uploaded without a recorded batch is looked up in ``batches.list`` before a batch is created for it.

Results: output lines are joined by ``custom_id`` (OpenAI does not keep the input order) and go
through the same parsing, cache, ledger (billed at the discount) and ``on_result`` (the stage's
work log) as live answers. Lines in the error file, non-200 lines, and lines an ``expired`` or
``cancelled`` batch left undone are resubmitted: in the next batch, or live with
``<role>.batch_retry=live``; a 400 is final (as live), and a line is given up after
``<role>.max_retries`` resubmissions. A ``failed`` batch (validation) ends the run with one line
carrying the server's errors. The spend cap counts a submitted batch as possibly billed in full
(its worst case at the discount) until its results are in.

Ctrl-C while polling leaves the batches running and prints how to resume or cancel them
(``python -m alpacare.llm.batch cancel BATCH_ID``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import openai
from openai.types.chat import ChatCompletion
from tqdm.auto import tqdm

from alpacare.data.jsonl import AppendLog, deferred_fsync
from alpacare.errors import EndpointError, SpendCapReached

# The client (alpacare.llm.client.LLMClient), its Request and Completion are typed Any here:
# the client imports this module, and the layout test forbids the loop back.
LLMClient = Request = Completion = Any

log = logging.getLogger(__name__)

# OpenAI's limit on a batch input file (Batch API guide: "up to 200 MB"), kept with a margin
# for the multipart framing.
MAX_BATCH_BYTES = 200 * 1000 * 1000 - 64 * 1024
# Statuses after which a batch changes no more.
TERMINAL = ("completed", "expired", "cancelled", "failed")
ENDPOINT = "/v1/chat/completions"


@dataclass
class OpenBatch:
    batch_id: str
    file_id: str
    keys: list[str]
    tokens: int  # prompt tokens (estimate) it holds in the queue
    worst_usd: float  # what the cap counts until its results are in
    status: str = "validating"
    done: int = 0  # lines finished (completed + failed) as request_counts says


def plan_chunks(keys: list[str], line_bytes: dict[str, int], tokens: dict[str, int], max_lines: int,
                max_bytes: int, max_tokens: Optional[int]) -> Iterator[list[str]]:
    """Split ``keys`` into batches within the line, byte and (when set) token limits, in order.
    A single line over the token limit still gets a batch of its own (the server decides)."""
    chunk: list[str] = []
    size = toks = 0
    for key in keys:
        over = (len(chunk) + 1 > max_lines or size + line_bytes[key] > max_bytes
                or (max_tokens is not None and toks + tokens[key] > max_tokens))
        if chunk and over:
            yield chunk
            chunk, size, toks = [], 0, 0
        chunk.append(key)
        size += line_bytes[key]
        toks += tokens[key]
    if chunk:
        yield chunk


class BatchRunner:
    """Runs one ``LLMClient.run`` call's requests through the Batch API (see the module docstring)."""

    def __init__(self, client: LLMClient, log_path: Path):
        self.c = client
        self.cfg = client.cfg
        self.log_path = Path(log_path)
        self.api: Optional[openai.OpenAI] = None

    # -- the run ------------------------------------------------------------------------------

    def run(self, requests: list[Request], on_result: Callable[[Request, Optional[Completion], str], None],
            desc: str) -> None:
        c = self.c
        self.on_result = on_result
        self.waiting: dict[str, list[Request]] = {}
        for r in requests:
            self.waiting.setdefault(r.cache_key(c.name, c.model, c.endpoint), []).append(r)
        self.tokens = {k: c.prompt_tokens_typical(rs[0]) for k, rs in self.waiting.items()}
        self.worst = {k: c.worst_case_usd(rs[0]) * self.cfg.batch_discount for k, rs in self.waiting.items()}
        self.live: list[str] = []  # keys to retry live (batch_retry=live)
        self.unsupported: Optional[str] = None  # a request field the endpoint does not take
        self.api = openai.OpenAI(**{**c._client_kwargs, "max_retries": 3})
        with AppendLog(self.log_path) as self.journal:
            self.open = self._reattach()
            in_flight = {k for b in self.open.values() for k in b.keys}
            for key in [k for k in self.waiting if k not in in_flight]:
                hit = c._cache.get(key) if c._cache is not None else None
                if hit is not None:
                    c.ledger.add(c.model, hit)
                    self._deliver(key, hit, "")
            self.bar = tqdm(total=len(self.waiting), desc=f"{desc} (batch)", unit="req", dynamic_ncols=True)
            self.delivered = 0
            try:
                self._loop()
            except KeyboardInterrupt:
                self._interrupted()
                raise
            finally:
                self.bar.close()
                for b in self.open.values():
                    c._reserved_usd -= b.worst_usd
                self.api.close()

    def _loop(self) -> None:
        while True:
            self._submit()
            if not self.open:
                if self.live:
                    self._run_live()
                    continue
                blocked = [k for k in self.waiting]
                if blocked:  # nothing in flight and nothing more could be submitted: the cap
                    raise self._cap_reached(self.worst[blocked[0]])
                return
            before = len(self.open)
            for batch_id in list(self.open):
                self._poll(batch_id)
            self._progress()
            if self.live:
                self._run_live()
            if self.open and len(self.open) == before:  # nothing finished: wait before asking again
                time.sleep(self.cfg.batch_poll_s)

    # -- submitting ---------------------------------------------------------------------------

    def _submit(self) -> None:
        in_flight = {k for b in self.open.values() for k in b.keys}
        keys = [k for k in self.waiting if k not in in_flight and k not in self.live]
        if not keys:
            return
        lines = {k: self._line(k) for k in keys}
        enqueued = sum(b.tokens for b in self.open.values())
        limit = self.cfg.batch_max_enqueued_tokens
        room = None if limit is None else limit - enqueued
        if room is not None and room <= 0 and self.open:
            return  # the queue is full: wait for a batch to finish
        for chunk in plan_chunks(keys, {k: len(v) for k, v in lines.items()}, self.tokens, self.cfg.batch_max_lines,
                                 MAX_BATCH_BYTES, max(room, 1) if room is not None else None):
            chunk = self._within_cap(chunk)
            if not chunk:
                return
            self._create(chunk, b"".join(lines[k] for k in chunk))
            if limit is not None:
                return  # the next chunk waits for room in the queue

    def _line(self, key: str) -> bytes:
        body = self.c.request_body(self.waiting[key][0])
        return (json.dumps({"custom_id": key, "method": "POST", "url": ENDPOINT, "body": body},
                           ensure_ascii=False) + "\n").encode("utf-8")

    def _within_cap(self, chunk: list[str]) -> list[str]:
        """The longest prefix of ``chunk`` whose worst case fits under the spend cap."""
        c = self.c
        if c.max_cost_usd is None:
            return chunk
        spent = c.spent_before_usd + c.ledger.cost_usd_possibly_billed + c._reserved_usd
        fits = []
        for key in chunk:
            if spent + self.worst[key] > c.max_cost_usd:
                break
            spent += self.worst[key]
            fits.append(key)
        return fits

    def _cap_reached(self, worst: float) -> SpendCapReached:
        c = self.c
        spent = c.spent_before_usd + c.ledger.cost_usd_possibly_billed
        return SpendCapReached(
            f"{c.role}.max_cost_usd={c.max_cost_usd}: spent ${spent:.4f}; the next batch line could cost up to "
            f"${worst:.4f}, so the run stops here (work so far is saved; raise the cap and rerun to continue)")

    def _create(self, keys: list[str], data: bytes) -> None:
        assert self.api is not None
        f = self.api.files.create(file=("alpacare-batch.jsonl", data), purpose="batch")
        worst = sum(self.worst[k] for k in keys)
        tokens = sum(self.tokens[k] for k in keys)
        self.journal.append({"event": "file", "file_id": f.id, "time": time.time(), "lines": len(keys),
                             "prompt_tokens": tokens, "worst_usd": worst, "keys": keys})
        self._start(f.id, keys, tokens, worst)

    def _start(self, file_id: str, keys: list[str], tokens: int, worst: float, look_up: bool = False) -> None:
        """Create the batch for an uploaded file (``look_up``: or find the one a killed run created)
        and record it."""
        assert self.api is not None
        batch = self._find_batch(file_id) if look_up else None
        if batch is None:
            batch = self.api.batches.create(input_file_id=file_id, endpoint=ENDPOINT, completion_window="24h",
                                            metadata={"alpacare": f"{self.c.role} {self.c.name}"})
        self.journal.append({"event": "batch", "file_id": file_id, "batch_id": batch.id, "time": time.time()})
        self.c._reserved_usd += worst
        self.open[batch.id] = OpenBatch(batch.id, file_id, keys, tokens, worst, batch.status)
        log.info("%s: batch %s submitted (%d requests)", self.c.role, batch.id, len(keys))

    def _find_batch(self, file_id: str) -> Optional[Any]:
        assert self.api is not None
        for batch in self.api.batches.list(limit=100):
            if batch.input_file_id == file_id:
                return batch
        return None

    # -- re-attaching -------------------------------------------------------------------------

    def _reattach(self) -> dict[str, OpenBatch]:
        files, batch_of, closed = {}, {}, set()
        for r in self.journal.records:
            if r["event"] == "file":
                files[r["file_id"]] = r
            elif r["event"] == "batch":
                batch_of[r["file_id"]] = r["batch_id"]
            elif r["event"] == "closed":
                closed.add(r.get("batch_id") or r["file_id"])
        self.submissions: dict[str, int] = {}
        for f in files.values():
            for k in f["keys"]:
                self.submissions[k] = self.submissions.get(k, 0) + 1
        opened: dict[str, OpenBatch] = {}
        self.open = opened
        for file_id, f in files.items():
            batch_id = batch_of.get(file_id)
            if (batch_id or file_id) in closed:
                continue
            if batch_id is None:  # uploaded, then killed before the batch id was recorded
                if not any(k in self.waiting for k in f["keys"]):
                    self.journal.append({"event": "closed", "file_id": file_id, "batch_id": None,
                                         "status": "not submitted", "time": time.time()})
                    continue
                self._start(file_id, f["keys"], f["prompt_tokens"], f["worst_usd"], look_up=True)
            else:
                self.c._reserved_usd += f["worst_usd"]
                opened[batch_id] = OpenBatch(batch_id, file_id, f["keys"], f["prompt_tokens"], f["worst_usd"])
                log.info("%s: re-attached to batch %s (%d requests)", self.c.role, batch_id, len(f["keys"]))
        return opened

    # -- polling and joining ------------------------------------------------------------------

    def _poll(self, batch_id: str) -> None:
        assert self.api is not None
        b = self.open[batch_id]
        batch = self.api.batches.retrieve(batch_id)
        b.status = batch.status
        counts = batch.request_counts
        b.done = (counts.completed + counts.failed) if counts else 0
        if batch.status in TERMINAL:
            self._close(b, batch)

    def _close(self, b: OpenBatch, batch: Any) -> None:
        c = self.c
        if batch.status == "failed":
            errors = "; ".join(f"{e.code}: {e.message}" + (f" (line {e.line})" if e.line else "")
                               for e in (batch.errors.data if batch.errors and batch.errors.data else []))
            self.journal.append({"event": "closed", "batch_id": b.batch_id, "file_id": b.file_id, "status": "failed",
                                 "errors": errors, "time": time.time()})
            del self.open[b.batch_id]
            c._reserved_usd -= b.worst_usd
            hint = (f"; lower {c.role}.batch_max_enqueued_tokens" if "token_limit" in errors else "")
            raise EndpointError(f"{c.role} {c.name}: batch {b.batch_id} failed validation: {errors or 'no reason given'}"
                                f"{hint} (nothing was billed; rerun to submit again)")
        seen: set[str] = set()
        counts = {"output": 0, "errors": 0}
        self.to_cache: list[tuple[str, Any]] = []
        with deferred_fsync():  # synced before the closing line below
            for kind, file_id in (("output", batch.output_file_id), ("errors", batch.error_file_id)):
                if not file_id:
                    continue
                for line in self._download(file_id):
                    counts[kind] += 1
                    self._join(line, seen)
            missing = [k for k in b.keys if k not in seen]
            for key in missing:  # expired or cancelled before it ran
                self._failed(key, "not run", f"not run before the batch was {batch.status}", status=None)
        if c._cache is not None:
            c._cache.put_many(self.to_cache)
        self.journal.append({"event": "closed", "batch_id": b.batch_id, "file_id": b.file_id, "status": batch.status,
                             "output_lines": counts["output"], "error_lines": counts["errors"], "missing": len(missing),
                             "time": time.time()})
        del self.open[b.batch_id]
        c._reserved_usd -= b.worst_usd
        if self.unsupported:
            raise EndpointError(f"{c.role} {c.name}: {self.unsupported} (rejected lines are not billed)")

    def _download(self, file_id: str) -> Iterator[dict[str, Any]]:
        assert self.api is not None
        text = self.api.files.content(file_id).text
        for n, raw in enumerate(text.splitlines(), 1):
            if raw.strip():
                try:
                    yield json.loads(raw)
                except json.JSONDecodeError:
                    log.warning("%s: batch file %s line %d is not JSON; skipped", self.c.role, file_id, n)

    def _join(self, line: dict[str, Any], seen: set[str]) -> None:
        c = self.c
        key = line.get("custom_id")
        if not isinstance(key, str):
            return
        seen.add(key)
        response = line.get("response") or {}
        status = response.get("status_code")
        if status == 200:
            completion = c.completion_of(ChatCompletion.model_validate(response["body"]), self.cfg.batch_discount)
            if completion is None:
                self._failed(key, "empty choices", "no choices in the reply (a content filter?)", status=200)
                return
            self.to_cache.append((key, completion))  # paid: kept even when this run no longer wants it
            if key in self.waiting:  # else a killed run delivered it already (its work log counts it)
                c.ledger.add(c.model, completion)
                self._deliver(key, completion, "")
            return
        error = (response.get("body") or {}).get("error") or line.get("error") or {}
        if status == 400 and (problem := c.unsupported_field(error)) is not None:
            self.unsupported = problem  # every line alike: the stage stops once this batch is closed
            return
        message = " ".join(str(error.get("message") or error.get("code") or "no reason given").split())[:200]
        self._failed(key, str(status or error.get("code") or "error"), message, status=status)

    def _failed(self, key: str, reason: str, message: str, status: Optional[int]) -> None:
        c = self.c
        c.ledger.attempt_failed(f"batch {reason}")
        if key not in self.waiting:
            return
        if status == 400:  # the request itself is wrong: final, as in the live path
            c.ledger.failed_requests += 1
            self._deliver(key, None, f"rejected by server: {message}")
        elif self.cfg.batch_retry == "live":
            self.live.append(key)
        elif self.submissions.get(key, 0) > c.max_retries:
            c.ledger.failed_requests += 1
            self._deliver(key, None, f"batch: {message} (after {self.submissions[key]} submissions)")
        # else: it stays waiting and goes into the next batch

    def _deliver(self, key: str, completion: Optional[Completion], error: str) -> None:
        for request in self.waiting.pop(key, []):
            self.on_result(request, completion, error)
            if hasattr(self, "bar"):
                self.delivered += 1
                self.bar.update(1)

    def _run_live(self) -> None:
        keys, self.live = self.live, []
        first = {self.waiting[k][0].key: k for k in keys if k in self.waiting}
        requests = [self.waiting[k][0] for k in keys if k in self.waiting]
        log.info("%s: %d batch lines retried live (batch_retry=live)", self.c.role, len(requests))
        self.c.run_live(requests, lambda r, comp, err: self._deliver(first[r.key], comp, err), desc="batch retries (live)")

    def _progress(self) -> None:
        statuses: dict[str, int] = {}
        for b in self.open.values():
            statuses[b.status] = statuses.get(b.status, 0) + 1
        running = sum(b.done for b in self.open.values())
        self.bar.n = min(self.bar.total, self.delivered + running)
        self.bar.set_postfix(batches=", ".join(f"{n} {s}" for s, n in sorted(statuses.items())) or "none",
                             usd=f"{self.c.ledger.cost_usd:.4f}", refresh=False)
        self.bar.refresh()

    def _interrupted(self) -> None:
        ids = " ".join(self.open)
        if not ids:
            return
        where = f" --base-url {self.c.base_url}" if self.c.base_url else ""
        key_env = f" --api-key-env {self.cfg.api_key_env}" if self.cfg.api_key_env else ""
        print(f"alpacare: batch(es) {ids} keep running at the server (recorded in {self.log_path}). "
              f"Rerun the same command (same hydra.run.dir) to re-attach and collect the results, "
              f"or cancel them: python -m alpacare.llm.batch cancel {ids}{where}{key_env}", file=sys.stderr)


def _cancel_main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(prog="python -m alpacare.llm.batch",
                                description="Cancel Batch API batches that an interrupted alpacare run left running.")
    sub = p.add_subparsers(dest="command", required=True)
    cancel = sub.add_parser("cancel")
    cancel.add_argument("batch_ids", nargs="+")
    cancel.add_argument("--base-url", default=None, help="the endpoint (default: OpenAI, or $OPENAI_BASE_URL)")
    cancel.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the key")
    args = p.parse_args(argv)
    client = openai.OpenAI(base_url=args.base_url, api_key=os.environ.get(args.api_key_env) or "not-needed")
    for batch_id in args.batch_ids:
        try:
            batch = client.batches.cancel(batch_id)
        except openai.APIError as e:
            print(f"{batch_id}: {' '.join(str(e).split())[:200]}", file=sys.stderr)
            sys.exit(2)
        print(f"{batch_id}: {batch.status} (a rerun collects what it finished)")


if __name__ == "__main__":
    _cancel_main()
