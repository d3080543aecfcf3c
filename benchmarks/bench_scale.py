"""Benchmark: a paper-scale rehearsal of the paid half of the pipeline, live and through the Batch API.

The data half at the paper's size (``instructions`` to ``--count`` tasks (52,000), ``dedup``,
``responses`` for every kept task, the ``report`` stage's dataset analysis) and the ``judge`` over
the three test sets x four references (both orders: 2 x (216 x 4 + 1,000 x 4 + 805 x 1) = 11,346
verdicts), each stage run by the real CLI in its own process, against the loopback
OpenAI-compatible server of the tests (tests/openai_server.py: real HTTP, the real openai client)
with ``--latency`` seconds per reply (1-3), a rate limit of ``--rpm`` requests/min (burst
``--burst``) stated in OpenAI's headers, and its Batch API.

The server's tasks are realistic instructions (benchmarks/bench_dedup.py's corpus: the release's
real instructions interleaved with near-duplicates and splices), so dedup has real work to do and
drops about as many as it would; the judge answers one of the three verdicts at random.

Per stage and mode it prints: wall time of the process, the stage's own time (stats.json
``seconds``: without the CLI's start), the bound the rate limit sets ((requests admitted - burst) /
rate) and its share of the stage's time, requests, 429 replies, client CPU per 1,000 requests, peak RSS of the stage's
process, and the size of the work log, batch log and response cache. Goals (issue 16): >= 90% of
the bound; no stage above 2 GB RSS at 52k; dedup, the dataset analysis and the report under a
minute each.

The defaults (3,000 requests/min, burst 200, 1-3 s, 256 in flight) are chosen for the 2-core test
machine shared with other jobs: the whole 52k rehearsal took 17 minutes there (live 14, batch 3).
The live half's bound is requests / rate, so a lower limit only stretches it; a higher one measures
the machine instead of the pacing (at 4,800/min the client reached 64% of the bound there, with
the load average at 12 on 2 cores).

    nice python benchmarks/bench_scale.py                        # 52k, live then batch
    python benchmarks/bench_scale.py --count 2000 --modes live   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_dedup import data_dir, make_corpus  # noqa: E402

from tests.openai_server import TYPES, VIEWS, OpenAITestServer  # noqa: E402

TEST_SETS = ("medinstruct", "icliniq", "alpaca_eval")
VERDICTS = ("Output (a)", "Output (b)", "Tie")


def _tasks(corpus: list[str]):
    def task(n: int) -> dict:
        text = corpus[n % len(corpus)]
        return {"type": TYPES[n % len(TYPES)], "topic": "medicine", "view": VIEWS[n % len(VIEWS)],
                "difficulty": n % 5 + 1, "instruction": text, "input": "<noinput>"}
    return task


def _reply(body: dict) -> str:
    prompt = body["messages"][-1]["content"]
    if "Output (a)" in prompt and "Output (b)" in prompt:  # the judge
        return random.Random(prompt).choice(VERDICTS)
    first = prompt.splitlines()[0][:120]
    return (f"{first} The assessment starts with the history and examination; the diagnosis rests on the "
            f"findings; management follows current guidelines, with follow-up and safety-netting advice.")


def _write_predictions(run_dir: Path, cache_dir: str) -> None:
    """predict/<test_set>.jsonl for the judge: every item answered (a stand-in model's text)."""
    from alpacare.data.eval_sets import load_items

    for name in TEST_SETS:
        items = load_items(name, cache_dir)
        path = run_dir / "predict" / f"{name}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps({**it, "output": f"A careful answer to: {it['instruction'][:80]}",
                                            "generator": "rehearsal"}) + "\n" for it in items))


def _peak_rss_mb(pid: int, peak: list[float], done: threading.Event) -> None:
    """VmHWM of ``pid`` (its peak RSS since exec), polled until it exits. Not wait4's ru_maxrss:
    a forked child starts with its parent's figure (this process holds the server's batch files)."""
    while not done.is_set():
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak[0] = max(peak[0], int(line.split()[1]) / 1024)
        except (OSError, ValueError):
            pass
        done.wait(0.2)


def _run_stage(args: list[str], env: dict, log_path: Path) -> dict:
    """One CLI invocation in its own process: wall time, CPU (wait4) and peak RSS (VmHWM)."""
    start = time.monotonic()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "alpacare", *args], cwd=REPO, env=env,
                                stdout=log, stderr=log)
        peak, done = [0.0], threading.Event()
        watcher = threading.Thread(target=_peak_rss_mb, args=(proc.pid, peak, done), daemon=True)
        watcher.start()
        _, status, usage = os.wait4(proc.pid, 0)
        done.set()
        watcher.join()
    wall = time.monotonic() - start
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code
    if code != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
        raise SystemExit(f"stage failed ({' '.join(args[:1])}): exit {code}: {' | '.join(tail)}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "rss_mb": peak[0]}


def _size_mb(*paths: Path) -> float:
    total = 0
    for p in paths:
        for f in (p, Path(str(p) + "-wal")):
            if f.exists():
                total += f.stat().st_size
    return total / 1e6


def rehearse(mode: str, args: argparse.Namespace, corpus: list[str], root: Path) -> list[dict]:
    run_dir = root / mode
    cache_dir = root / f"cache-{mode}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "ALPACARE_CACHE_DIR": str(cache_dir),
           "PYTHONPATH": str(REPO)}
    latency = tuple(float(x) for x in args.latency.split("-"))
    rows = []
    with OpenAITestServer(keep_alive=True, rpm=args.rpm, rpm_burst=args.burst, delay_s=latency, task=_tasks(corpus), reply=_reply,
                          count_prompt_tokens=True, batch_run_s=args.batch_run_s, seed=1) as server:
        common = ["logger=none", f"hydra.run.dir={run_dir}"]
        for role, model in (("teacher", "test-teacher"), ("judge", "test-judge")):
            common += [f"{role}=openai_compatible", f"{role}.base_url={server.url}", f"{role}.model={model}",
                       f"{role}.max_concurrency={args.concurrency}", f"{role}.max_retries=10", f"{role}.timeout_s=60",
                       f"{role}.price_input_per_1m=0.5", f"{role}.price_output_per_1m=1.5"]
            if mode == "batch":
                common += [f"{role}.batch=true", f"{role}.batch_poll_s={args.poll_s}", f"{role}.batch_discount=0.5"]
        common += ["judge.structured_output=false", "instructions.tasks_per_request=12", f"instructions.count={args.count}"]
        stages = [
            ("instructions", ["stages=[instructions]"], run_dir / "instructions" / "requests.jsonl"),
            ("dedup", ["stages=[dedup]"], None),
            ("responses", ["stages=[responses]"], run_dir / "responses" / "answers.jsonl"),
            ("report", ["stages=[report]"], None),
            ("judge", ["stages=[judge]", f"judge.test_sets=[{','.join(TEST_SETS)}]"], run_dir / "judge" / "requests.jsonl"),
        ]
        for name, extra, work_log in stages:
            if name == "judge":
                _write_predictions(run_dir, str(cache_dir))
            state = server.state
            before = (len(state.admitted_times), state.rate_limited, state.batch_lines_received)
            print(f"[{mode}] {name} ...", flush=True)
            r = _run_stage([*extra, *common], env, root / f"{mode}.log")
            admitted = len(state.admitted_times) - before[0]
            requests = admitted + state.batch_lines_received - before[2]
            bound = max(0.0, admitted - args.burst) / (args.rpm / 60) if admitted else 0.0
            stats = json.loads((run_dir / name / "stats.json").read_text())
            rows.append({"mode": mode, "stage": name, **r, "requests": requests, "http_429": state.rate_limited - before[1],
                         "bound_s": bound, "work_log_mb": _size_mb(work_log) if work_log else 0.0,
                         "batch_log_mb": _size_mb(run_dir / name / "batches.jsonl"),
                         "records": stats.get("records_out", stats.get("tasks_kept")), "stage_s": stats["seconds"],
                         "cost_usd": stats.get("cost_usd")})
            print(_fmt(rows[-1]), flush=True)
        cache = _size_mb(cache_dir / "teacher_cache.sqlite")
        rows.append({"mode": mode, "stage": "(cache)", "cache_mb": cache})
        rounds = sum(1 for x in (run_dir / "instructions" / "requests.jsonl").read_text().splitlines())
        if mode == "batch":
            files = [json.loads(x) for x in (run_dir / "instructions" / "batches.jsonl").read_text().splitlines()]
            rows[-1]["instruction_rounds"] = sum(f["event"] == "file" for f in files)
            rows[-1]["response_batches"] = sum(json.loads(x)["event"] == "file"
                                               for x in (run_dir / "responses" / "batches.jsonl").read_text().splitlines())
        rows[-1]["instruction_requests"] = rounds
    return rows


HEADER = (f"{'mode':<6} {'stage':<13} {'wall s':>7} {'stage s':>7} {'bound s':>8} {'of bound':>8} {'requests':>8} {'429s':>5} "
          f"{'CPU s/1k req':>12} {'peak RSS MB':>11} {'work log MB':>11} {'batch log MB':>12} {'records':>8} {'USD':>8}")


def _fmt(r: dict) -> str:
    share = f"{r['bound_s'] / r['stage_s']:.0%}" if r.get("bound_s") else "-"
    per_k = f"{r['cpu_s'] / r['requests'] * 1000:.1f}" if r.get("requests") else "-"
    return (f"{r['mode']:<6} {r['stage']:<13} {r['wall_s']:7.1f} {r['stage_s']:7.1f} {r['bound_s']:8.1f} {share:>8} {r['requests']:8d} "
            f"{r['http_429']:5d} {per_k:>12} {r['rss_mb']:11.0f} {r['work_log_mb']:11.1f} {r['batch_log_mb']:12.1f} "
            f"{str(r['records']):>8} {r['cost_usd'] if r['cost_usd'] is not None else '-':>8}")


# OpenAI's published figures, for what the paper's run would take. Limits: the usage-tier tables
# of OpenAI's rate-limit guide (platform.openai.com/docs/guides/rate-limits; tier 1 and tier 4,
# as copied in openai-cookbook examples/data/oai_docs/tier-four.txt and OpenAI's forum): requests/min,
# tokens/min, batch queue (prompt tokens enqueued). Prices: conf/endpoint/gpt4.yaml and
# gpt35_turbo.yaml (OpenAI's list prices, USD per 1M input/output tokens); batch lines at half price.
LIMITS = {
    "gpt-4": {"tier 1": (500, 10_000, 100_000), "tier 4": (10_000, 300_000, 30_000_000)},
    "gpt-3.5-turbo": {"tier 1": (3_500, 200_000, 2_000_000), "tier 4": (10_000, 1_000_000, 100_000_000)},
}
PRICES = {"gpt-4": (30.0, 60.0), "gpt-3.5-turbo": (0.5, 1.5)}
# Typical completion lengths (tokens), for cost: 12 tasks of a seed task's length; an answer of
# ~250 tokens (AlpaCare's answers, config.py's responses.max_tokens note); a verdict of ~5.
ANSWER_TOKENS, VERDICT_TOKENS = 250, 5


def paper_estimate(cache_dir: str) -> None:
    """The paper's paid work at OpenAI's limits and prices, from the project's real prompts
    (tokens estimated at 4 characters each): live time = the slower of requests/RPM and
    (prompt + max_tokens)/TPM, as OpenAI counts; batch: queue fills needed (each up to 24 h)."""
    from alpacare.config import InstructionsConfig, JudgeConfig, ResponsesConfig
    from alpacare.data.eval_sets import EVAL_SETS, load_items, load_reference
    from alpacare.data.seeds import load_seed_tasks
    from alpacare.prompts import instructions as ip, judge as jp, responses as rp

    def tok(messages) -> float:
        return sum(len(m["content"]) for m in messages) / 4

    seeds = load_seed_tasks(None, cache_dir, closed_types=False)
    rng = random.Random(0)
    ic, rc, jc = InstructionsConfig(), ResponsesConfig(), JudgeConfig()
    instr_prompt = sum(tok(ip.build_messages(rng.sample(seeds, 3), 12, False)) for _ in range(200)) / 200
    task_tokens = sum(len(json.dumps(t)) for t in seeds) / len(seeds) / 4
    answer_prompt = sum(tok(rp.build_messages(t["instruction"], t.get("input"), "paper")) for t in seeds) / len(seeds)
    judge_prompts = []
    for name in TEST_SETS:
        items = load_items(name, cache_dir)
        refs = sorted(EVAL_SETS[name].references)  # alpaca_eval has text-davinci-003 only
        stand_in = load_reference(name, refs[0], items, cache_dir)  # as the model's answers
        for ref in refs:
            answers = load_reference(name, ref, items, cache_dir)
            judge_prompts += [2 * tok(jp.build_messages(it["instruction"], it["input"], a or "", b or ""))
                              for it, a, b in zip(items, stand_in, answers)]
    n_instr = -(-52_000 // 12)
    work = [  # stage, model, requests, prompt tokens, typical completion tokens, max_tokens per request
        ("instructions", "gpt-4", n_instr, n_instr * instr_prompt, n_instr * 12 * task_tokens, ic.max_tokens),
        ("responses", "gpt-3.5-turbo", 52_000, 52_000 * answer_prompt, 52_000 * ANSWER_TOKENS, rc.max_tokens),
        ("judge (one model)", "gpt-3.5-turbo", 2 * len(judge_prompts), sum(judge_prompts),
         2 * len(judge_prompts) * VERDICT_TOKENS, jc.max_tokens),
    ]
    print("\nThe paper's run at OpenAI's published limits and prices (prompts measured from this project's "
          "prompts at 4 chars/token):")
    print(f"{'stage':<18} {'model':<14} {'requests':>8} {'prompt Mtok':>11} {'output Mtok':>11} {'live USD':>9} "
          f"{'batch USD':>9} {'tier 1 live':>11} {'tier 4 live':>11} {'tier 1 queue fills':>18}")
    for stage, model, n, prompt, out, max_tokens in work:
        pin, pout = PRICES[model]
        usd = (prompt * pin + out * pout) / 1e6
        times = []
        for tier in ("tier 1", "tier 4"):
            rpm, tpm, _ = LIMITS[model][tier]
            minutes = max(n / rpm, (prompt + n * max_tokens) / tpm)
            times.append(f"{minutes / 60:.1f} h" if minutes >= 60 else f"{minutes:.0f} min")
        fills = -(-prompt // LIMITS[model]["tier 1"][2])
        print(f"{stage:<18} {model:<14} {n:8d} {prompt / 1e6:11.1f} {out / 1e6:11.1f} {usd:9.0f} {usd / 2:9.0f} "
              f"{times[0]:>11} {times[1]:>11} {fills:18.0f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=52000, help="instructions to generate (paper: 52k)")
    p.add_argument("--rpm", type=float, default=3000, help="the server's limit, requests/min")
    p.add_argument("--burst", type=float, default=200)
    p.add_argument("--latency", default="1-3", help="seconds per reply, LOW-HIGH")
    p.add_argument("--concurrency", type=int, default=256, help="<role>.max_concurrency")
    p.add_argument("--modes", default="live,batch")
    p.add_argument("--poll-s", type=float, default=2.0, help="<role>.batch_poll_s")
    p.add_argument("--batch-run-s", type=float, default=10.0, help="how long the server takes per batch")
    p.add_argument("--keep", default=None, help="directory for the run dirs (default: a temp dir, removed)")
    p.add_argument("--paper-only", action="store_true", help="print only the paper-run estimate")
    args = p.parse_args()
    if "ALPACARE_DATA_DIR" not in os.environ and data_dir() is not None:  # the release's files, as the tests find them
        os.environ["ALPACARE_DATA_DIR"] = str(data_dir())
    cache = os.environ.get("ALPACARE_CACHE_DIR", str(Path.home() / ".cache" / "alpacare"))
    if args.paper_only:
        paper_estimate(cache)
        return
    print(f"rehearsal: {args.count} instructions; server limit {args.rpm:.0f} req/min (burst {args.burst:.0f}), "
          f"latency {args.latency} s, max_concurrency {args.concurrency}; batch: {args.batch_run_s:.0f} s per batch, "
          f"poll every {args.poll_s:.0f} s", flush=True)
    t = time.monotonic()
    _, corpus = make_corpus(args.count + 1000, seed=0)
    print(f"corpus of {len(corpus)} instructions built in {time.monotonic() - t:.0f} s", flush=True)
    with tempfile.TemporaryDirectory(prefix="alpacare-scale-") as tmp:
        root = Path(args.keep or tmp)
        root.mkdir(parents=True, exist_ok=True)
        rows = [r for mode in args.modes.split(",") for r in rehearse(mode, args, corpus, root)]
    print("\n" + HEADER)
    for r in rows:
        if r["stage"] == "(cache)":
            extra = {k: v for k, v in r.items() if k not in ("mode", "stage")}
            print(f"{r['mode']:<6} {'(totals)':<13} " + ", ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                                                             for k, v in extra.items()))
        else:
            print(_fmt(r))
    paper_estimate(cache)
    for mode in args.modes.split(","):
        paced = [r for r in rows if r["mode"] == mode and r.get("bound_s")]
        if paced:
            wall, bound = sum(r["stage_s"] for r in paced), sum(r["bound_s"] for r in paced)
            print(f"{mode}: paced stages ran {wall:.0f} s (their own time, without the CLI's start) against a bound "
                  f"of {bound:.0f} s: {bound / wall:.0%} of the bound")
        top = max((r for r in rows if r["mode"] == mode and "rss_mb" in r), key=lambda r: r["rss_mb"], default=None)
        if top:
            print(f"{mode}: highest peak RSS {top['rss_mb']:.0f} MB ({top['stage']})")


if __name__ == "__main__":
    main()
