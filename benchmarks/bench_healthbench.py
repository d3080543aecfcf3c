"""Benchmark: HealthBench grading at full size against a rate-limited grader.

The judge stage's grading path (alpacare/evaluation/healthbench.py ``grade``: the real openai
client, pacing read from the server's x-ratelimit headers, the response cache, the work log with an
fsync per verdict, retries of unparsed replies) grades ``--conversations`` (5,000, HealthBench's
size) synthetic conversations with ``--criteria`` rubric items in all (48,562, HealthBench's
count), then scores them (``score_set``: 1,000 bootstrap resamples per metric). The grader is the
loopback OpenAI-compatible server (tests/openai_server.py) in a child process, limited to
``--rpm`` requests per minute (5,000) with a burst of
``--burst``, each reply taking ``--latency`` seconds, answering in simple-evals' fenced JSON and,
every ``--bad-every`` request, with text that does not parse (asked again, as the stage does).

Printed: the bound the limit sets ((requests - burst) / rate), the wall time and requests/min
achieved (from the first admitted request, as benchmarks/bench_ratelimit.py measures) with its
share of the limit, the 429s, the scoring time, and the peak memory (RSS) of this process (the
grading side only: the server runs in its own process). Goal (issue 26): >= 90% of the limit.

    python benchmarks/bench_healthbench.py                          # ~10 minutes here
    python benchmarks/bench_healthbench.py --conversations 500 --criteria 4856   # ~1 minute
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

WORDS = ("fever cough chest pain dizziness rash headache nausea insulin metformin asthma inhaler pregnancy "
         "breastfeeding ibuprofen dose weight child blood pressure stroke emergency clinic doctor week "
         "symptoms history allergy antibiotic infection swelling sleep anxiety").split()


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def conversations(n: int, criteria: int, seed: int = 0) -> list[dict]:
    """``n`` conversations (1-3 user turns, a system turn in some) with ``criteria`` rubric items in
    all, tags as HealthBench's, and an answer of ~250 words each."""
    rng = random.Random(seed)
    counts = [rng.randint(3, 16) for _ in range(n)]
    while sum(counts) != criteria:
        k = rng.randrange(n)
        counts[k] += 1 if sum(counts) < criteria else (-1 if counts[k] > 1 else 0)
    out = []
    for i, count in enumerate(counts):
        prompt = [{"role": "system", "content": _text(rng, 20)}] if i % 5 == 0 else []
        for turn in range(rng.randint(1, 3)):
            if turn:
                prompt.append({"role": "assistant", "content": _text(rng, 60)})
            prompt.append({"role": "user", "content": _text(rng, rng.randint(15, 80))})
        rubrics = [{"criterion": f"Criterion {i}.{k}: " + _text(rng, 14), "points": rng.choice([-8, -5, -2, 2, 3, 5, 7, 9]),
                    "tags": [f"axis:{rng.choice(['accuracy', 'completeness', 'communication_quality', 'context_awareness'])}",
                             "level:example"]} for k in range(count)]
        rubrics[0]["points"] = 5
        out.append({"index": i, "prompt_id": f"bench-{i}", "prompt": prompt, "rubrics": rubrics,
                    "example_tags": [f"theme:{rng.choice(['emergency_referrals', 'context_seeking', 'hedging', 'communication'])}"]})
    return out


def grader_reply(body: dict, bad_every: int) -> str:
    """simple-evals' fenced JSON verdict, decided by a hash of the prompt; every ``bad_every``-th
    prompt (by hash) answers first with text that does not parse."""
    digest = int(hashlib.sha256(body["messages"][-1]["content"].encode()).hexdigest(), 16)
    if bad_every and digest % bad_every == 0 and body.get("_attempt", 0) == 0:
        return "I think the response is reasonable."
    return "```json\n" + json.dumps({"explanation": "The response addresses it.", "criteria_met": digest % 3 != 0}) + "\n```"


def serve(conn, rpm: float, burst: float, latency: tuple[float, float], bad_every: int) -> None:
    """The grader server in a child process: sends its URL, serves until told to stop, then sends its books."""
    from tests.openai_server import OpenAITestServer

    seen: dict[str, int] = {}

    def reply(body: dict) -> str:
        key = body["messages"][-1]["content"]
        attempt = seen.get(key, 0)
        seen[key] = attempt + 1
        return grader_reply({**body, "_attempt": attempt}, bad_every)

    with OpenAITestServer(keep_alive=True, rpm=rpm, rpm_burst=burst, delay_s=latency, reply=reply,
                          keep_requests=False) as server:
        conn.send(server.url)
        conn.recv()  # stop
        state = server.state
        conn.send({"admitted_times": state.admitted_times, "rate_limited": state.rate_limited, "received": state.received})


def data_dir_with_protocol() -> None:
    """simple-evals' pinned files where load_protocol finds them: the data dir as it is, or a temp
    dir linking the shared reference copy (../shared/simple-evals) when nothing was fetched."""
    from alpacare.errors import DataError
    from alpacare.prompts.healthbench import load_protocol

    try:
        load_protocol()
    except DataError:
        shared = REPO.parent / "shared" / "simple-evals"
        if not shared.is_dir():
            raise
        tmp = Path(tempfile.mkdtemp(prefix="hb-bench-data-"))
        (tmp / "simple-evals").symlink_to(shared)
        os.environ["ALPACARE_DATA_DIR"] = str(tmp)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--conversations", type=int, default=5000)
    p.add_argument("--criteria", type=int, default=48562)
    p.add_argument("--rpm", type=float, default=5000)
    p.add_argument("--burst", type=float, default=200)
    p.add_argument("--latency", default="0.5-1.5", help="seconds per reply, LOW-HIGH")
    p.add_argument("--concurrency", type=int, default=128)
    p.add_argument("--bad-every", type=int, default=200, help="about one prompt in N first gets an unparseable reply")
    args = p.parse_args()

    from omegaconf import OmegaConf

    from alpacare.config import HealthBenchConfig, JudgeConfig
    from alpacare.evaluation import healthbench as hb_eval
    from alpacare.llm.client import LLMClient, ResponseCache, endpoint_identity
    from alpacare.prompts.healthbench import load_protocol

    data_dir_with_protocol()
    protocol = load_protocol()
    convs = conversations(args.conversations, args.criteria)
    pairs = [(c, _text(random.Random(c["index"]), 250)) for c in convs]
    subjects = hb_eval.rubric_subjects("bench", pairs, protocol)
    prompt_chars = sum(len(u) for _, u in subjects) / len(subjects)

    latency = tuple(float(x) for x in args.latency.split("-"))
    parent, child = mp.Pipe()
    server = mp.Process(target=serve, args=(child, args.rpm, args.burst, latency, args.bad_every), daemon=True)
    server.start()
    url = parent.recv()
    work = Path(tempfile.mkdtemp(prefix="hb-bench-"))
    cfg = OmegaConf.structured(JudgeConfig(name="bench", model="bench-grader", base_url=url, max_concurrency=args.concurrency,
                                           price_input_per_1m=2.0, price_output_per_1m=8.0))
    hb = OmegaConf.structured(HealthBenchConfig())
    settings = hb_eval.grader_settings(cfg, hb, protocol, "healthbench")
    cache = ResponseCache(work / "cache.sqlite")
    n_requests_bound = len(subjects)
    print(f"{len(convs):,} conversations, {len(subjects):,} rubric items (grader prompt ~{prompt_chars:,.0f} chars), "
          f"limit {args.rpm:,.0f}/min (burst {args.burst:.0f}), latency {args.latency} s, max_concurrency {args.concurrency}")
    start = time.monotonic()
    graded = hb_eval.grade(subjects, protocol, settings, cfg, endpoint_identity(cfg, url), work / "requests.jsonl",
                           work / "batches.jsonl", lambda: LLMClient(cfg, url, "not-needed", cache), "bench grader")
    grading_s = time.monotonic() - start
    t0 = time.monotonic()
    _, _, row = hb_eval.score_set("bench", pairs, graded.graded, hb.bootstrap, hb.bootstrap_seed)
    scoring_s = time.monotonic() - t0
    cache.close()
    parent.send("stop")
    books = parent.recv()
    server.join(timeout=10)

    times = books["admitted_times"]
    sent = books["received"]
    bound = (sent - args.burst) / (args.rpm / 60)
    steady = (len(times) - 1 - args.burst) / (times[-1] - times[1]) * 60 if len(times) > args.burst + 2 else 0.0
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    retried = sum(g.attempts > 1 for g in graded.graded.values())
    print(f"\nrequests sent        {sent:,} ({n_requests_bound:,} rubric items + {sent - n_requests_bound:,} re-asks; "
          f"{retried:,} items re-asked, {row['criteria_unparsed']:,} unparsed)")
    print(f"429 replies          {books['rate_limited']:,} ({books['rate_limited'] / max(sent, 1):.2%} of requests)")
    print(f"grading wall         {grading_s:,.1f} s; bound set by the limit {bound:,.1f} s; wall / bound {grading_s / bound:.3f}")
    print(f"steady rate          {steady:,.0f} req/min = {steady / args.rpm:.1%} of the limit")
    print(f"scoring              {scoring_s:.1f} s (score {row['score']:.4f} ± {row['bootstrap_std']:.4f}, n={row['n']})")
    print(f"peak memory (RSS)    {peak_gb:.2f} GB (this process: client, cache, work log, scores)")
    ok = steady >= 0.9 * args.rpm
    print(f"goal (>= 90% of the limit): {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
