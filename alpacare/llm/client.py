"""One LLM client for every backend and role (the ``teacher`` that writes data, the ``judge`` that
compares answers): the official ``openai`` AsyncOpenAI against any OpenAI-compatible endpoint
(OpenAI, vLLM, Ollama, llama.cpp, TGI, a proxy for Claude, or the embedded local server).

- bounded concurrency (``<role>.max_concurrency`` requests in flight), paced under the server's
  rate limits (read from the ``x-ratelimit-*`` headers of every reply, or ``<role>.rpm_limit`` /
  ``tpm_limit``): alpacare/llm/ratelimit.py;
- retries with exponential backoff (or the server's Retry-After) on 429, 5xx, timeouts, connection
  errors, bodies cut short, and 200 replies without choices (content filters send those), and a
  per-request timeout. The loop is ours, with the openai client's own retries off: only then is
  every failed attempt seen, and counted;
- a token and cost ledger with the per-model prices from the endpoint config. It counts what the
  client received, and apart from that the attempts it abandoned after sending them (timed out,
  connection or body cut): a real API may have completed, and billed, those. Their cost is not
  known; the ledger holds an upper bound (the prompt and ``max_tokens``), and the optional spend
  cap, checked *before* each request against its worst-case cost, counts that cautious figure;
- a response cache keyed by the request (sqlite, shared across runs): paid work is never repeated;
- the request in the fields the endpoint takes (``<role>.max_tokens_param``, ``<role>.sampling_params``);
  a 400 naming a field it does not take stops the role with one line after one request.

The API key is read from the environment variable named by ``<role>.api_key_env`` and handed
straight to the client; it is never stored on this object's config, logged, or written.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import logging
import os
import random
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import openai
from tqdm.auto import tqdm

from alpacare.errors import EndpointError, SpendCapReached
from alpacare.llm.ratelimit import RateLimiter

log = logging.getLogger(__name__)

# The batch log in a stage's folder (alpacare/llm/batch.py): the Batch API batches it submitted.
BATCH_LOG = "batches.jsonl"

# A rough upper bound on tokens per character of prompt, for the spend cap's worst case.
_TOKENS_PER_CHAR_UPPER = 0.5
# OpenAI's rule of thumb (~4 characters per token of English), for pacing: the limiter corrects
# its estimate from the server's remaining-tokens header, so a typical figure beats a bound here.
_TOKENS_PER_CHAR_TYPICAL = 0.25


@dataclass(frozen=True)
class Request:
    """One chat request. ``key`` identifies it in the caller's work log; ``nonce`` separates
    otherwise identical requests that must get their own sample (e.g. request number i)."""

    key: str
    messages: tuple[dict[str, str], ...]
    temperature: float
    top_p: float
    max_tokens: int
    presence_penalty: float = 0.0
    response_format: Optional[dict[str, Any]] = None
    nonce: str = ""

    def cache_key(self, endpoint_name: str, model: str, endpoint: str = "") -> str:
        # "teacher" names the endpoint preset for every role: the key predates the judge, and
        # renaming it would orphan every cached (paid) answer.
        payload = {"teacher": endpoint_name, "model": model, "endpoint": endpoint, **asdict(self)}
        payload.pop("key")
        return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


@dataclass
class Completion:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cached: bool = False
    # Attempts for this request that were sent and abandoned (possibly billed), and upper bounds
    # of their tokens; zero for a cached answer.
    abandoned_attempts: int = 0
    abandoned_prompt_tokens: int = 0
    abandoned_completion_tokens: int = 0
    # Share of the live price this answer is billed at (``<role>.batch_discount`` for Batch API lines).
    price_factor: float = 1.0


def json_response_format(schema: dict[str, Any], name: str, schema_style: str) -> dict[str, Any]:
    """``response_format`` that constrains decoding to ``schema`` in a server's dialect
    (``<role>.schema_style``): llama-cpp-python's json_object with an inline schema, else OpenAI's
    strict json_schema (also vLLM / Ollama)."""
    if schema_style == "llama_cpp":
        return {"type": "json_object", "schema": schema}
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def work_log_usage(completion: Optional[Completion]) -> dict[str, Any]:
    """The usage fields a stage's work log keeps per request (``count_earlier_spend`` reads them)."""
    c = completion
    return {
        "cached": bool(c and c.cached),
        "prompt_tokens": c.prompt_tokens if c else 0,
        "completion_tokens": c.completion_tokens if c else 0,
        "abandoned_attempts": c.abandoned_attempts if c else 0,
        "abandoned_prompt_tokens": c.abandoned_prompt_tokens if c else 0,
        "abandoned_completion_tokens": c.abandoned_completion_tokens if c else 0,
        "price_factor": c.price_factor if c else 1.0,
    }


def paid_cost(ledger: "Ledger", work_log: Sequence[dict[str, Any]]) -> tuple[float, float]:
    """USD of a work log's paid (not cached) requests: received, and possibly billed (received plus
    the worst case of the attempts abandoned on the way)."""
    received = sum(ledger.cost_of(r["prompt_tokens"], r["completion_tokens"]) * r.get("price_factor", 1.0)
                   for r in work_log)
    abandoned = ledger.cost_of(sum(r.get("abandoned_prompt_tokens", 0) for r in work_log),
                               sum(r.get("abandoned_completion_tokens", 0) for r in work_log))
    return received, received + abandoned


class Unanswered(Exception):
    """A request that ended without an answer and is not the endpoint's fault as a whole (e.g. a
    reply without choices after every retry): recorded as failed, the run goes on."""


@dataclass
class Ledger:
    """Tokens and USD, per model. ``requests``/``prompt_tokens``/``completion_tokens``/``cost_usd``
    count replies received (usage as the server reported it). ``abandoned_*`` count attempts sent
    and given up on (timed out, connection or body cut), which a real API may still bill: their
    tokens are upper bounds (prompt estimate, max_tokens). ``cost_usd_possibly_billed`` is the
    cautious total, which the spend cap uses. Cached answers cost nothing again and are counted apart."""

    price_input_per_1m: float = 0.0
    price_output_per_1m: float = 0.0
    requests: int = 0
    cached_requests: int = 0
    failed_requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    # Failed attempts that were retried or ended a request, by reason ("429", "timeout", "empty choices"...).
    failed_attempts: dict[str, int] = field(default_factory=dict)
    abandoned_requests: int = 0
    abandoned_prompt_tokens: int = 0
    abandoned_completion_tokens: int = 0
    by_model: dict[str, dict[str, float]] = field(default_factory=dict)

    def cost_of(self, prompt_tokens: float, completion_tokens: float) -> float:
        return (prompt_tokens * self.price_input_per_1m + completion_tokens * self.price_output_per_1m) / 1e6

    @property
    def cost_usd_possibly_billed(self) -> float:
        return self.cost_usd + self.cost_of(self.abandoned_prompt_tokens, self.abandoned_completion_tokens)

    def attempt_failed(self, reason: str) -> None:
        self.failed_attempts[reason] = self.failed_attempts.get(reason, 0) + 1

    def abandoned(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.abandoned_requests += 1
        self.abandoned_prompt_tokens += prompt_tokens
        self.abandoned_completion_tokens += completion_tokens

    def add(self, model: str, completion: Completion, count_request: bool = True) -> None:
        if completion.cached:
            self.cached_requests += 1
            return
        cost = self.cost_of(completion.prompt_tokens, completion.completion_tokens) * completion.price_factor
        self.requests += count_request
        self.prompt_tokens += completion.prompt_tokens
        self.completion_tokens += completion.completion_tokens
        self.cost_usd += cost
        m = self.by_model.setdefault(model, {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0})
        m["requests"] += count_request
        m["prompt_tokens"] += completion.prompt_tokens
        m["completion_tokens"] += completion.completion_tokens
        m["cost_usd"] += cost

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d["cost_usd"] = round(self.cost_usd, 6)
        d["cost_usd_possibly_billed"] = round(self.cost_usd_possibly_billed, 6)
        return d


class ResponseCache:
    """sqlite map from request hash to completion; safe across processes and kill -9.

    WAL with ``synchronous=NORMAL``: a commit is in the OS's hands when it returns, so a killed
    process loses nothing; only a power cut may drop the last commits (never corrupting the file),
    and the stage's work log, fsync'd per answer, still holds those. With FULL, every answer's
    commit waited for the disk (2.6 ms each here, on the event loop: benchmarks/bench_healthbench.py)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), timeout=30, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS completions (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self._db.commit()
        self._lock = threading.Lock()

    def get(self, key: str) -> Optional[Completion]:
        with self._lock:
            row = self._db.execute("SELECT value FROM completions WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        # Abandoned attempts were paid for by the run that first asked, not by this one.
        return Completion(**{**json.loads(row[0]), "cached": True, "abandoned_attempts": 0,
                             "abandoned_prompt_tokens": 0, "abandoned_completion_tokens": 0})

    def put(self, key: str, completion: Completion) -> None:
        self.put_many([(key, completion)])

    def put_many(self, items: Sequence[tuple[str, Completion]]) -> None:
        """One transaction (a Batch API output file: one commit instead of one per answer)."""
        rows = [(key, json.dumps({**asdict(c), "cached": False}, ensure_ascii=False)) for key, c in items]
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO completions (key, value) VALUES (?, ?)", rows)
            self._db.commit()

    def close(self) -> None:
        self._db.close()


class LLMClient:
    def __init__(self, cfg: Any, base_url: Optional[str], api_key: str, cache: Optional[ResponseCache],
                 role: str = "teacher"):
        self.role = role
        self.name = cfg.name
        self.model = cfg.model
        self.base_url = base_url
        self.endpoint = endpoint_identity(cfg, base_url)
        self.max_concurrency = cfg.max_concurrency
        self.max_cost_usd = cfg.max_cost_usd
        self.structured_output = cfg.structured_output
        self.schema_style = cfg.schema_style
        self.cfg = cfg  # the endpoint settings (no secret: the key is read from the environment)
        self.batch = cfg.batch
        self.ledger = Ledger(cfg.price_input_per_1m, cfg.price_output_per_1m)
        # What this run dir paid in earlier invocations (work logs), so the cap spans resumes.
        self.spent_before_usd = 0.0
        self._cache = cache
        self._reserved_usd = 0.0
        self.max_retries = cfg.max_retries
        # One limiter per role and client: what it learned from replies carries across run() calls.
        self.limiter = RateLimiter(cfg.rpm_limit, cfg.tpm_limit)
        # Retries are ours (``_call``), so the openai client makes exactly one attempt per call.
        self._client_kwargs = dict(base_url=base_url, api_key=api_key, max_retries=0, timeout=cfg.timeout_s)

    def json_response_format(self, schema: dict[str, Any], name: str) -> Optional[dict[str, Any]]:
        """``response_format`` that constrains decoding to ``schema``, in the server's dialect."""
        if not self.structured_output:
            return None
        return json_response_format(schema, name, self.schema_style)

    def count_earlier_spend(self, work_log: Sequence[dict[str, Any]]) -> None:
        """Charge the requests a stage's work log shows as paid before this resume against
        ``<role>.max_cost_usd``: the cap bounds what a run dir costs, not one invocation of it.
        Work-log records carry ``cached``, ``prompt_tokens`` and ``completion_tokens``."""
        paid = [r for r in work_log if not r["cached"]]
        self.spent_before_usd += paid_cost(self.ledger, paid)[1]

    # -- running a batch ---------------------------------------------------------------------

    def run(self, requests: Sequence[Request], on_result: Callable[[Request, Optional[Completion], str], None],
            desc: str, batch_log: Optional[Path] = None) -> None:
        """Send ``requests`` with bounded concurrency; call ``on_result(request, completion, error)``
        in this thread as each finishes (completion None and error set for a request the server
        rejected). Raises SpendCapReached / EndpointError after in-flight requests have landed.

        With ``<role>.batch``, through the Batch API instead (alpacare/llm/batch.py); ``batch_log``
        (a file in the stage's folder) records the submitted batches so that a rerun re-attaches."""
        if not requests:
            return
        if self.batch:
            from alpacare.llm.batch import BatchRunner

            if batch_log is None:
                raise EndpointError(f"{self.role}.batch: this stage cannot use the Batch API")
            BatchRunner(self, batch_log).run(list(requests), on_result, desc)
            return
        self.run_live(requests, on_result, desc)

    def run_live(self, requests: Sequence[Request], on_result: Callable[[Request, Optional[Completion], str], None],
                 desc: str) -> None:
        if requests:
            asyncio.run(self._run(list(requests), on_result, desc))

    async def _run(self, requests: list[Request], on_result, desc: str) -> None:
        client = openai.AsyncOpenAI(**self._client_kwargs)
        semaphore = asyncio.Semaphore(self.max_concurrency)
        stop: list[BaseException] = []
        bar = tqdm(total=len(requests), desc=desc, unit="req", dynamic_ncols=True)
        pace = _Pace()

        async def one(request: Request) -> bool:
            """Settle ``request``; True when nothing reached the server (a cached answer, or stopping)."""
            async with semaphore:
                if stop:
                    return True
                try:
                    completion, error = await self._complete(client, request), ""
                except (SpendCapReached, EndpointError) as e:
                    stop.append(e)
                    return True
                except openai.BadRequestError as e:
                    completion, error = None, f"rejected by server: {_short(e)}"
                    self.ledger.failed_requests += 1
                except Unanswered as e:
                    completion, error = None, str(e)
                    self.ledger.failed_requests += 1
                on_result(request, completion, error)
                bar.update(1)
                # tqdm's own figures are per second and its ETA follows them; requests/min over the
                # last minute is what rate limits are stated in.
                bar.set_postfix(req_per_min=f"{pace.tick():.0f}", http_429=self.ledger.failed_attempts.get("429", 0),
                                tokens=self.ledger.completion_tokens, usd=f"{self.ledger.cost_usd:.4f}", refresh=False)
                return bool(completion and completion.cached)

        try:
            # Until one request has reached the server, send them one at a time: a request shape
            # the endpoint rejects (a field it does not take) then costs one 400, not one per slot.
            first = 0
            while first < len(requests) and not stop and await one(requests[first]):
                first += 1
            await asyncio.gather(*(one(r) for r in requests[first + 1:]))
        finally:
            bar.close()
            await client.close()
            if self.limiter.buckets:
                log.info("%s: paced at %s; %d replies were 429s", self.role, self.limiter.describe(),
                         self.ledger.failed_attempts.get("429", 0))
        if stop:
            raise stop[0]

    async def _complete(self, client: openai.AsyncOpenAI, request: Request) -> Completion:
        key = request.cache_key(self.name, self.model, self.endpoint)
        if self._cache is not None and (hit := self._cache.get(key)) is not None:
            self.ledger.add(self.model, hit)
            return hit
        worst_case = self._reserve(request)
        try:
            completion = await self._call(client, request)
        finally:
            self._reserved_usd -= worst_case
        if self._cache is not None:
            self._cache.put(key, completion)
        self.ledger.add(self.model, completion)
        return completion

    def worst_case_usd(self, request: Request) -> float:
        """The most ``request`` can cost at live prices (prompt upper bound + max_tokens)."""
        return self.ledger.cost_of(_prompt_tokens_upper(request), request.max_tokens)

    @staticmethod
    def prompt_tokens_typical(request: Request) -> int:
        return _prompt_tokens_typical(request)

    def _reserve(self, request: Request) -> float:
        """Hold the worst-case cost of ``request`` against the cap, or stop before sending it."""
        worst = self.worst_case_usd(request)
        spent = self.spent_before_usd + self.ledger.cost_usd_possibly_billed
        if self.max_cost_usd is not None and spent + self._reserved_usd + worst > self.max_cost_usd:
            raise SpendCapReached(
                f"{self.role}.max_cost_usd={self.max_cost_usd}: spent ${spent:.4f} "
                f"(+${self._reserved_usd:.4f} worst case in flight); the next request "
                f"could cost up to ${worst:.4f}, so the run stops here (work so far is saved; raise the cap and rerun to continue)"
            )
        self._reserved_usd += worst
        return worst

    def request_body(self, request: Request) -> dict[str, Any]:
        """The chat.completions parameters of ``request`` (live call, or a Batch API line's body),
        in the fields this endpoint accepts (``<role>.max_tokens_param``, ``<role>.sampling_params``).
        The paper presets' body keeps its historical key order: saved batch files compare equal."""
        kwargs: dict[str, Any] = dict(model=self.model, messages=list(request.messages))
        if self.cfg.sampling_params:
            kwargs.update(temperature=request.temperature, top_p=request.top_p)
        kwargs[self.cfg.max_tokens_param] = request.max_tokens
        if request.presence_penalty and self.cfg.sampling_params:
            kwargs["presence_penalty"] = request.presence_penalty
        if request.response_format is not None:
            kwargs["response_format"] = request.response_format
        return kwargs

    def unsupported_field(self, body: Any) -> Optional[str]:
        """See the module's ``unsupported_field`` (for the Batch API's error lines)."""
        return unsupported_field(self.role, body)

    async def _call(self, client: openai.AsyncOpenAI, request: Request) -> Completion:
        kwargs = self.request_body(request)
        abandoned = [0, 0, 0]  # attempts, prompt tokens (upper bound), completion tokens (upper bound)
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            retry_after: Optional[float] = None
            try:
                response = await self._send(client, kwargs, request)
            except openai.AuthenticationError:
                raise EndpointError(f"{self.role} {self.name}: the endpoint refused the API key (HTTP 401)") from None
            except openai.PermissionDeniedError as e:
                raise EndpointError(f"{self.role} {self.name}: permission denied: {_short(e)}") from None
            except openai.NotFoundError as e:
                raise EndpointError(f"{self.role} {self.name}: model {self.model!r} not found at {self._where()}: {_short(e)}") from None
            except openai.APIConnectionError as e:  # includes APITimeoutError
                timed_out = isinstance(e, openai.APITimeoutError)
                reason = "timeout" if timed_out else "connection"
                # Refused before the request went out: nothing to bill. Otherwise (timed out, reset,
                # body cut short) the server may have finished the completion.
                if timed_out or type(e.__cause__).__name__ not in ("ConnectError", "ConnectTimeout"):
                    self._abandon(request, abandoned)
                    reason = "timeout" if timed_out else "cut off"
                self.ledger.attempt_failed(reason)
                if last:
                    raise EndpointError(f"{self.role} {self.name}: cannot reach {self._where()} after retries "
                                        f"({type(e).__name__})") from None
            except openai.BadRequestError as e:
                self.ledger.attempt_failed("400")
                # A field this endpoint does not take fails every request alike: stop the stage.
                if (problem := self.unsupported_field(e.body)) is not None:
                    raise EndpointError(f"{self.role} {self.name}: {problem}") from None
                raise
            except openai.APIStatusError as e:
                self.ledger.attempt_failed(str(e.status_code))
                if not (e.status_code in (408, 409, 429) or e.status_code >= 500):
                    raise EndpointError(f"{self.role} {self.name}: HTTP {e.status_code}: {_short(e)}") from None
                if last:
                    what = "still rate-limited" if e.status_code == 429 else "server error"
                    raise EndpointError(f"{self.role} {self.name}: {what} after retries: {_short(e)}") from None
                retry_after = _retry_after(e.response)
            else:
                completion = self.completion_of(response)
                if completion is not None:
                    completion.abandoned_attempts, completion.abandoned_prompt_tokens, \
                        completion.abandoned_completion_tokens = abandoned
                    return completion
                self.ledger.attempt_failed("empty choices")
                if last:
                    raise Unanswered(f"no choices in the reply after {self.max_retries + 1} attempts "
                                     f"(a content filter?)")
            await asyncio.sleep(_backoff(attempt, retry_after))
        raise AssertionError("unreachable")

    def completion_of(self, response: Any, price_factor: float = 1.0) -> Optional[Completion]:
        """The answer in a chat.completion (live reply or Batch API output line), or None for a
        reply without choices (content filters send those), whose usage is still booked."""
        usage = response.usage
        prompt_tokens = usage.prompt_tokens if usage else 0
        completion_tokens = usage.completion_tokens if usage else 0
        if not response.choices:
            self.ledger.add(self.model, Completion("", "", prompt_tokens, completion_tokens, price_factor=price_factor),
                            count_request=False)
            return None
        choice = response.choices[0]
        return Completion(text=choice.message.content or "", finish_reason=choice.finish_reason or "",
                          prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, price_factor=price_factor)

    async def _send(self, client: openai.AsyncOpenAI, kwargs: dict[str, Any], request: Request) -> Any:
        """One attempt, paced; the limiter sees every reply's headers (a 429's too)."""
        ticket = await self.limiter.acquire(_prompt_tokens_typical(request) + request.max_tokens)
        try:
            raw = await client.chat.completions.with_raw_response.create(**kwargs)
        except openai.APIStatusError as e:
            self.limiter.observe(ticket, e.response.headers, admitted=e.status_code != 429)
            raise
        except openai.APIConnectionError:
            self.limiter.release_probe()
            raise
        self.limiter.observe(ticket, raw.headers)
        return raw.parse()

    def _abandon(self, request: Request, abandoned: list[int]) -> None:
        prompt, completion = _prompt_tokens_upper(request), request.max_tokens
        self.ledger.abandoned(prompt, completion)
        abandoned[0] += 1
        abandoned[1] += prompt
        abandoned[2] += completion

    def check_reachable(self) -> None:
        """Fail in seconds, with one line, when the endpoint is down (instead of after all retries)."""
        client = openai.OpenAI(**{**self._client_kwargs, "max_retries": 1, "timeout": 10.0})
        try:
            client.models.list()
        except openai.APIConnectionError:
            raise EndpointError(f"{self.role} {self.name}: cannot reach {self._where()}") from None
        except openai.AuthenticationError:
            raise EndpointError(f"{self.role} {self.name}: the endpoint refused the API key (HTTP 401)") from None
        except openai.APIStatusError:
            pass  # some servers lack /models; the first real request will tell
        finally:
            client.close()

    def _where(self) -> str:
        return self.base_url or "the OpenAI API"


def _prompt_tokens_upper(request: Request) -> int:
    return int(sum(len(m["content"]) for m in request.messages) * _TOKENS_PER_CHAR_UPPER) + 16


def _prompt_tokens_typical(request: Request) -> int:
    return int(sum(len(m["content"]) for m in request.messages) * _TOKENS_PER_CHAR_TYPICAL) + 4


class _Pace:
    """Requests finished per minute over the last minute (over what there is, at first)."""

    def __init__(self) -> None:
        self._times: collections.deque[float] = collections.deque()

    def tick(self) -> float:
        now = time.monotonic()
        self._times.append(now)
        while now - self._times[0] > 60.0:
            self._times.popleft()
        span = now - self._times[0]
        return (len(self._times) - 1) / span * 60.0 if span > 0 else 0.0


# Backoff between attempts: 0.5 s doubling to at most 8 s (the openai client's own schedule), with
# jitter so that concurrent requests do not retry in lockstep; a server's Retry-After (up to 60 s) wins.
_BACKOFF_INITIAL_S = 0.5
_BACKOFF_MAX_S = 8.0
_RETRY_AFTER_MAX_S = 60.0


def _backoff(attempt: int, retry_after: Optional[float]) -> float:
    if retry_after is not None and 0 <= retry_after <= _RETRY_AFTER_MAX_S:
        return retry_after
    return min(_BACKOFF_INITIAL_S * 2 ** attempt, _BACKOFF_MAX_S) * (0.75 + 0.25 * random.random())


def _retry_after(response: Any) -> Optional[float]:
    headers = getattr(response, "headers", None) or {}
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is not None:
            try:
                return float(value) * scale
            except ValueError:
                return None
    return None


def _short(e: Exception) -> str:
    message = getattr(e, "message", None) or str(e)
    return " ".join(str(message).split())[:200]


def api_key(cfg: Any, role: str) -> str:
    """The endpoint's key from the environment (checked before any stage runs, see cli.py)."""
    if cfg.api_key_env is None:
        return "not-needed"  # local servers ignore the key, but the openai client wants one
    key = os.environ.get(cfg.api_key_env, "")
    if not key:
        raise EndpointError(f"{role}={cfg.name} needs an API key: set the environment variable {cfg.api_key_env}")
    return key


def endpoint_identity(cfg: Any, base_url: Optional[str]) -> str:
    """What, besides the model name, decides the answers: the GGUF file for the embedded server
    (whose port changes every run), else the endpoint URL (two servers may serve one model name);
    and a request shape other than the paper's (the model's own sampling, or a budget that also
    covers reasoning tokens answer differently). The paper's shape adds nothing: earlier caches hit."""
    where = f"gguf:{cfg.gguf or 'embedded'}" if cfg.launch_local else (base_url or "openai")
    budget, sampling = getattr(cfg, "max_tokens_param", "max_tokens"), getattr(cfg, "sampling_params", True)
    shape = ([budget] if budget != "max_tokens" else []) + ([] if sampling else ["default-sampling"])
    return "|".join([where, *shape])


# OpenAI's 400 codes for a request field the model does not take, and the setting that drops it.
_UNSUPPORTED_CODES = ("unsupported_parameter", "unsupported_value")
_FIELD_SETTINGS = {
    "max_tokens": "max_tokens_param=max_completion_tokens",
    "max_completion_tokens": "max_tokens_param=max_tokens",
    "temperature": "sampling_params=false",
    "top_p": "sampling_params=false",
    "presence_penalty": "sampling_params=false",
}


def unsupported_field(role: str, body: Any) -> Optional[str]:
    """The one-line reason of a 400 that names a request field this endpoint does not take (OpenAI's
    ``{"error": {"param": ..., "code": "unsupported_parameter" | "unsupported_value"}}``), with the
    setting that fixes it; None for any other 400 (that request alone failed)."""
    error = body.get("error", body) if isinstance(body, dict) else None  # the openai client may unwrap it
    if not isinstance(error, dict) or error.get("code") not in _UNSUPPORTED_CODES:
        return None
    param = error.get("param")
    if param not in _FIELD_SETTINGS:
        return None
    message = " ".join(str(error.get("message", "")).split())[:200]
    return f"the endpoint does not take {param!r} (HTTP 400: {message}); set {role}.{_FIELD_SETTINGS[param]}"


def warn_if_retired(cfg: Any, role: str) -> None:
    """One console line for a preset whose model the provider has retired (not an error: saved
    caches and verdicts still rescore, and a compatible server may still serve the model)."""
    if cfg.retired_for:
        log.warning("%s=%s: %s is retired by its provider; kept for the paper's protocol (caches and saved "
                    "verdicts still rescore). Current replacement: %s=%s", role, cfg.name, cfg.model, role, cfg.retired_for)


@contextlib.contextmanager
def open_endpoint(cfg: Any, role: str, cache_dir: Path,
                  local_url: Optional[Callable[[Any], str]] = None) -> Iterator[LLMClient]:
    """The client for one role of a job. ``cfg.launch_local`` endpoints get their URL from
    ``local_url(cfg)`` (the job's shared llama.cpp servers) or a server of their own."""
    key = api_key(cfg, role)
    with contextlib.ExitStack() as stack:
        base_url = cfg.base_url
        if cfg.launch_local:
            if local_url is None:
                from alpacare.llm.server import local_server

                base_url = stack.enter_context(local_server(
                    cfg.gguf, model_alias=cfg.model, n_ctx=cfg.local_n_ctx, extra_buffer_types=cfg.local_extra_buffer_types
                ))
            else:
                base_url = local_url(cfg)
        cache = ResponseCache(cache_dir / "teacher_cache.sqlite") if cfg.cache else None
        if cache is not None:
            stack.callback(cache.close)
        client = LLMClient(cfg, base_url, key, cache, role=role)
        client.check_reachable()
        yield client
