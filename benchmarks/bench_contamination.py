"""Benchmark: the contamination check (alpacare/data/contamination.py) on a labelled set, and its speed at 52k.

Labelled set, built from the real local files (deterministic for a given --seed):
- every local source (``dedup.decontaminate=[all]``: MedInstruct-test, iCliniq, AlpacaFarm when
  $ALPACARE_DATA_DIR or the cache has them, the smoke suite always, fetched benchmarks) is split
  in two halves per source; half A is indexed as "the test sets";
- positives: each item of half A copied verbatim, recased (UPPER / lower / Title), with 10% and
  20% of its words replaced by words of the seed tasks, embedded between a real seed instruction and
  a closing sentence, moved into the input under a generic instruction, and embedded + 10% changed;
- negatives: the real seed tasks (instruction + input) and half B of every source: real items of
  the same test sets (near-topic medical tasks, patient questions written like the indexed ones)
  that are not copies of any indexed item.
Printed: precision and recall per threshold, recall per kind of copy, the false positives at the
default threshold.

Speed: 52k synthetic instructions (seed instructions and inputs spliced and perturbed, 1% of them
contaminated copies) checked against all local sources; then against a scale proxy of the fetched
benchmarks (the local items replicated with 15% of words changed, to --big items). Side by side:
brute force (every text x every item x every window, plain DP LCS in numba) on --ref-texts texts,
extrapolated to 52k (labelled), and the two asserted to find the same best score at or above the
threshold.

    python benchmarks/bench_contamination.py                 # ~1 minute on 2 cores
    python benchmarks/bench_contamination.py --n 52000 --big 40000 --ref-texts 20
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from alpacare.config import DedupConfig  # noqa: E402
from alpacare.data.contamination import ContaminationIndex, TestItem  # noqa: E402
from alpacare.data.seeds import load_seed_tasks  # noqa: E402
from alpacare.evaluation import test_items  # noqa: E402
from alpacare.prompts.alpaca import has_input  # noqa: E402

CLOSINGS = ("Explain your answer step by step.", "Answer in plain language for a patient.",
            "Cite the guideline you rely on.", "Keep it under 200 words.")
GENERIC = ("Answer the following question.", "Respond to the patient below.", "Solve this exam question.",
           "Read the text and answer it.")


def seed_texts() -> list[tuple[str, str]]:
    seeds = load_seed_tasks(None, None)
    return [(s["instruction"], s["input"] if has_input(s.get("input")) else "") for s in seeds]


def change_words(rng: random.Random, text: str, share: float, vocab: list[str]) -> str:
    words = text.split()
    k = max(1, round(share * len(words)))
    for i in rng.sample(range(len(words)), min(k, len(words))):
        words[i] = rng.choice(vocab)
    return " ".join(words)


def recase(rng: random.Random, text: str) -> str:
    return rng.choice((text.upper(), text.lower(), text.title()))


def embed(rng: random.Random, text: str, seeds: list[tuple[str, str]]) -> str:
    return f"{rng.choice(seeds)[0]} {text} {rng.choice(CLOSINGS)}"


def labelled_set(items: list[TestItem], seeds: list[tuple[str, str]], seed: int):
    """(indexed items, positives [(kind, instruction, input)], negatives [(kind, instruction, input)])."""
    rng = random.Random(seed)
    vocab = sorted({w for i, x in seeds for w in f"{i} {x}".split()})
    by_source: dict[str, list[TestItem]] = {}
    for it in items:
        by_source.setdefault(it.source, []).append(it)
    indexed, negatives = [], [("seed task", i, x) for i, x in seeds]
    for source, its in by_source.items():
        its = list({it.text: it for it in its}.values())
        rng.shuffle(its)
        half = len(its) // 2
        indexed += its[:half]
        negatives += [(f"held-out {source}", it.text, "") for it in its[half:]]
    positives = []
    for it in indexed:
        t = it.text
        positives += [("verbatim", t, ""), ("recased", recase(rng, t), ""),
                      ("10% words changed", change_words(rng, t, 0.10, vocab), ""),
                      ("20% words changed", change_words(rng, t, 0.20, vocab), ""),
                      ("embedded", embed(rng, t, seeds), ""), ("moved into input", rng.choice(GENERIC), t),
                      ("embedded + 10% changed", embed(rng, change_words(rng, t, 0.10, vocab), seeds), "")]
    return indexed, positives, negatives


def joined(instruction: str, input: str) -> str:
    return f"{instruction}\n{input}" if input else instruction


def precision_recall(index, positives, negatives, thresholds, default):
    texts = [joined(i, x) for _, i, x in positives + negatives]
    result = index.check(texts, 0.0)  # every exact score
    pos = result.best_score[: len(positives)]
    neg = result.best_score[len(positives):]
    print(f"labelled set: {len(index)} indexed items, {len(positives)} positives, {len(negatives)} negatives")
    print(f"{'threshold':>9}  {'precision':>9}  {'recall':>6}  {'FP':>4}  {'FN':>5}")
    for th in thresholds:
        tp, fp = int((pos > th).sum()), int((neg > th).sum())
        print(f"{th:>9.2f}  {tp / max(tp + fp, 1):>9.4f}  {tp / len(pos):>6.4f}  {fp:>4}  {len(pos) - tp:>5}"
              + ("   <- default (dedup.contamination_threshold)" if th == default else ""))
    print(f"recall per kind of copy at {default}:")
    kinds = list(dict.fromkeys(k for k, _, _ in positives))
    for kind in kinds:
        sel = [s for (k, _, _), s in zip(positives, pos) if k == kind]
        print(f"  {kind:<24} {sum(s > default for s in sel) / len(sel):.4f}  ({len(sel)})")
    print(f"false positives at {default} by kind of negative:")
    for kind in dict.fromkeys(k for k, _, _ in negatives):
        sel = [s for (k, _, _), s in zip(negatives, neg) if k == kind]
        print(f"  {kind:<28} {sum(s > default for s in sel)} of {len(sel)}")
    for (kind, i, x), s, j in zip(negatives, neg, result.best_item[len(positives):]):
        if s > default:
            print(f"  FP {s:.3f} [{kind}] {joined(i, x)[:110]!r}\n       ~ {index.items[j].text[:110]!r}")
    print(f"(items shorter than the index minimum: {index.skipped_short}, counted as misses)")


def synthetic_instructions(n: int, seeds, items: list[TestItem], seed: int, share: float = 0.01):
    rng = random.Random(seed + 1)
    vocab = sorted({w for i, x in seeds for w in f"{i} {x}".split()})
    out = []
    for k in range(n):
        if rng.random() < share:
            out.append(embed(rng, change_words(rng, rng.choice(items).text, 0.1, vocab), seeds))
            continue
        (a, ax), (b, _) = rng.choice(seeds), rng.choice(seeds)
        wa, wb = a.split(), b.split()
        text = " ".join(wa[: len(wa) // 2] + wb[len(wb) // 2:])
        if rng.random() < 0.3:
            text = change_words(rng, text, 0.2, vocab)
        out.append(joined(text, ax if rng.random() < 0.4 else ""))
    return out


def reference_best(texts: list[str], items: list[TestItem]) -> list[float]:
    """Brute force: every text x every item (of at least MIN_ITEM_TOKENS) x every window start, with
    the plain dynamic-programming LCS (alpacare.data.rouge._lcs_dp): no index, no bound, no bit tricks."""
    import numpy as np

    from alpacare.data.contamination import MIN_ITEM_TOKENS, window
    from alpacare.data.rouge import _lcs_dp, tokenize

    vocab: dict[str, int] = {}
    enc = lambda s: np.asarray([vocab.setdefault(w, len(vocab)) for w in tokenize(s)], dtype=np.int64)  # noqa: E731
    qs = [q for q in (enc(it.text) for it in items) if len(q) >= MIN_ITEM_TOKENS]
    out = []
    for t in texts:
        tt = enc(t)
        best = 0.0
        for q in qs:
            w = window(len(q))
            for s in range(max(1, len(tt) - w + 1)):
                best = max(best, _lcs_dp(q, tt[s:s + w]) / len(q))
        out.append(best)
    return out


def timing(label, items, texts, threshold, ref_texts):
    t0 = time.perf_counter()
    index = ContaminationIndex(items)
    t1, c1 = time.perf_counter(), time.process_time()
    result = index.check(texts, threshold)
    t2, c2 = time.perf_counter(), time.process_time()
    print(f"{label}: {len(index)} items indexed in {t1 - t0:.2f}s; {len(texts)} instructions checked in "
          f"{t2 - t1:.2f}s wall, {c2 - c1:.2f}s CPU ({len(result.matches)} contaminated, {result.stats['candidate_pairs']} candidate pairs, "
          f"{result.stats['lcs_computed']} LCS runs)")
    if ref_texts:
        sample = texts[:: max(1, len(texts) // ref_texts)][:ref_texts]
        r0 = time.perf_counter()
        ref = reference_best(sample, items)
        r1 = time.perf_counter()
        ours = index.check(sample, threshold).best_score
        for a, b in zip(ref, ours):
            assert (a > threshold) == (b > threshold) and (a <= threshold or a == b), (a, b)
        per_text = (r1 - r0) / len(sample)
        print(f"  brute force on {len(sample)} of them: {per_text * 1000:.0f} ms/instruction, same decisions and scores; "
              f"extrapolated to {len(texts)}: {per_text * len(texts) / 60:.0f} min (EXTRAPOLATED), "
              f"ratio {per_text * len(texts) / (t2 - t1):.0f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=52000, help="synthetic instructions for the timing")
    ap.add_argument("--big", type=int, default=40000, help="items of the scale proxy for fetched benchmarks (0: skip)")
    ap.add_argument("--ref-texts", type=int, default=10, help="texts for the brute-force reference (0: skip)")
    args = ap.parse_args()
    default = DedupConfig.contamination_threshold
    items, counts, absent = test_items.load_all(["all"])
    print(f"local sources: {counts}; not local: {absent}")
    seeds = seed_texts()
    ContaminationIndex(items[:50]).check(["warm up the numba cache"], default)  # compile outside the timings
    indexed, positives, negatives = labelled_set(items, seeds, args.seed)
    precision_recall(ContaminationIndex(indexed), positives, negatives, [0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95],
                     default)
    texts = synthetic_instructions(args.n, seeds, items, args.seed)
    print()
    timing("all local sources", items, texts, default, args.ref_texts)
    if args.big:
        rng = random.Random(args.seed + 2)
        vocab = sorted({w for it in items for w in it.text.split()})
        big = [TestItem("proxy", str(k), change_words(rng, items[k % len(items)].text, 0.15, vocab))
               for k in range(args.big)]
        timing(f"scale proxy ({args.big} items)", big, texts, default, 0)
    print(json.dumps({"python": sys.version.split()[0]}))


if __name__ == "__main__":
    main()
