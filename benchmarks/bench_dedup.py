"""Benchmark: alpacare.data.rouge filters against the rouge_score reference, on a realistic corpus.

Corpus: the real instructions shipped with the AlpaCare release (167 seed tasks, 216
MedInstruct-test instructions, 805 AlpacaFarm instructions from model_outputs/*/alpaca_eval),
interleaved with generated texts: near-duplicates of earlier items (word drops, swaps,
insertions, substitutions, case and punctuation changes) and splices of two earlier items (the
first part of one, the rest of another) that read like new tasks. Deterministic for a given
--seed, and every size is a prefix of the largest, so sizes compare.

Reference: the Alpaca/self-instruct loop, one ``rouge_scorer._score_lcs`` per pair, fanned out
over a ``multiprocessing.Pool`` of --workers processes. It is given two advantages over the
released scripts: the Pool is created once (Alpaca and AlpaCare open one per instruction) and
every text is tokenized once.

Scale corpus (``make_scale_corpus``, sections 3 and 4): every real instruction, 10% edited copies of
earlier ones, and Zipf filler (new instructions as long as real ones, words by a Zipf law over the
real words by frequency and, past them, made-up words, so the vocabulary grows with n as in real
text); ten times n is ten times the near-duplicates and filler, as in issue 28's measurements.

Run from the repo root (about 10 minutes with the defaults on 2 cores)::

    python benchmarks/bench_dedup.py
    python benchmarks/bench_dedup.py --ref-sizes "" --sizes "" --cli-sizes ""   # the scale table alone
    python benchmarks/bench_dedup.py --scale-sizes 52000,520000,5000000       # + 5M (long)
    python benchmarks/bench_dedup.py --write-corpus corpus.jsonl --n 20000    # stage input file

Sections printed:
1. ours vs reference side by side at each --ref-sizes size (kept sets asserted identical), the
   directly measured speed-up at the largest size, and the reference time extrapolated to 20k
   (fitted on the measured sizes; clearly labelled).
2. ours alone at each --sizes size, each in a fresh process: filter time, process peak RSS
   (VmHWM from /proc/self/status of that process: interpreter, numba, corpus and filter
   together; ``ru_maxrss`` is not used because Linux carries it over from the parent across
   exec) and kept count.

3. scale (greedy, no seeds, as issue 28 measured): the index at each --scale-sizes size and the old
   scan (alpacare/data/rouge.py at --baseline-rev, loaded from git) at --baseline-size, on the same
   corpus in the same run, each in a fresh process: filter seconds, instructions per second,
   candidates and LCS runs per instruction, peak RSS, kept (asserted equal between old and new);
   the ratios, and the issue's goals checked.
4. the stage end to end through the CLI at each --cli-sizes size (stages=[dedup], no seeds, no
   contamination check, logger=none): wall seconds, filter seconds and the progress lines it logged.

``reference_greedy`` / ``reference_pairwise`` are importable (tests/test_rouge.py uses them).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Optional, Sequence

REPO = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------- reference


def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def _scores_against(new_tokens, others, pool=None) -> list[float]:
    from rouge_score import rouge_scorer

    if pool is None:
        scores = [rouge_scorer._score_lcs(new_tokens, t) for t in others]
    else:
        scores = pool.map(partial(rouge_scorer._score_lcs, new_tokens), others)
    return [s.fmeasure for s in scores]


def reference_greedy(instructions: Sequence[str], threshold: float, seeds: Sequence[str] = (), pool=None):
    """Alpaca's loop: keep iff max ROUGE-L vs seeds + kept-so-far <= threshold.

    Returns (kept indices, max similarity per instruction; 0.0 when nothing to compare with).
    """
    tokenizer = _scorer()._tokenizer
    pool_tokens = [tokenizer.tokenize(s) for s in seeds]
    kept, maxima = [], []
    for i, inst in enumerate(instructions):
        tokens = tokenizer.tokenize(inst)
        scores = _scores_against(tokens, pool_tokens, pool)
        best = max(scores, default=0.0)
        maxima.append(best)
        if best > threshold:
            continue
        kept.append(i)
        pool_tokens.append(tokens)
    return kept, maxima


def reference_pairwise(instructions: Sequence[str], threshold: float, seeds: Sequence[str] = (), pool=None):
    """AlpaCare's filter.py: drop i if any other instruction (or seed) scores above threshold."""
    tokenizer = _scorer()._tokenizer
    tokens = [tokenizer.tokenize(t) for t in instructions]
    seed_tokens = [tokenizer.tokenize(s) for s in seeds]
    kept, maxima = [], []
    for i, tok in enumerate(tokens):
        others = seed_tokens + tokens[:i] + tokens[i + 1:]
        best = max(_scores_against(tok, others, pool), default=0.0)
        maxima.append(best)
        if not best > threshold:
            kept.append(i)
    return kept, maxima


# --------------------------------------------------------------------------- corpus


def data_dir() -> Optional[Path]:
    """$ALPACARE_DATA_DIR, else ../shared/alpacare-data next to the repo; None if absent."""
    for cand in (os.environ.get("ALPACARE_DATA_DIR"), REPO.parent / "shared" / "alpacare-data"):
        if cand and (Path(cand) / "med_seed.json").is_file():
            return Path(cand)
    return None


def load_real_instructions(root: Path) -> tuple[list[str], list[str]]:
    """(seed instructions, other real instructions: MedInstruct-test + AlpacaFarm), deduplicated."""
    seeds = [r["instruction"] for r in json.loads((root / "med_seed.json").read_text("utf-8"))]
    others: dict[str, None] = {}
    with open(root / "MedInstruct-test.jsonl", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                others[json.loads(line)["instruction"]] = None
    for path in sorted(glob.glob(str(root / "model_outputs" / "*" / "alpaca_eval" / "seed_0.json"))):
        for r in json.loads(Path(path).read_text("utf-8")):
            others[r["instruction"]] = None
    return seeds, [t for t in others if t not in set(seeds)]


_PUNCT = [".", "?", "!", ",", ";", ":", "-", "'s", " (", ")"]


def _near_duplicate(text: str, rng: random.Random, vocab: list[str]) -> str:
    words = text.split() or ["empty"]
    for _ in range(1 + min(int(rng.expovariate(0.5)), 8)):
        op = rng.random()
        k = rng.randrange(len(words))
        if op < 0.2 and len(words) > 2:
            del words[k]
        elif op < 0.35 and len(words) > 1:
            k = min(k, len(words) - 2)
            words[k], words[k + 1] = words[k + 1], words[k]
        elif op < 0.55:
            words.insert(k, rng.choice(vocab))
        elif op < 0.7:
            words[k] = rng.choice(vocab)
        elif op < 0.85:
            words[k] = rng.choice([str.upper, str.lower, str.title])(words[k])
        else:
            words[k] = words[k] + rng.choice(_PUNCT) if rng.random() < 0.6 else words[k].strip(".,?!;:")
    return " ".join(w for w in words if w)


def _splice(a: str, b: str, rng: random.Random, vocab: list[str]) -> str:
    wa, wb = a.split(), b.split()
    head = wa[: max(1, rng.randint(len(wa) // 4, max(1, 3 * len(wa) // 4)))]
    tail = wb[rng.randint(len(wb) // 4, max(len(wb) // 4, 3 * len(wb) // 4)):]
    words = head + tail
    for _ in range(rng.randint(0, 2)):
        words[rng.randrange(len(words))] = rng.choice(vocab)
    return " ".join(words)


def shuffled_real_instructions(root: Optional[Path], seed: int) -> tuple[list[str], list[str], random.Random]:
    """(seed instructions, real instructions shuffled, the generator that shuffled them: corpora draw on)."""
    root = root or data_dir()
    if root is None:
        raise SystemExit("real instructions not found: set ALPACARE_DATA_DIR or provide ../shared/alpacare-data")
    seeds, real = load_real_instructions(root)
    rng = random.Random(seed)
    rng.shuffle(real)
    return seeds, real, rng


def make_corpus(n: int, seed: int = 0, root: Optional[Path] = None) -> tuple[list[str], list[str]]:
    """(seed instructions, n instructions): real ones interleaved with generated variants."""
    seeds, real, rng = shuffled_real_instructions(root, seed)
    vocab = sorted({w for t in seeds + real for w in t.split() if len(w) < 20})
    out: list[str] = []
    pool = list(seeds)  # what variants are derived from
    while len(out) < n:
        r = rng.random()
        if real and r < 0.25:
            text = real.pop()
        elif r < 0.6:
            text = _near_duplicate(rng.choice(pool[-2000:] if rng.random() < 0.5 else pool), rng, vocab)
        else:
            text = _splice(rng.choice(pool), rng.choice(pool), rng, vocab)
        out.append(text)
        pool.append(text)
    return seeds, out


_SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "ta", "vo", "si", "de", "pa", "bu", "ge", "ho", "ji", "fe", "zo"]


def _pseudo_word(rank: int) -> str:
    """A made-up word for a Zipf rank beyond the real vocabulary (drug names, codes, rare terms)."""
    out = []
    while True:
        rank, d = divmod(rank, len(_SYLLABLES))
        out.append(_SYLLABLES[d])
        if rank == 0:
            return "".join(out)


def make_scale_corpus(n: int, seed: int = 0, root: Optional[Path] = None,
                      near_duplicate_share: float = 0.1, zipf_a: float = 1.15) -> tuple[list[str], list[str]]:
    """(seed instructions, n instructions) for the scaling runs: every real instruction (a quarter of
    the first ~4,000), ``near_duplicate_share`` edited copies of earlier ones (half of a recent one),
    and Zipf filler for the rest: new distinct instructions as long as real ones (lengths drawn from
    them), words drawn by a Zipf law (exponent ``zipf_a``) over the real words by frequency and, past
    them, made-up words, so the vocabulary keeps growing with n as real text does (Heaps' law).
    Ten times n means ten times the near-duplicates and the filler, the same real instructions."""
    import numpy as np

    seeds, real, rng = shuffled_real_instructions(root, seed)
    counts: dict[str, int] = {}
    for t in seeds + real:
        for w in t.lower().split():
            counts[w] = counts.get(w, 0) + 1
    by_freq = sorted(counts, key=lambda w: (-counts[w], w))
    edit_vocab = sorted(w for w in counts if len(w) < 20)
    lengths = [len(t.split()) for t in real]
    nrng = np.random.default_rng(seed)
    ranks = iter(nrng.zipf(zipf_a, size=sum(lengths) * (n // len(lengths) + 1)).tolist())
    out: list[str] = []
    while len(out) < n:
        r = rng.random()
        if real and r < 0.25:
            text = real.pop()
        elif out and r < 0.25 + near_duplicate_share:
            text = _near_duplicate(rng.choice(out[-2000:] if rng.random() < 0.5 else out), rng, edit_vocab)
        else:
            words = [by_freq[k - 1] if k <= len(by_freq) else _pseudo_word(k) for k in
                     (next(ranks) for _ in range(rng.choice(lengths)))]
            text = " ".join(words).capitalize() + rng.choice([".", "?", ":"])
        out.append(text)
    return seeds, out


def write_corpus(path: Path, n: int, seed: int) -> None:
    """The corpus as dedup stage input: one {"id", "instruction"} record per line."""
    _, corpus = make_corpus(n, seed)
    path.write_text("".join(json.dumps({"id": i, "instruction": t}, ensure_ascii=False) + "\n"
                            for i, t in enumerate(corpus)), "utf-8")
    print(f"wrote {n} instructions to {path}")


# --------------------------------------------------------------------------- runs


def _fmt_s(s: float) -> str:
    return f"{s:8.2f} s" if s < 600 else f"{s / 60:8.1f} min"


def run_side_by_side(sizes: list[int], corpus: list[str], seeds: list[str], threshold: float, workers: int) -> None:
    from multiprocessing import Pool

    from alpacare.data.rouge import greedy_filter

    greedy_filter(corpus[:50], threshold, seeds[:5])  # load numba's cache outside the timings
    print(f"\n== greedy, threshold {threshold}, {len(seeds)} seeds: ours vs rouge_score reference "
          f"(Pool of {workers}, created once) ==")
    print(f"{'N':>7} {'ours':>11} {'reference':>11} {'speed-up':>9} {'kept':>6} {'pairs scored':>13}")
    rows = []
    with Pool(workers) as pool:
        for n in sizes:
            t0 = time.perf_counter()
            ours = greedy_filter(corpus[:n], threshold, seeds)
            t_ours = time.perf_counter() - t0
            t0 = time.perf_counter()
            ref_kept, _ = reference_greedy(corpus[:n], threshold, seeds, pool=pool)
            t_ref = time.perf_counter() - t0
            assert ours.kept == ref_kept, f"kept sets differ at N={n}"
            pairs = _pairs_scored(ours.kept, n, len(seeds))
            rows.append((n, t_ours, t_ref, pairs))
            print(f"{n:>7} {_fmt_s(t_ours)} {_fmt_s(t_ref)} {t_ref / t_ours:>8.0f}x {len(ours.kept):>6} {pairs:>13,}")
    print(f"kept sets identical at every size. Measured speed-up at N={rows[-1][0]}: "
          f"{rows[-1][2] / rows[-1][1]:.0f}x")
    return rows


def _pairs_scored(kept: list[int], n: int, n_seeds: int) -> int:
    """Pairs the greedy reference scores: each instruction against seeds + kept before it."""
    total, kept_before, kept_set = 0, 0, set(kept)
    for i in range(n):
        total += n_seeds + kept_before
        kept_before += i in kept_set
    return total


def extrapolate(rows, target_n: int, target: dict) -> None:
    """Fit reference seconds per scored pair on the measured sizes; apply it at target_n."""
    xs = [r[3] for r in rows]
    ys = [r[2] for r in rows]
    per_pair = sum(x * y for x, y in zip(xs, ys)) / sum(x * x for x in xs)  # least squares through 0
    quad = sum(r[0] ** 2 * r[2] for r in rows) / sum(r[0] ** 4 for r in rows)  # t = c * N^2
    pairs = _pairs_scored(target["kept_idx"], target_n, target["seeds"])
    t_pairs = per_pair * pairs
    t_quad = quad * target_n ** 2
    print(f"\n== EXTRAPOLATED reference time at N={target_n} (not measured) ==")
    print(f"fit t = {per_pair * 1e6:.2f} us x pairs scored; at N={target_n} the reference scores {pairs:,} pairs")
    print(f"  -> reference ~{_fmt_s(t_pairs).strip()} (EXTRAPOLATED); ours {target['seconds']:.2f} s measured; "
          f"ratio ~{t_pairs / target['seconds']:.0f}x (EXTRAPOLATED)")
    print(f"  (plain quadratic fit t = c*N^2 gives ~{_fmt_s(t_quad).strip()}, ratio ~{t_quad / target['seconds']:.0f}x)")


def _child(corpus_file: str, n: int, threshold: float, mode: str, impl: str = "", floor: str = "") -> None:
    """One size in a fresh process, so its peak RSS is this size's own. ``impl``: a rouge.py file to
    load instead of alpacare.data.rouge (the old scan, from git); ``floor``: the filters' floor."""
    t_start = time.perf_counter()
    if impl:
        import importlib.util

        spec = importlib.util.spec_from_file_location("rouge_baseline", impl)
        rouge = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = rouge  # dataclasses look their module up there
        spec.loader.exec_module(rouge)
    else:
        from alpacare.data import rouge
    if corpus_file.endswith(".jsonl"):
        with open(corpus_file, encoding="utf-8") as f:
            data = {"seeds": [], "corpus": [json.loads(next(f)) for _ in range(n)]}
    else:
        data = json.loads(Path(corpus_file).read_text("utf-8"))
    run = rouge.greedy_filter if mode == "greedy" else rouge.pairwise_filter
    kwargs = {"floor": float(floor)} if floor else {}
    run(data["corpus"][:50], threshold, data["seeds"][:5], **kwargs)  # numba's cache, or its compilation
    t0 = time.perf_counter()
    res = run(data["corpus"][:n], threshold, data["seeds"], **kwargs)
    seconds = time.perf_counter() - t0
    print(json.dumps({"n": n, "seconds": seconds, "process_seconds": time.perf_counter() - t_start,
                      "kept": len(res.kept), "kept_idx": res.kept, "seeds": len(data["seeds"]),
                      "lcs": res.stats["lcs_computed"], "candidates": res.stats["candidate_pairs"],
                      "encode_seconds": res.stats.get("encode_seconds"), "maxrss_mb": peak_rss_mb()}))


def _run_child(corpus_file: str, n: int, threshold: float, mode: str, impl: str = "", floor: str = "") -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", corpus_file, str(n), str(threshold), mode, impl, floor],
                          capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"child run failed (N={n}, {impl or 'index'}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def peak_rss_mb() -> float:
    """This process's peak resident set size (VmHWM; ru_maxrss where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ours_alone(sizes: list[int], corpus_file: str, threshold: float, mode: str) -> dict[int, dict]:
    print(f"\n== ours alone ({mode}, threshold {threshold}), each size in a fresh process ==")
    print("peak RSS = VmHWM of that process (/proc/self/status): Python + numpy + numba + corpus + filter")
    print(f"{'N':>7} {'filter':>10} {'process':>10} {'peak RSS':>10} {'kept':>7} {'LCS runs':>11} "
          f"{'candidate pairs':>16}")
    out = {}
    for n in sizes:
        r = out[n] = _run_child(corpus_file, n, threshold, mode)
        print(f"{n:>7} {r['seconds']:>8.2f} s {r['process_seconds']:>8.2f} s {r['maxrss_mb']:>7.0f} MB "
              f"{r['kept']:>7} {r['lcs']:>11,} {r['candidates']:>16,}")
    if len(sizes) > 1:
        a, b = sizes[0], sizes[-1]
        g = out[b]["seconds"] / out[a]["seconds"]
        print(f"growth {a} -> {b}: x{b / a:.1f} instructions, x{g:.1f} time "
              f"(quadratic would be x{(b / a) ** 2:.0f})")
    return out


def baseline_module(rev: str, tmp: str) -> str:
    """alpacare/data/rouge.py as of git revision ``rev`` (the old scan), written to a file in tmp."""
    src = subprocess.run(["git", "show", f"{rev}:alpacare/data/rouge.py"], capture_output=True, text=True, cwd=REPO)
    if src.returncode != 0:
        raise SystemExit(f"git show {rev}:alpacare/data/rouge.py failed: {src.stderr.strip()} "
                         f"(--baseline-rev needs a clone with that commit)")
    path = Path(tmp) / "rouge_baseline.py"
    path.write_text(src.stdout, "utf-8")
    return str(path)


def _scale_row(label: str, r: dict) -> str:
    n = r["n"]
    return (f"{label:<22} {n:>9,} {r['seconds']:>9.1f} s {n / r['seconds']:>10,.0f} {r['candidates'] / n:>12.1f} "
            f"{r['lcs'] / n:>9.2f} {r['maxrss_mb']:>9.0f} MB {r['kept']:>9,}")


def run_scale(sizes: list[int], baseline_size: int, rev: str, threshold: float, seed: int, tmp: str) -> dict:
    """Section 3: the index at each size and the old scan at baseline_size, same corpus, same run."""
    n_max = max(sizes + [baseline_size])
    t0 = time.perf_counter()
    seeds, corpus = make_scale_corpus(n_max, seed)
    corpus_file = str(Path(tmp) / "scale.jsonl")
    with open(corpus_file, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(t, ensure_ascii=False) + "\n" for t in corpus)
    del corpus
    print(f"\n== scale: greedy, threshold {threshold}, no seeds (issue 28's setting); scale corpus built in "
          f"{time.perf_counter() - t0:.0f} s; each run in a fresh process; {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f} ==")
    print(f"{'':<22} {'N':>9} {'filter':>11} {'inst/s':>10} {'cand./inst':>12} {'LCS/inst':>9} {'peak RSS':>12} "
          f"{'kept':>9}")
    old = _run_child(corpus_file, baseline_size, threshold, "greedy", baseline_module(rev, tmp))
    print(_scale_row(f"old scan ({rev[:7]})", old), flush=True)
    new = {}
    for n in sizes:
        new[n] = _run_child(corpus_file, n, threshold, "greedy")
        print(_scale_row("index (this tree)", new[n]), flush=True)
    if baseline_size in new:
        assert new[baseline_size]["kept_idx"] == old["kept_idx"], "kept sets differ between the old scan and the index"
        print(f"kept sets identical at N={baseline_size:,}. old scan / index at N={baseline_size:,}: "
              f"{old['seconds'] / new[baseline_size]['seconds']:.0f}x")
    small, big = min(new), max(new)
    if big > small:
        growth = new[big]["seconds"] / new[small]["seconds"]
        print(f"time({big:,}) / time({small:,}) = {growth:.1f} for x{big / small:.0f} instructions "
              f"(the old scan: x{(big / small) ** 2:.0f} pairs). Encoding (tokens, features): "
              f"{new[small]['encode_seconds']:.1f} s and {new[big]['encode_seconds']:.1f} s of those.")
    if 520_000 in new:
        r = new[520_000]
        goals = [("520k within 5 minutes", r["seconds"] <= 300, f"{r['seconds']:.0f} s"),
                 ("peak memory <= 2 GB at 520k", r["maxrss_mb"] <= 2048, f"{r['maxrss_mb']:.0f} MB")]
        if 52_000 in new:
            g = r["seconds"] / new[52_000]["seconds"]
            goals.append(("time(520k)/time(52k) <= 15", g <= 15, f"{g:.1f}"))
        for name, ok, value in goals:
            print(f"goal {name}: {value} -> {'met' if ok else 'NOT met'}")
    return {"old": old, "new": new}


def run_cli_sizes(sizes: list[int], threshold: float, seed: int, tmp: str) -> None:
    """Section 4: the dedup stage end to end through the CLI."""
    if not sizes:
        return
    print(f"\n== the dedup stage through the CLI (stages=[dedup] dedup.against_seeds=false dedup.decontaminate=[] "
          f"logger=none; threshold {threshold}) ==")
    print(f"{'N':>9} {'wall':>9} {'filter':>9} {'kept':>9} {'progress lines':>15}")
    _, corpus = make_scale_corpus(max(sizes), seed)
    for n in sizes:
        data = Path(tmp) / f"cli_{n}.jsonl"
        with open(data, "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"id": i, "instruction": t}, ensure_ascii=False) + "\n"
                         for i, t in enumerate(corpus[:n]))
        run_dir = Path(tmp) / f"cli_run_{n}"
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "alpacare", "stages=[dedup]", f"dedup.input={data}",
                               f"dedup.threshold={threshold}", "dedup.against_seeds=false", "dedup.decontaminate=[]",
                               "logger=none", f"hydra.run.dir={run_dir}"], capture_output=True, text=True, cwd=REPO)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"CLI run at N={n} failed:\n{proc.stderr[-3000:]}")
        stats = json.loads((run_dir / "dedup" / "stats.json").read_text("utf-8"))
        lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "ETA" in ln]
        print(f"{n:>9,} {wall:>7.1f} s {stats['filter_seconds']:>7.1f} s {stats['kept']:>9,} {len(lines):>15}")
        if lines:
            print(f"          e.g. {lines[len(lines) // 2].split('] ')[-1]}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        sys.path.insert(0, str(REPO))
        _child(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), *sys.argv[5:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ref-sizes", default="500,1000,2000", help="sizes both ours and the reference run")
    ap.add_argument("--sizes", default="5000,10000,20000,52000", help="sizes ours runs alone")
    ap.add_argument("--extrapolate-to", type=int, default=20000)
    ap.add_argument("--threshold", type=float, default=0.7)
    ap.add_argument("--mode", choices=["greedy", "pairwise"], default="greedy", help="for the ours-alone section")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale-sizes", default="52000,520000", help="scale corpus sizes the index runs at (section 3)")
    ap.add_argument("--baseline-size", type=int, default=52000, help="scale corpus size the old scan runs at")
    ap.add_argument("--baseline-rev", default="5960fde", help="git revision whose alpacare/data/rouge.py is the old scan")
    ap.add_argument("--cli-sizes", default="52000,520000", help="scale corpus sizes run through the CLI (section 4)")
    ap.add_argument("--write-corpus", metavar="JSONL", help="only write a corpus of --n instruction records and exit")
    ap.add_argument("--n", type=int, default=20000, help="corpus size for --write-corpus")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    if args.write_corpus:
        write_corpus(Path(args.write_corpus), args.n, args.seed)
        return
    ref_sizes = [int(s) for s in args.ref_sizes.split(",") if s]
    sizes = [int(s) for s in args.sizes.split(",") if s]
    scale_sizes = [int(s) for s in args.scale_sizes.split(",") if s]
    cli_sizes = [int(s) for s in args.cli_sizes.split(",") if s]
    with tempfile.TemporaryDirectory() as tmp:
        if ref_sizes or sizes:
            n_max = max(ref_sizes + sizes + ([args.extrapolate_to] if ref_sizes else []))
            seeds, corpus = make_corpus(n_max, args.seed)
            print(f"corpus: {len(corpus)} instructions (prefixes used per size), {len(seeds)} seed instructions; "
                  f"{os.cpu_count()} CPUs")
            corpus_file = str(Path(tmp) / "corpus.json")
            Path(corpus_file).write_text(json.dumps({"seeds": seeds, "corpus": corpus}), "utf-8")
            rows = run_side_by_side(ref_sizes, corpus, seeds, args.threshold, args.workers) if ref_sizes else []
            alone_sizes = sorted(set(sizes + ([args.extrapolate_to] if rows else [])))
            alone = run_ours_alone(alone_sizes, corpus_file, args.threshold, args.mode) if alone_sizes else {}
            if rows and args.mode == "greedy":
                extrapolate(rows, args.extrapolate_to, alone[args.extrapolate_to])
        if scale_sizes:
            run_scale(scale_sizes, args.baseline_size, args.baseline_rev, args.threshold, args.seed, tmp)
        run_cli_sizes(cli_sizes, args.threshold, args.seed, tmp)


if __name__ == "__main__":
    main()
