"""Benchmark: pacing under a rate limit (alpacare/llm/ratelimit.py) against unpaced sending.

The issue's case: ``--n`` answers (300) at ``max_concurrency=32`` against the loopback
OpenAI-compatible server (tests/openai_server.py, real HTTP, the real openai client) limited as
OpenAI limits, ``--rpm`` requests/min (600) with a burst of ``--burst`` (20), each reply taking
``--latency`` seconds (1-3). Two clients side by side:

- unpaced: the client before pacing (every slot sends at once, a 429 backs off and retries);
- paced: the client as it is (limits read from the reply headers, nothing configured).

Printed per client: wall time, the bound the limit sets ((n - burst) / rate), requests/min
achieved from the first admitted request on (a paced client waits for the first reply, once, to
learn the limits) and its share of the limit, 429 replies (share of
requests), requests that failed; then paced/unpaced ratios. Goal (issue 16): <= 5% 429s and >= 90%
of the limit.

    python benchmarks/bench_ratelimit.py                  # ~1.5 min
    python benchmarks/bench_ratelimit.py --n 100 --rpm 1200
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omegaconf import OmegaConf  # noqa: E402

from alpacare.config import EndpointConfig  # noqa: E402
from alpacare.errors import EndpointError  # noqa: E402
from alpacare.llm.client import LLMClient, Request  # noqa: E402
from alpacare.llm.ratelimit import RateLimiter, Ticket  # noqa: E402
from tests.openai_server import OpenAITestServer  # noqa: E402


class Unpaced(RateLimiter):
    """The client before pacing: no waiting, nothing learned."""

    async def acquire(self, tokens: float) -> Ticket:
        return Ticket({}, {}, {})

    def observe(self, ticket, headers, admitted=True) -> None:
        pass


def run(args: argparse.Namespace, paced: bool) -> dict:
    latency = tuple(float(x) for x in args.latency.split("-"))
    with OpenAITestServer(keep_alive=True, rpm=args.rpm, rpm_burst=args.burst, delay_s=latency, seed=1) as server:
        cfg = OmegaConf.structured(EndpointConfig(name="bench", model="test-teacher", base_url=server.url,
                                                  max_concurrency=args.concurrency, max_retries=args.max_retries))
        client = LLMClient(cfg, server.url, "not-needed", cache=None)
        if not paced:
            client.limiter = Unpaced()
        requests = [Request(key=str(i), messages=({"role": "user", "content": f"Question {i} about dosing?"},),
                            temperature=1.0, top_p=1.0, max_tokens=64) for i in range(args.n)]
        answered = []
        start = time.monotonic()
        stopped = ""
        try:
            client.run(requests, lambda r, c, e: answered.append(c is not None), desc="paced" if paced else "unpaced")
        except EndpointError as e:
            stopped = str(e)
        wall = time.monotonic() - start
        state = server.state
        times = state.admitted_times
    # Steady rate: after the first admitted request (a paced client waits for that one's reply, to
    # learn the limits, before sending more: one reply's latency, once per client).
    rate = (len(times) - 1 - args.burst) / (times[-1] - times[1]) * 60 if len(times) > args.burst + 2 else 0.0
    return {"wall_s": wall, "answered": sum(answered), "http_429": state.rate_limited,
            "rpm": rate, "stopped": stopped}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--rpm", type=float, default=600)
    p.add_argument("--burst", type=float, default=20)
    p.add_argument("--latency", default="1-3", help="seconds per reply, LOW-HIGH")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--max-retries", type=int, default=6, help="the endpoint default")
    args = p.parse_args()
    bound = (args.n - args.burst) / (args.rpm / 60)
    print(f"{args.n} requests, max_concurrency={args.concurrency}, limit {args.rpm:.0f}/min (burst {args.burst:.0f}), "
          f"latency {args.latency} s; bound set by the limit: {bound:.1f} s")
    rows = {name: run(args, paced) for name, paced in (("unpaced", False), ("paced", True))}
    print(f"\n{'client':<9} {'wall s':>7} {'answered':>9} {'429s':>6} {'429 share':>9} {'steady req/min':>14} {'of limit':>8}")
    for name, r in rows.items():
        print(f"{name:<9} {r['wall_s']:7.1f} {r['answered']:9d} {r['http_429']:6d} {r['http_429'] / args.n:9.1%} "
              f"{r['rpm']:14.0f} {r['rpm'] / args.rpm:8.1%}" + (f"  stopped: {r['stopped'][:80]}" if r["stopped"] else ""))
    u, q = rows["unpaced"], rows["paced"]
    print(f"\npaced / unpaced: 429s {q['http_429']}/{u['http_429']}, answered {q['answered']}/{u['answered']}, "
          f"wall {q['wall_s'] / u['wall_s']:.2f}x; paced wall / bound {q['wall_s'] / bound:.2f}")
    ok = q["http_429"] <= 0.05 * args.n and q["rpm"] >= 0.9 * args.rpm
    print(f"goal (<= 5% 429s, >= 90% of the limit): {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
