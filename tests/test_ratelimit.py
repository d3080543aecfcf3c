"""Pacing under rate limits (alpacare/llm/ratelimit.py) against the loopback server's OpenAI-style
limiter, through the real openai client. Small and fast; benchmarks/bench_ratelimit.py measures the
issue's 600 requests/min (burst 20) case side by side with unpaced sending."""

from __future__ import annotations

import time

import pytest

from alpacare.llm.ratelimit import parse_reset, read_limits
from tests.openai_server import OpenAITestServer


def _client(server, **overrides):
    from omegaconf import OmegaConf

    from alpacare.config import EndpointConfig
    from alpacare.llm.client import LLMClient

    cfg = OmegaConf.structured(EndpointConfig(name="test", model="test-teacher", base_url=server.url, **overrides))
    return LLMClient(cfg, server.url, "not-needed", cache=None)


def _ask(client, n, max_tokens=50):
    from alpacare.llm.client import Request

    results = []
    requests = [Request(key=str(i), messages=({"role": "user", "content": f"Question {i}?"},), temperature=1.0,
                        top_p=1.0, max_tokens=max_tokens) for i in range(n)]
    client.run(requests, lambda r, c, e: results.append((r.key, c, e)), desc="test")
    return results


def test_reset_headers_parse_in_openais_formats():
    assert parse_reset("1s") == 1.0 and parse_reset("120ms") == pytest.approx(0.12)
    assert parse_reset("6m0s") == 360.0 and parse_reset("1m30.5s") == 90.5 and parse_reset("2.5") == 2.5
    assert parse_reset("soon") is None and parse_reset(None) is None
    limits = read_limits({"x-ratelimit-limit-requests": "600", "x-ratelimit-remaining-requests": "19",
                          "x-ratelimit-reset-requests": "100ms"})
    assert set(limits) == {"requests"} and limits["requests"].per_minute == 600 and limits["requests"].remaining == 19


def _achieved(state, burst, per_minute):
    """Admitted requests beyond the burst per second of the server's clock, as a share of the limit."""
    times = state.admitted_times
    return (len(times) - burst) / (times[-1] - times[0]) / (per_minute / 60.0)


def test_requests_are_paced_under_the_servers_stated_limit():
    # 1200/min with a burst of 5: 40 requests need >= 1.75 s; 32 in flight would draw ~27 429s unpaced.
    with OpenAITestServer(rpm=1200, rpm_burst=5, delay_s=0.05) as server:
        client = _client(server, max_concurrency=32, max_retries=8)
        results = _ask(client, 40)
        state = server.state
    assert sorted(k for k, c, e in results if c) == sorted(str(i) for i in range(40))
    assert state.rate_limited <= 2, state.rate_limited  # <= 5% of the requests
    assert _achieved(state, 5, 1200) >= 0.9
    assert client.limiter.buckets["requests"].capacity == pytest.approx(2.5, abs=0.5)  # half the burst, inferred


def test_token_limit_paces_by_prompt_plus_max_tokens():
    # 60k tokens/min, burst 3000; each request counts ~8 prompt + 500 max_tokens: ~2 requests/s.
    with OpenAITestServer(tpm=60_000, tpm_burst=3000) as server:
        client = _client(server, max_concurrency=16, max_retries=8)
        start = time.monotonic()
        results = _ask(client, 12, max_tokens=500)
        elapsed = time.monotonic() - start
        state = server.state
    assert all(c for _, c, _ in results)
    assert state.rate_limited <= 1, state.rate_limited
    assert elapsed >= (12 * 508 - 3000) / 1000 * 0.9  # the bound the token limit sets


def test_configured_limit_paces_a_server_without_headers():
    with OpenAITestServer(rpm=1200, rpm_burst=5, ratelimit_headers=False) as server:
        client = _client(server, max_concurrency=32, max_retries=8, rpm_limit=1200)
        results = _ask(client, 30)
        state = server.state
    assert all(c for _, c, _ in results)
    assert state.rate_limited <= 3, state.rate_limited  # one second's burst assumed: <= 20 at once


def test_no_limits_no_pacing():
    with OpenAITestServer(delay_s=0.2) as server:
        client = _client(server, max_concurrency=16)
        start = time.monotonic()
        _ask(client, 16)
        elapsed = time.monotonic() - start
    # the probe, then the other 15 together: two latencies, not sixteen
    assert elapsed < 1.5 and not client.limiter.buckets
