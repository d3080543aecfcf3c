"""A small OpenAI-compatible chat server on 127.0.0.1 for tests.

It speaks the real wire protocol (the real ``openai`` client talks to it over HTTP) and answers
deterministically: a request with a JSON-schema ``response_format`` gets a batch of well-formed
tasks (numbered so batches never repeat), any other request gets an answer that echoes the task.
Tests can make it fail the first N requests with a status code, slow down each answer, demand an
API key, and inspect what it received. Bounded: it serves until the fixture shuts it down.

Fault mode (``fault_rate=0.3``): each attempt fails with that probability, decided by a seeded
hash of the request body and its attempt number (so the same attempts fail whatever the order of
concurrent requests), with one of ``FAULTS`` (the first seven faults take each kind in turn). The server keeps its own books: replies delivered
(with their usage) and completions it finished but whose reply the client never got (a reply
after the client's timeout, a body cut short), which a real API would still bill.

Rate limits (``rpm=600, rpm_burst=20``, and/or ``tpm``/``tpm_burst``): token buckets as OpenAI
applies them (tokens = prompt + max_tokens, at admission); a request over the limit gets a 429,
and every reply carries OpenAI's ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``
headers (``ratelimit_headers=False`` leaves them out). ``delay_s=(1, 3)`` draws each reply's
latency uniformly from that range.

Batch API (files and batches endpoints, as OpenAI's): an uploaded JSONL of chat requests is
validated, then runs for ``batch_run_s`` (request counts grow as it goes), finalizes, and
completes with its output lines in shuffled order. Knobs: ``batch_error_every`` (every Nth line
of a batch goes to the error file as a 500), ``batch_expire`` (batch numbers that expire with the
first half of their output), ``batch_enqueued_token_limit`` (a batch whose prompt tokens, with
those of unfinished batches, pass it fails validation with ``token_limit_exceeded``, as OpenAI's
queue limit), and a malformed input line fails validation with the line named.
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import itertools
import json
import math
import random
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional

TYPES = ["Open Q&A", "Text Generation", "Chat", "Rewrite", "Summarization", "Classification",
         "USMLE-style Q&A", "Multiple-choice Q&A", "Single-hop Reasoning", "Multi-hop Reasoning"]
VIEWS = ["Medical Student", "Patient", "Clinician", "Nurse", "Pharmacist", "Researcher"]
TOPICS = ["cardiology", "nephrology", "oncology", "dermatology", "pediatrics", "neurology",
          "endocrinology", "pharmacology", "infectious disease", "hematology", "psychiatry", "genetics"]
WORDS = ("aspirin warfarin insulin sepsis asthma anemia gout lupus migraine stroke angina eczema "
         "psoriasis hepatitis cirrhosis pancreatitis appendicitis glaucoma cataract otitis tinnitus").split()


@dataclass
class ServerState:
    fail_first: int = 0
    fail_status: int = 500
    fail_kind: Optional[str] = None  # the first fail_first attempts get this fault from FAULTS instead
    delay_s: Any = 0.0  # seconds per reply, or (low, high) drawn uniformly per reply
    required_key: Optional[str] = None
    bad_json_every: int = 0  # every Nth task batch is cut off mid-JSON (a truncated response)
    open_types: bool = False  # every third task has a type outside the paper's ten
    fault_rate: float = 0.0
    fault_seed: int = 0
    # Usage's prompt_tokens as ~4 characters per token of the messages (else a flat 100).
    count_prompt_tokens: bool = False
    late_reply_s: float = 2.0  # the "late" fault answers after this long (more than the client's timeout)
    attempts: dict[str, int] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)
    # The server's own books: 200 replies delivered, and completions finished but never delivered.
    delivered: dict[str, int] = field(default_factory=lambda: {"replies": 0, "prompt_tokens": 0, "completion_tokens": 0})
    undelivered: dict[str, int] = field(default_factory=lambda: {"replies": 0, "prompt_tokens": 0, "completion_tokens": 0})
    # Replaces the default answer to a non-task request: reply(request body) -> text (a test judge).
    reply: Optional[Callable[[dict[str, Any]], str]] = None
    # Replaces the built-in task n (a benchmark's realistic instructions): task(n) -> task dict.
    task: Optional[Callable[[int], dict[str, Any]]] = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    # False: chat requests are counted (``received``) but not kept (a benchmark's tens of thousands).
    keep_requests: bool = True
    received: int = 0
    auth_headers: list[str] = field(default_factory=list)
    served: int = 0
    counter: itertools.count = field(default_factory=itertools.count)
    # Reentrant: a batch's output is written under it, and answering takes it too.
    lock: threading.RLock = field(default_factory=threading.RLock)
    ids: itertools.count = field(default_factory=itertools.count)
    # Rate limits (None = unlimited) and what they did.
    rpm: Optional[float] = None
    rpm_burst: Optional[float] = None  # None = a minute's worth, as OpenAI's reset times imply
    tpm: Optional[float] = None
    tpm_burst: Optional[float] = None
    ratelimit_headers: bool = True
    rate_limited: int = 0  # 429 replies sent by the limiter
    admitted_times: list[float] = field(default_factory=list)
    buckets: dict[str, list[float]] = field(default_factory=dict)  # kind -> [level, last refill time]
    # Batch API.
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    batch_validate_s: float = 0.05
    batch_run_s: float = 0.3
    batch_finalize_s: float = 0.05
    batch_error_every: int = 0
    batch_expire: tuple[int, ...] = ()
    batch_enqueued_token_limit: Optional[int] = None
    batch_lines_received: int = 0  # every input line of every batch created
    seed: int = 0
    # A reasoning-era OpenAI model (gpt-5 family): a request with max_tokens, or a non-default
    # temperature / top_p, gets the 400 OpenAI sends for it; counted in rejected_params.
    new_model: bool = False
    rejected_params: list[str] = field(default_factory=list)


OPEN_TYPES = ["Case report", "Translation", "Patient letter"]


def _task(n: int, open_types: bool = False) -> dict[str, Any]:
    # Distinct words per n keep tasks far apart under ROUGE-L.
    a, b, c = WORDS[n % len(WORDS)], WORDS[(n * 7 + 3) % len(WORDS)], TOPICS[n % len(TOPICS)]
    return {
        "type": OPEN_TYPES[n // 3 % 3] if open_types and n % 3 == 0 else TYPES[n % len(TYPES)],
        "topic": c,
        "view": VIEWS[n % len(VIEWS)],
        "difficulty": n % 5 + 1,
        "instruction": f"Task {n}: explain how {a} relates to {b} in {c} case number {n}.",
        "input": "<noinput>" if n % 2 else f"A patient, case {n}, presents with {a} and {b}.",
    }


def _batch(state: ServerState, n_tasks: int) -> str:
    with state.lock:
        start = next(state.counter) * n_tasks
        batch_no = start // max(n_tasks, 1)
    make = state.task or (lambda n: _task(n, state.open_types))
    text = json.dumps({"tasks": [make(start + k) for k in range(n_tasks)]})
    if state.bad_json_every and (batch_no + 1) % state.bad_json_every == 0:
        text = text[: len(text) // 2]
    return text


def _free_text_batch(state: ServerState, n_tasks: int, first: int = 1) -> str:
    """The paper's format, as a teacher continues the prompt's list after "N. Type:": the first
    task's type, then its other lines, then "###" and "N+1. Type: ..." for each further task."""
    tasks = json.loads(_batch(state, n_tasks))["tasks"]
    blocks = ["\n".join([f"{first + i}. Type: {t['type']}"] + [f"{k.capitalize()}: {v}" for k, v in t.items() if k != "type"])
              for i, t in enumerate(tasks)]
    return "\n###\n".join(blocks).split("Type: ", 1)[1]


def _n_tasks(body: dict[str, Any]) -> Optional[int]:
    """How many tasks a structured request asks for (None for an answer request)."""
    fmt = body.get("response_format") or {}
    if not (fmt.get("schema") or (fmt.get("json_schema") or {}).get("schema")):
        return None
    asked = re.search(r"write (\d+) new", body["messages"][-1]["content"])
    return int(asked.group(1)) if asked else 1


FAULTS = ("429", "500", "503", "late", "cut", "empty", "length")


def _fault(state: ServerState, body: dict[str, Any]) -> Optional[str]:
    if not state.fault_rate:
        return None
    key = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    with state.lock:
        n = state.attempts[key] = state.attempts.get(key, 0) + 1
    r = random.Random(f"{state.fault_seed}:{key}:{n}").random()
    if r >= state.fault_rate:
        return None
    with state.lock:
        # The first faults take every kind in turn (so a short run sees them all), later ones at random.
        done = sum(state.faults.values())
        kind = FAULTS[done] if done < len(FAULTS) else FAULTS[int(r / state.fault_rate * len(FAULTS))]
        state.faults[kind] = state.faults.get(kind, 0) + 1
    return kind


def _usage(state: ServerState, body: dict[str, Any], text: str) -> dict[str, int]:
    prompt = sum(len(m["content"]) for m in body["messages"]) // 4 + 4 if state.count_prompt_tokens else 100
    completion = max(1, len(text) // 4)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _book(state: ServerState, books: str, usage: dict[str, int]) -> None:
    with state.lock:
        entry = getattr(state, books)
        entry["replies"] += 1
        entry["prompt_tokens"] += usage["prompt_tokens"]
        entry["completion_tokens"] += usage["completion_tokens"]


def _delay(state: ServerState) -> float:
    if isinstance(state.delay_s, (tuple, list)):
        low, high = state.delay_s
        return random.uniform(low, high)
    return float(state.delay_s or 0.0)


def _limits(state: ServerState) -> dict[str, tuple[float, float]]:
    limits = {}
    if state.rpm:
        limits["requests"] = (state.rpm, state.rpm_burst or state.rpm)
    if state.tpm:
        limits["tokens"] = (state.tpm, state.tpm_burst or state.tpm)
    return limits


def _reset(seconds: float) -> str:
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else f"{seconds:.3f}s"


def _admit(state: ServerState, body: dict[str, Any]) -> tuple[bool, dict[str, str]]:
    """OpenAI's limiter: take one request and prompt + max_tokens tokens from the buckets, or refuse."""
    limits = _limits(state)
    if not limits:
        return True, {}
    cost = {"requests": 1.0,
            "tokens": float(sum(len(m["content"]) for m in body["messages"]) // 4 + 4 + (body.get("max_tokens") or body.get("max_completion_tokens") or 0))}
    with state.lock:
        now = time.monotonic()
        for kind, (per_minute, burst) in limits.items():
            level, last = state.buckets.setdefault(kind, [burst, now])
            state.buckets[kind] = [min(burst, level + (now - last) * per_minute / 60.0), now]
        admitted = all(state.buckets[k][0] >= min(cost[k], burst) for k, (_, burst) in limits.items())
        if admitted:
            for kind in limits:
                state.buckets[kind][0] -= cost[kind]
            state.admitted_times.append(now)
        else:
            state.rate_limited += 1
        headers = {}
        for kind, (per_minute, burst) in limits.items():
            level = state.buckets[kind][0]
            headers[f"x-ratelimit-limit-{kind}"] = str(int(per_minute))
            headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, math.floor(level)))
            headers[f"x-ratelimit-reset-{kind}"] = _reset(max(0.0, burst - level) / (per_minute / 60.0))
    return admitted, headers if state.ratelimit_headers else {}


class _Handler(BaseHTTPRequestHandler):
    state: ServerState

    def log_message(self, *args: Any) -> None:  # keep pytest output clean
        pass

    def _send(self, status: int, payload: dict[str, Any], headers: Optional[dict[str, str]] = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        header = self.headers.get("Authorization", "")
        self.state.auth_headers.append(header)
        if self.state.required_key and header != f"Bearer {self.state.required_key}":
            self._send(401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}})
            return False
        return True

    def do_GET(self) -> None:
        path = self.path.split("?")[0].rstrip("/")
        if not self._authorized():
            return
        if path.endswith("/models"):
            self._send(200, {"object": "list", "data": [{"id": "test-teacher", "object": "model"}]})
        elif m := re.search(r"/files/([\w-]+)/content$", path):
            f = self.state.files.get(m.group(1))
            if f is None:
                self._send(404, {"error": {"message": f"no file {m.group(1)}"}})
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(f["data"])))
            self.end_headers()
            self.wfile.write(f["data"])
        elif m := re.search(r"/batches/([\w-]+)$", path):
            batch = _batch_status(self.state, m.group(1))
            self._send(200, batch) if batch else self._send(404, {"error": {"message": f"no batch {m.group(1)}"}})
        elif path.endswith("/batches"):
            with self.state.lock:
                ids = list(self.state.batches)[::-1]  # newest first, as OpenAI lists them
            self._send(200, {"object": "list", "data": [_batch_status(self.state, i) for i in ids], "has_more": False})
        else:
            self._send(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if not self._authorized():
            return
        path = self.path.split("?")[0].rstrip("/")
        if path.endswith("/files"):
            self._send(200, _upload(self.state, self.headers.get("Content-Type", ""), raw))
            return
        if path.endswith("/batches"):
            status, payload = _create_batch(self.state, json.loads(raw))
            self._send(status, payload)
            return
        if m := re.search(r"/batches/([\w-]+)/cancel$", path):
            with self.state.lock:
                batch = self.state.batches.get(m.group(1))
                if batch is not None and batch.get("cancel_at") is None:
                    batch["cancel_at"] = time.monotonic()
            self._send(200, _batch_status(self.state, m.group(1))) if batch else self._send(404, {"error": {"message": "no batch"}})
            return
        body = json.loads(raw)
        state = self.state
        with state.lock:
            state.received += 1
            if state.keep_requests:
                state.requests.append(body)
            failing = state.received <= state.fail_first
        if state.new_model and (error := _new_model_error(body)) is not None:
            with state.lock:
                state.rejected_params.append(error["param"])
            self._send(400, {"error": error})
            return
        if failing and state.fail_kind is None:
            self._send(state.fail_status, {"error": {"message": "injected failure", "type": "server_error"}})
            return
        admitted, limit_headers = _admit(state, body)
        if not admitted:
            self._send(429, {"error": {"message": "Rate limit reached for requests", "type": "requests",
                                       "code": "rate_limit_exceeded"}}, headers=limit_headers)
            return
        fault = state.fail_kind if failing else _fault(state, body)
        if fault in ("429", "500", "503"):
            self._send(int(fault), {"error": {"message": f"injected {fault}", "type": "server_error"}},
                       headers={"Retry-After": "0.2"} if fault == "429" else None)
            return
        delay = _delay(state)
        if delay:
            time.sleep(delay)
        payload = _completion(state, body, fault)
        usage = payload["usage"]
        if fault in ("late", "cut"):  # finished, but the client never gets the reply
            _book(state, "undelivered", usage)
            if fault == "late":
                time.sleep(state.late_reply_s)
                try:
                    self._send(200, payload)
                except OSError:
                    pass
            else:
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
            return
        _book(state, "delivered", usage)
        with state.lock:
            state.served += 1
        self._send(200, payload, headers=limit_headers)


def _new_model_error(body: dict[str, Any]) -> Optional[dict[str, Any]]:
    """OpenAI's 400 error object for a field a gpt-5-family model does not take (as the API sends it)."""
    if "max_tokens" in body:
        return {"message": "Unsupported parameter: 'max_tokens' is not supported with this model. "
                           "Use 'max_completion_tokens' instead.",
                "type": "invalid_request_error", "param": "max_tokens", "code": "unsupported_parameter"}
    for param in ("temperature", "top_p"):
        if param in body and body[param] != 1:
            return {"message": f"Unsupported value: '{param}' does not support {body[param]} with this model. "
                               "Only the default (1) value is supported.",
                    "type": "invalid_request_error", "param": param, "code": "unsupported_value"}
    return None


def _completion(state: ServerState, body: dict[str, Any], fault: Optional[str] = None) -> dict[str, Any]:
    """The chat.completion object answering ``body`` (live or as a batch line)."""
    n_tasks = _n_tasks(body)
    free_text = re.search(r"Write (\d+) new tasks by continuing the numbered list below \(tasks (\d+) to",
                          body["messages"][-1]["content"])
    if n_tasks is not None:
        text = _batch(state, n_tasks)
    elif free_text:
        text = _free_text_batch(state, int(free_text.group(1)), first=int(free_text.group(2)))
    elif state.reply is not None:
        text = state.reply(body)
    else:
        prompt = body["messages"][-1]["content"]
        text = f"Answer: {prompt.splitlines()[0][:120]} The key points are assessment, diagnosis and management."
    finish_reason = "stop"
    if fault == "length":  # cut at max_tokens
        text, finish_reason = text[: len(text) // 2], "length"
    usage = _usage(state, body, text)
    payload = {
        "id": f"chatcmpl-{next(state.ids)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "test-teacher"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}],
        "usage": usage,
    }
    if fault == "empty":  # a content filter's reply: no choices, the prompt still counted
        payload["choices"] = []
        payload["usage"] = {**usage, "completion_tokens": 0, "total_tokens": usage["prompt_tokens"]}
    return payload


# -- the Batch API ------------------------------------------------------------------------------


def _upload(state: ServerState, content_type: str, raw: bytes) -> dict[str, Any]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw)
    fields = {part.get_param("name", header="content-disposition"): part for part in message.iter_parts()}
    data = fields["file"].get_payload(decode=True)
    purpose = fields["purpose"].get_payload(decode=True).decode()
    return _store_file(state, data, fields["file"].get_filename() or "upload.jsonl", purpose)


def _store_file(state: ServerState, data: bytes, filename: str, purpose: str) -> dict[str, Any]:
    with state.lock:
        file_id = f"file-{len(state.files) + 1}"
        obj = {"id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()),
               "filename": filename, "purpose": purpose, "status": "processed"}
        state.files[file_id] = {**obj, "data": data}
    return obj


def _validate(state: ServerState, data: bytes, model_tokens: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(requests, errors): OpenAI's checks on a batch input file, the queue limit included."""
    requests, errors, seen = [], [], set()
    for lineno, line in enumerate(data.decode("utf-8").splitlines(), 1):
        try:
            r = json.loads(line)
            assert isinstance(r, dict) and r.get("method") == "POST" and r.get("url") == "/v1/chat/completions"
            assert isinstance(r.get("custom_id"), str) and isinstance(r.get("body"), dict) and r["body"].get("messages")
        except (ValueError, AssertionError):
            errors.append({"code": "invalid_request", "line": lineno, "param": None,
                           "message": "Each line must be a JSON object with custom_id, method POST, url /v1/chat/completions and a body with messages."})
            continue
        if r["custom_id"] in seen:
            errors.append({"code": "duplicate_custom_id", "line": lineno, "param": "custom_id",
                           "message": f"The custom_id {r['custom_id']} is used more than once."})
        seen.add(r["custom_id"])
        requests.append(r)
    tokens = sum(_usage(state, r["body"], "")["prompt_tokens"] for r in requests)
    if not errors and state.batch_enqueued_token_limit is not None and model_tokens + tokens > state.batch_enqueued_token_limit:
        errors.append({"code": "token_limit_exceeded", "line": None, "param": None,
                       "message": f"Enqueued token limit reached for {requests[0]['body'].get('model')}: "
                                  f"limit {state.batch_enqueued_token_limit}, enqueued {model_tokens}, this batch {tokens}."})
    return requests, errors


def _create_batch(state: ServerState, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    f = state.files.get(body.get("input_file_id", ""))
    if f is None or f["purpose"] != "batch":
        return 400, {"error": {"message": f"Invalid input_file_id {body.get('input_file_id')!r}", "type": "invalid_request_error"}}
    with state.lock:
        enqueued = sum(b["tokens"] for b in state.batches.values() if _phase(state, b)[0] in ("validating", "in_progress", "finalizing"))
    requests, errors = _validate(state, f["data"], enqueued)
    with state.lock:
        number = len(state.batches) + 1
        batch_id = f"batch_{number}"
        state.batch_lines_received += len(requests)
        state.batches[batch_id] = {
            "id": batch_id, "number": number, "input_file_id": f["id"], "endpoint": body["endpoint"],
            "completion_window": body["completion_window"], "metadata": body.get("metadata"),
            "created": time.monotonic(), "created_at": int(time.time()), "requests": requests, "errors": errors,
            "tokens": sum(_usage(state, r["body"], "")["prompt_tokens"] for r in requests), "cancel_at": None,
        }
    return 200, _batch_status(state, batch_id)


def _phase(state: ServerState, b: dict[str, Any]) -> tuple[str, float]:
    """(status, fraction of the lines done) of batch ``b`` now."""
    t = time.monotonic() - b["created"]
    if t < state.batch_validate_s:
        return "validating", 0.0
    if b["errors"]:
        return "failed", 0.0
    t -= state.batch_validate_s
    if b["cancel_at"] is not None:
        done = min(1.0, (b["cancel_at"] - b["created"] - state.batch_validate_s) / state.batch_run_s)
        return "cancelled", max(0.0, done)
    if t < state.batch_run_s:
        if b["number"] in state.batch_expire and t >= state.batch_run_s / 2:
            return "expired", 0.5
        return "in_progress", t / state.batch_run_s
    if b["number"] in state.batch_expire:
        return "expired", 0.5
    return ("finalizing", 1.0) if t < state.batch_run_s + state.batch_finalize_s else ("completed", 1.0)


def _finish(state: ServerState, b: dict[str, Any], done: float) -> None:
    """Write the output and error files once (shuffled: the output order is not the input order)."""
    if "output_file_id" in b:
        return
    n = len(b["requests"])
    ran = b["requests"][: math.floor(n * done)]
    out, err = [], []
    for k, r in enumerate(ran):
        line = {"id": f"batch_req_{b['number']}_{k}", "custom_id": r["custom_id"], "error": None}
        if state.batch_error_every and (k + 1) % state.batch_error_every == 0:
            err.append({**line, "response": {"status_code": 500, "request_id": f"req_{k}",
                                              "body": {"error": {"message": "The server had an error", "type": "server_error"}}}})
            continue
        if state.new_model and (error := _new_model_error(r["body"])) is not None:
            state.rejected_params.append(error["param"])
            err.append({**line, "response": {"status_code": 400, "request_id": f"req_{k}", "body": {"error": error}}})
            continue
        payload = _completion(state, r["body"])
        _book(state, "delivered", payload["usage"])
        out.append({**line, "response": {"status_code": 200, "request_id": f"req_{k}", "body": payload}})
    random.Random(f"{state.seed}:{b['id']}").shuffle(out)
    b["request_counts"] = {"total": n, "completed": len(out), "failed": len(err)}
    b["output_file_id"] = _store_file(state, "".join(json.dumps(x) + "\n" for x in out).encode(), "output.jsonl",
                                      "batch_output")["id"] if out else None
    b["error_file_id"] = _store_file(state, "".join(json.dumps(x) + "\n" for x in err).encode(), "errors.jsonl",
                                     "batch_output")["id"] if err else None


def _batch_status(state: ServerState, batch_id: str) -> Optional[dict[str, Any]]:
    b = state.batches.get(batch_id)
    if b is None:
        return None
    status, done = _phase(state, b)
    with state.lock:
        if not b.setdefault("statuses", []) or b["statuses"][-1] != status:
            b["statuses"].append(status)  # what the clients were shown, in order
    n = len(b["requests"])
    counts = {"total": n, "completed": math.floor(n * done), "failed": 0}
    output = error = None
    if status in ("completed", "expired", "cancelled"):
        with state.lock:
            _finish(state, b, done)
        counts, output, error = b["request_counts"], b["output_file_id"], b["error_file_id"]
    return {
        "id": b["id"], "object": "batch", "endpoint": b["endpoint"], "input_file_id": b["input_file_id"],
        "completion_window": b["completion_window"], "status": status, "created_at": b["created_at"],
        "output_file_id": output, "error_file_id": error, "metadata": b["metadata"],
        "errors": {"object": "list", "data": b["errors"]} if b["errors"] else None,
        "request_counts": counts if status != "failed" else {"total": 0, "completed": 0, "failed": 0},
    }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default 5 drops connections when 32+ requests arrive at once


class OpenAITestServer:
    def __init__(self, keep_alive: bool = False, **state: Any):
        """``keep_alive``: HTTP/1.1 persistent connections, as real APIs keep (the client then
        reuses its connections: less CPU per request, for benchmarks at thousands of requests)."""
        self.state = ServerState(**state)
        handler = type("Handler", (_Handler,), {"state": self.state,
                                                "protocol_version": "HTTP/1.1" if keep_alive else "HTTP/1.0"})
        self._httpd = _Server(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> "OpenAITestServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
