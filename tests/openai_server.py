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
"""

from __future__ import annotations

import hashlib
import itertools
import json
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
    delay_s: float = 0.0
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
    requests: list[dict[str, Any]] = field(default_factory=list)
    auth_headers: list[str] = field(default_factory=list)
    served: int = 0
    counter: itertools.count = field(default_factory=itertools.count)
    lock: threading.Lock = field(default_factory=threading.Lock)


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
    text = json.dumps({"tasks": [_task(start + k, state.open_types) for k in range(n_tasks)]})
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
        if self.path.rstrip("/").endswith("/models") and self._authorized():
            self._send(200, {"object": "list", "data": [{"id": "test-teacher", "object": "model"}]})
        elif not self.path.rstrip("/").endswith("/models"):
            self._send(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        if not self._authorized():
            return
        state = self.state
        with state.lock:
            state.requests.append(body)
            failing = len(state.requests) <= state.fail_first
        if failing and state.fail_kind is None:
            self._send(state.fail_status, {"error": {"message": "injected failure", "type": "server_error"}})
            return
        fault = state.fail_kind if failing else _fault(state, body)
        if fault in ("429", "500", "503"):
            self._send(int(fault), {"error": {"message": f"injected {fault}", "type": "server_error"}},
                       headers={"Retry-After": "0.2"} if fault == "429" else None)
            return
        if state.delay_s:
            time.sleep(state.delay_s)
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
            "id": f"chatcmpl-{len(state.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "test-teacher"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}],
            "usage": usage,
        }
        if fault == "empty":  # a content filter's reply: no choices, the prompt still counted
            usage = {**usage, "completion_tokens": 0, "total_tokens": usage["prompt_tokens"]}
            payload["choices"] = []
            payload["usage"] = usage
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
        self._send(200, payload)


class OpenAITestServer:
    def __init__(self, **state: Any):
        self.state = ServerState(**state)
        handler = type("Handler", (_Handler,), {"state": self.state})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
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
