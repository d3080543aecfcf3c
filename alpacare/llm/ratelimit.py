"""Pacing under an endpoint's rate limits: token buckets on requests and on tokens, as OpenAI counts them.

OpenAI (and servers that copy it: Azure, vLLM's router, LiteLLM, OpenRouter) limits requests and
tokens per minute and reports on every reply ``x-ratelimit-limit-{requests,tokens}`` (per minute),
``-remaining-*`` (what is left now) and ``-reset-*`` (time until the bucket is full again, "1.5s",
"6m0s", "120ms"). Its tokens count the prompt plus ``max_tokens`` at admission. From one reply we
learn the refill rate (limit / 60 s) and the burst (remaining + reset x rate), so nothing needs to
be configured; ``<role>.rpm_limit`` / ``tpm_limit`` serve servers that send no headers (the lower of
the two wins when both exist).

Until the first reply has told us the limits, one request goes out at a time (a probe): firing
``max_concurrency`` requests blind into a burst of 20 is what drew the 429s this module removes.

Drift (other clients on the same key, a token estimate below the server's count) is corrected
from ``remaining``: each send records the bucket level right after it and the corrections applied
so far; the reply's ``remaining`` is the server's level when it admitted that request, so a lower
figure is drift not yet corrected, applied once. A higher figure is not spare room: the server
admits a request a little after we send it, and what refilled meanwhile is already spoken for by
the requests still on their way (crediting it drew 10% 429s at 6,000/min, 256 in flight); so
only drift downwards is applied, beyond a small tolerance for requests admitted out of order.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from typing import Mapping, Optional

# Requests leave us a moment before the server counts them (connections to open, a busy event
# loop), and a burst sent at once can arrive bunched after the server's full bucket stopped
# refilling. Letting only half the server's burst go at once leaves room for that: measured
# against the loopback server at 6,000/min (burst 200), 256 in flight, the full burst drew 48 429s
# out of 400 requests, all in the first burst.
BURST_SHARE = 0.5

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3}


def parse_reset(value: Optional[str]) -> Optional[float]:
    """Seconds in an OpenAI reset header ("1s", "6m0s", "1m30.5s", "120ms", or a bare number)."""
    if value is None:
        return None
    value = value.strip()
    try:
        return float(value)
    except ValueError:
        pass
    parts = _DURATION.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        return None
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


@dataclass
class Limit:
    """One limit as a reply states it: per minute, what is left, seconds until full."""

    per_minute: float
    remaining: Optional[float]
    reset_s: Optional[float]

    def burst(self) -> Optional[float]:
        """The share of the server's bucket (what is left plus what refills until it is full) we
        let go at once: ``BURST_SHARE`` of it."""
        if self.remaining is None or self.reset_s is None:
            return None
        size = min(self.per_minute, self.remaining + self.reset_s * self.per_minute / 60.0)
        return max(1.0, size * BURST_SHARE)


def read_limits(headers: Optional[Mapping[str, str]]) -> dict[str, Limit]:
    """``{"requests": Limit, "tokens": Limit}`` from a reply's headers (missing kinds left out)."""
    limits: dict[str, Limit] = {}
    if not headers:
        return limits
    for kind in ("requests", "tokens"):
        try:
            per_minute = float(headers[f"x-ratelimit-limit-{kind}"])
        except (KeyError, TypeError, ValueError):
            continue
        remaining = headers.get(f"x-ratelimit-remaining-{kind}")
        try:
            left = float(remaining) if remaining is not None else None
        except ValueError:
            left = None
        if per_minute > 0:
            limits[kind] = Limit(per_minute, left, parse_reset(headers.get(f"x-ratelimit-reset-{kind}")))
    return limits


class Bucket:
    """A token bucket: ``rate`` per second up to ``capacity``; ``level`` may go below zero when a
    correction says the server has less left than we thought."""

    def __init__(self, per_minute: float, capacity: Optional[float] = None):
        self.rate = per_minute / 60.0
        # Without a stated burst (a configured limit): none, requests evenly spaced; a request
        # bigger than the bucket goes when it is full and leaves it owing (level below zero).
        self.capacity = capacity if capacity is not None else 1.0
        self.level = self.capacity
        self.corrections = 0.0  # drift applied so far (see the module docstring)
        self._t = time.monotonic()

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self._t) * self.rate)
        self._t = now

    def wait_s(self, cost: float) -> float:
        need = min(cost, self.capacity)  # a request bigger than the burst waits for a full bucket
        return max(0.0, (need - self.level) / self.rate) if self.rate > 0 else 0.0

    def set_limit(self, limit: Limit, now: float) -> None:
        """Adopt the server's rate and burst (first reply, or when they change)."""
        self.refill(now)
        rate = limit.per_minute / 60.0
        burst = limit.burst()
        if abs(rate - self.rate) > 1e-9:
            self.capacity = burst or 1.0
        elif burst is not None:
            # remaining and reset are rounded: the largest estimate seen is the burst.
            self.capacity = max(self.capacity, burst)
        self.rate = rate
        self.level = min(self.level, self.capacity)


@dataclass
class Ticket:
    """What pacing recorded at one send, to correct drift when its reply arrives."""

    cost: dict[str, float]
    level_after: dict[str, float]
    corrections: dict[str, float]


class RateLimiter:
    """Paces sends of one endpoint role. ``acquire(tokens)`` before each attempt, ``observe(ticket,
    headers)`` with each reply (a 429 included). Runs inside one asyncio loop (no threads)."""

    def __init__(self, rpm_limit: Optional[float] = None, tpm_limit: Optional[float] = None):
        self._configured = {"requests": rpm_limit, "tokens": tpm_limit}
        self.buckets: dict[str, Bucket] = {k: Bucket(v) for k, v in self._configured.items() if v}
        self.learned = False  # a reply has been seen (with or without headers)
        self.has_headers = False
        self._probe: Optional[asyncio.Event] = None
        self._lock: Optional[asyncio.Lock] = None
        self.waited_s = 0.0

    def _bind(self) -> None:
        # asyncio primitives belong to one loop; LLMClient.run starts a fresh loop per call.
        loop = asyncio.get_running_loop()
        if self._lock is None or getattr(self._lock, "_alpacare_loop", None) is not loop:
            self._lock = asyncio.Lock()
            self._lock._alpacare_loop = loop  # type: ignore[attr-defined]
            self._probe = asyncio.Event()
            if self.learned:
                self._probe.set()
            self._probing = False

    async def acquire(self, tokens: float) -> Ticket:
        """Wait until one request of ``tokens`` (prompt estimate + max_tokens) fits, then take it."""
        self._bind()
        assert self._lock is not None and self._probe is not None
        while not self.learned and self._probing:
            await self._probe.wait()
        if not self.learned:
            self._probing = True  # this request is the probe; the others wait for its reply
        async with self._lock:  # FIFO: waiters are served in order
            cost = {"requests": 1.0, "tokens": float(tokens)}
            while True:
                now = time.monotonic()
                for b in self.buckets.values():
                    b.refill(now)
                wait = max((b.wait_s(cost[k]) for k, b in self.buckets.items()), default=0.0)
                if wait <= 0:
                    break
                wait = max(wait, 0.001)
                self.waited_s += wait
                await asyncio.sleep(wait)
            for k, b in self.buckets.items():
                b.level -= cost[k]
            return Ticket(cost, {k: b.level for k, b in self.buckets.items()},
                          {k: b.corrections for k, b in self.buckets.items()})

    def observe(self, ticket: Ticket, headers: Optional[Mapping[str, str]], admitted: bool = True) -> None:
        """A reply arrived for ``ticket``'s send. ``admitted``: False for a 429 (the server did not
        count it, so it is handed back first)."""
        now = time.monotonic()
        limits = read_limits(headers)
        if not admitted:
            for k, b in self.buckets.items():
                if limits:  # not counted by the server: hand it back, the headers correct the rest
                    b.level += ticket.cost[k]
                    ticket.level_after[k] = ticket.level_after.get(k, 0.0) + ticket.cost[k]
                else:  # no headers: all we learn is that the server's bucket is empty
                    b.refill(now)
                    b.level = min(b.level, 0.0)
        for kind, limit in limits.items():
            configured = self._configured.get(kind)
            if configured and configured < limit.per_minute:
                limit = Limit(configured, None, None)  # the user's lower limit wins
            bucket = self.buckets.get(kind)
            if bucket is None:
                bucket = self.buckets[kind] = Bucket(limit.per_minute, limit.burst())
                if limit.remaining is not None:
                    bucket.level = min(limit.remaining, bucket.capacity)
                continue
            if abs(bucket.rate * 60.0 - limit.per_minute) > 1e-6 or (limit.remaining is not None and limit.reset_s is not None):
                bucket.set_limit(limit, now)
            if limit.remaining is not None and kind in ticket.level_after:
                expected = ticket.level_after[kind] + (bucket.corrections - ticket.corrections[kind])
                drift = limit.remaining - expected
                # remaining is floored, and requests sent together may be admitted in either order.
                if drift < -max(2.0, 0.02 * bucket.capacity):
                    bucket.refill(now)
                    bucket.level = min(bucket.capacity, bucket.level + drift)
                    bucket.corrections += drift
        self.has_headers = self.has_headers or bool(limits)
        if not self.learned:
            self.learned = True
            if self._probe is not None:
                self._probe.set()

    def release_probe(self) -> None:
        """The probe ended without any reply (connection error): let the next request probe."""
        if not self.learned:
            self._probing = False
            if self._probe is not None:
                self._probe.set()
                self._probe = asyncio.Event()

    def describe(self) -> str:
        parts = [f"{k} {b.rate * 60:.0f}/min (burst {b.capacity:.0f})" for k, b in self.buckets.items()]
        return ", ".join(parts) or "no limits known"
