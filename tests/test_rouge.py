"""alpacare.data.rouge equals rouge_score: tokens, scores (bit for bit) and the filters' kept sets.

The reference filters are the straightforward loops in benchmarks/bench_dedup.py, which score
pair by pair with rouge_score itself. Strategies draw words from a small vocabulary (with
case, punctuation and unicode variants) so that near-duplicates and exact ties are frequent.
"""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from rouge_score import rouge_scorer

from alpacare.data import rouge
from alpacare.data.rouge import greedy_filter, pairwise_filter, rouge_l, tokenize

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_dedup import _near_duplicate, data_dir, reference_greedy, reference_pairwise  # noqa: E402

SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def reference_score(a: str, b: str) -> float:
    return SCORER.score(a, b)["rougeL"].fmeasure


# --------------------------------------------------------------------------- strategies

# Characters that stress lowercasing and the [a-z0-9] rule: accents, the Kelvin sign and
# dotted capital I (their lowercase contains ASCII letters), ligatures, full-width digits,
# unusual whitespace and punctuation.
TRICKY_CHARS = "aAzZ09 \t\n\r\x0b\x0c\x1c\x85\xa0\u2028\u3000.,;:!?'\"-_/()[]{}#@éÉßøİıKﬁ１２ΣσςЖ中文🙂\u0301"
WORDS = ["the", "The", "THE", "a", "patient", "patients", "heart", "pain", "fever", "Fever!", "x1", "2", "é",
         "ß", "...", "-", "blood-pressure", "don't", "İ"]

tricky_text = st.text(alphabet=st.sampled_from(list(TRICKY_CHARS)), max_size=60)
any_text = st.one_of(st.text(max_size=80), tricky_text)
sentence = st.lists(st.sampled_from(WORDS), max_size=14).map(" ".join)
long_sentence = st.lists(st.sampled_from(WORDS[:6]), min_size=60, max_size=300).map(" ".join)


@st.composite
def mutated(draw, base: str) -> str:
    """A near-duplicate of ``base``: a few word drops, swaps, insertions, case/punctuation changes."""
    words = base.split()
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["drop", "swap", "insert", "upper", "punct"]))
        if not words:
            words = [draw(st.sampled_from(WORDS))]
            continue
        k = draw(st.integers(0, len(words) - 1))
        if op == "drop":
            del words[k]
        elif op == "swap" and len(words) > 1:
            j = min(k + 1, len(words) - 1)
            words[k], words[j] = words[j], words[k]
        elif op == "insert":
            words.insert(k, draw(st.sampled_from(WORDS)))
        elif op == "upper":
            words[k] = words[k].upper()
        else:
            words[k] += draw(st.sampled_from([".", "?", "!!", ",", " -"]))
    return " ".join(words)


@st.composite
def instruction_lists(draw, max_size: int = 24, text=sentence) -> list[str]:
    """Lists where most items are exact or near copies of earlier ones."""
    items: list[str] = []
    for _ in range(draw(st.integers(0, max_size))):
        if items and draw(st.integers(0, 3)) > 0:
            items.append(draw(mutated(draw(st.sampled_from(items)))))
        else:
            items.append(draw(st.one_of(text, st.sampled_from(["", "!!!", "  ", "é ß"]))))
    return items


@st.composite
def boundary_thresholds(draw) -> float:
    """0, 1, arbitrary floats, and scores that actually occur (2L/(m+n) as rouge computes it)."""
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.sampled_from([0.0, 1.0, 0.5, 0.7]))
    if kind == 1:
        return draw(st.floats(0.0, 1.0))
    m = draw(st.integers(1, 15))
    n = draw(st.integers(1, 15))
    lcs = draw(st.integers(1, min(m, n)))
    return rouge._fmeasure(lcs, m, n)


# --------------------------------------------------------------------------- tokens and scores


@FAST
@given(any_text)
def test_tokenize_matches_rouge_score(text):
    assert tokenize(text) == SCORER._tokenizer.tokenize(text)


@pytest.mark.parametrize("text", ["", "   ", "!!!", "İstanbul", "K", "ﬁne", "１２３ 123", "a\u0301b", "x" * 5000,
                                  "\x1c\x1dword\x1e\x1f", "dont't-stop_now", "ΣΑΣ σας"])
def test_tokenize_adversarial(text):
    assert tokenize(text) == SCORER._tokenizer.tokenize(text)


@FAST
@given(st.lists(st.one_of(any_text, st.just("a\x00b"), st.just("")), max_size=12))
def test_batch_encoding_tokenizes_each_text_alone(texts):
    """The filters tokenize all texts in one regex pass over them joined by NULs: the same tokens,
    text by text, as rouge_score's tokenizer (ids and token strings in one-to-one correspondence)."""
    corpus = rouge._encode(texts, 0)
    assert len(corpus.off) == len(texts) + 1
    pairs = set()
    for k, text in enumerate(texts):
        words = SCORER._tokenizer.tokenize(text)
        ids = corpus.tok[corpus.off[k]:corpus.off[k + 1]].tolist()
        assert len(ids) == len(words)
        pairs.update(zip(ids, words))
    assert len({i for i, _ in pairs}) == len({w for _, w in pairs}) == len(pairs)


@FAST
@given(st.one_of(sentence, any_text), st.one_of(sentence, any_text))
def test_rouge_l_matches_rouge_score(a, b):
    assert rouge_l(a, b) == reference_score(a, b)
    assert rouge_l(b, a) == reference_score(a, b)  # symmetric, bit for bit


@settings(max_examples=30, deadline=None)
@given(long_sentence, long_sentence)
def test_rouge_l_long_texts(a, b):
    assert rouge_l(a, b) == reference_score(a, b)


def test_fmeasure_compiled_matches_python_bit_for_bit():
    # The filters decide with the numba copy of the F-measure; every (lcs, m, n) up to 120 tokens.
    for m in range(1, 121):
        for n in range(1, 121):
            for lcs in range(0, min(m, n) + 1):
                assert rouge._fmeasure_nb(lcs, m, n) == rouge._fmeasure(lcs, m, n), (lcs, m, n)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 5), max_size=200), st.lists(st.integers(0, 5), max_size=200))
def test_bitparallel_lcs_matches_dp(a, b):
    """Hyyro's bit-parallel LCS (one and several 64-bit words) against the plain DP table."""
    a = np.asarray(a, dtype=np.int32)
    b = np.asarray(b, dtype=np.int32)
    m = len(a)
    assume(m > 0)
    n_words = (m + 63) // 64
    slot = np.full(6, -1, dtype=np.int32)
    pm = np.zeros(6 * n_words, dtype=np.uint64)
    n_slots = 0
    for i, t in enumerate(a):
        if slot[t] < 0:
            slot[t] = n_slots
            n_slots += 1
        pm[slot[t] * n_words + i // 64] |= np.uint64(1) << np.uint64(i % 64)
    vbuf = np.zeros(n_words, dtype=np.uint64)
    got = rouge._lcs_bitparallel(pm, slot, m, n_words, vbuf, b, 0, len(b))
    assert got == rouge._lcs_dp(a, b)


# --------------------------------------------------------------------------- filters


def _check_result(result, instructions, seeds, ref_maxima):
    """Maxima exact wherever the reference's is >= the floor; below it a lower bound; every reported
    neighbour really scores the reported maximum."""
    for i, ref in enumerate(ref_maxima):
        got = result.max_similarity[i]
        if ref >= result.floor:
            assert got == ref, (i, got, ref, result.floor)
        else:
            assert got <= ref < result.floor, (i, got, ref, result.floor)
        text = result.nearest_text(i)
        if text is None:
            assert got == 0.0
        else:
            assert rouge_l(instructions[i], text) == got


@st.composite
def floors(draw, threshold: float):
    """The default (the threshold), 0 (every maximum exact) or anything between."""
    kind = draw(st.integers(0, 2))
    return None if kind == 0 else 0.0 if kind == 1 else draw(st.floats(0.0, threshold))


@FAST
@given(instruction_lists(), boundary_thresholds(), st.lists(sentence, max_size=5), st.data())
def test_greedy_matches_reference(instructions, threshold, seeds, data):
    result = greedy_filter(instructions, threshold, seeds, floor=data.draw(floors(threshold)))
    kept, maxima = reference_greedy(instructions, threshold, seeds)
    assert result.kept == kept
    _check_result(result, instructions, seeds, maxima)
    for i in result.dropped:  # the neighbour that knocked it out was kept (or is a seed)
        assert result.nearest_seed[i] >= 0 or result.nearest_index[i] in kept


@FAST
@given(instruction_lists(), boundary_thresholds(), st.lists(sentence, max_size=5), st.data())
def test_pairwise_matches_reference(instructions, threshold, seeds, data):
    result = pairwise_filter(instructions, threshold, seeds, floor=data.draw(floors(threshold)))
    kept, maxima = reference_pairwise(instructions, threshold, seeds)
    assert result.kept == kept
    _check_result(result, instructions, seeds, maxima)


@settings(max_examples=25, deadline=None)
@given(instruction_lists(max_size=8, text=long_sentence), st.sampled_from([0.3, 0.7, 0.9]))
def test_filters_on_long_texts(instructions, threshold):
    """Instructions longer than 64 and 128 tokens use the multi-word LCS kernel."""
    assert greedy_filter(instructions, threshold).kept == reference_greedy(instructions, threshold)[0]
    assert pairwise_filter(instructions, threshold).kept == reference_pairwise(instructions, threshold)[0]


@st.composite
def adversarial_lists(draw) -> list[str]:
    """Corpora that stress the prefix filter's bound: runs of one repeated token, a 2-letter vocabulary
    (large bag overlap, small LCS), single tokens, empty texts and texts of 60-200 tokens (several
    64-bit words), most of them edited copies of earlier ones."""
    piece = st.one_of(
        st.builds(lambda w, k: " ".join([w] * k), st.sampled_from(["a", "b", "the"]), st.integers(1, 130)),
        st.lists(st.sampled_from(["a", "b"]), min_size=1, max_size=200).map(" ".join),
        st.sampled_from(["", "a", "b", "the", "a b", "b a", "!!"]),
        sentence,
    )
    items: list[str] = []
    for _ in range(draw(st.integers(0, 16))):
        if items and draw(st.booleans()):
            items.append(draw(mutated(draw(st.sampled_from(items)))))
        else:
            items.append(draw(piece))
    return items


@st.composite
def extreme_thresholds(draw) -> float:
    """Near 0 and near 1, and one ulp either side of a score that occurs."""
    kind = draw(st.integers(0, 1))
    if kind == 0:
        return draw(st.sampled_from([0.0, 5e-324, 1e-12, 1e-9, 0.01, 0.99, 1 - 1e-9, 1 - 1e-12, 1.0]))
    m, n = draw(st.integers(1, 130)), draw(st.integers(1, 130))
    score = rouge._fmeasure(draw(st.integers(1, min(m, n))), m, n)
    return float(np.clip(np.nextafter(score, draw(st.sampled_from([0.0, 2.0]))), 0.0, 1.0))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(adversarial_lists(), extreme_thresholds(), st.lists(st.sampled_from(["a", "a a b", "", "the the the"]),
                                                           max_size=3), st.data())
def test_filters_on_adversarial_corpora(instructions, threshold, seeds, data):
    floor = data.draw(floors(threshold))
    for run, reference in ((greedy_filter, reference_greedy), (pairwise_filter, reference_pairwise)):
        result = run(instructions, threshold, seeds, floor=floor)
        kept, maxima = reference(instructions, threshold, seeds)
        assert result.kept == kept
        _check_result(result, instructions, seeds, maxima)


def test_prefix_filter_prunes_the_scan():
    """Distinct instructions that all share frequent words: the full scan (floor 0) meets every
    earlier instruction through "the"/"of"; the prefix filter at 0.7 meets a few per instruction."""
    rng = random.Random(3)
    rare = [f"w{k}" for k in range(3000)]
    items = [" ".join(["what", "is", "the"] + rng.sample(rare, 6) + ["of", "the", "patient"]) for _ in range(1500)]
    full = greedy_filter(items, 0.7, floor=0.0)
    fast = greedy_filter(items, 0.7)
    assert fast.kept == full.kept and len(fast.kept) == len(items)
    assert full.stats["candidate_pairs"] > 0.4 * len(items) ** 2
    assert fast.stats["candidate_pairs"] < 0.01 * len(items) ** 2


def test_exact_boundary_is_kept():
    # "a b" vs "a c": LCS 1 of 2 and 2 -> F = 0.5 exactly; only strictly above drops.
    assert greedy_filter(["a b", "a c"], 0.5).kept == [0, 1]
    assert greedy_filter(["a b", "a c"], 0.49).kept == [0]
    assert pairwise_filter(["a b", "a c"], 0.49).kept == []


@pytest.mark.parametrize("lcs,m,n", [(3, 3, 97), (6, 6, 187), (3, 5, 109)])
def test_threshold_just_below_a_rounded_up_score(lcs, m, n):
    """rouge_score's float F can exceed 2*LCS/(m+n): with the threshold one ulp below it, the exact
    overlap bound ceil(t*(m+n)/2) computed in floats asks for lcs + 1 shared tokens, yet the
    reference drops the pair. The filter's margin must keep such a pair a candidate."""
    short = " ".join(f"k{i}" for i in range(m))
    long = " ".join([f"k{i}" for i in range(lcs)] + [f"z{i}" for i in range(n - lcs)])
    score = rouge._fmeasure(lcs, m, n)
    threshold = float(np.nextafter(score, 0.0))
    assert math.ceil(threshold * (m + n) / 2) > lcs and reference_score(short, long) == score > threshold
    assert greedy_filter([short, long], threshold).kept == reference_greedy([short, long], threshold)[0] == [0]
    assert pairwise_filter([short, long], threshold).kept == [] and greedy_filter([long, short], threshold).kept == [0]


def test_semantics_differ_as_documented():
    items = ["Explain the heart", "explain the heart!", "EXPLAIN THE HEART?"]
    assert greedy_filter(items, 0.7).kept == [0]  # the first of a group survives
    assert pairwise_filter(items, 0.7).kept == []  # every member of a group goes
    greedy = greedy_filter(items, 0.7, seeds=["explain the heart"])
    assert greedy.kept == [] and list(greedy.nearest_seed) == [0, 0, 0]


def test_empty_and_degenerate_inputs():
    assert greedy_filter([], 0.7).kept == []
    assert pairwise_filter([], 0.7, seeds=["a"]).kept == []
    r = greedy_filter(["", "!!!", "a"], 0.0)
    assert r.kept == [0, 1, 2] and list(r.max_similarity) == [0.0, 0.0, 0.0]
    # Empty token lists score 0 against everything (rouge_score: 0 when either side is empty).
    assert greedy_filter(["", ""], 0.0).kept == [0, 1] and pairwise_filter(["", "", "a"], 0.0).kept == [0, 1, 2]
    assert r.nearest_text(2) is None


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_threshold_out_of_range(bad):
    with pytest.raises(ValueError, match="threshold"):
        greedy_filter(["a"], bad)


@pytest.mark.parametrize("bad", [-0.1, 0.8, float("nan")])
def test_floor_out_of_range(bad):
    with pytest.raises(ValueError, match="floor"):
        pairwise_filter(["a"], 0.7, floor=bad)


# --------------------------------------------------------------------------- real instructions


@pytest.fixture(scope="module")
def real_data():
    root = data_dir()
    if root is None:
        pytest.skip("AlpaCare data not found (set ALPACARE_DATA_DIR or provide ../shared/alpacare-data)")
    seeds = [r["instruction"] for r in json.loads((root / "med_seed.json").read_text("utf-8"))]
    with open(root / "MedInstruct-test.jsonl", encoding="utf-8") as f:
        test = [json.loads(line)["instruction"] for line in f if line.strip()]
    return seeds, test


def _real_items(seeds, test):
    """MedInstruct-test and seed instructions mixed with near-duplicates of them, shuffled."""
    rng = random.Random(7)
    vocab = sorted({w for t in seeds + test for w in t.split()})
    sample = test[:60] + seeds[:20]
    items = sample + [_near_duplicate(rng.choice(sample), rng, vocab) for _ in range(60)]
    rng.shuffle(items)
    return items, seeds[20:60]


def test_real_instructions_greedy(real_data):
    items, seeds = _real_items(*real_data)
    for threshold in (0.5, 0.7):
        result = greedy_filter(items, threshold, seeds, floor=0.0)
        kept, maxima = reference_greedy(items, threshold, seeds)
        assert result.kept == kept
        assert list(result.max_similarity) == maxima
        assert 0 < len(kept) < len(items)
        _check_result(greedy_filter(items, threshold, seeds), items, seeds, maxima)


def test_real_instructions_pairwise(real_data):
    items, seeds = _real_items(*real_data)
    kept, maxima = reference_pairwise(items, 0.7, seeds)
    for threshold in (0.5, 0.7):
        result = pairwise_filter(items, threshold, seeds, floor=0.0)
        # The pairwise maxima do not depend on the threshold, so one reference run serves both.
        assert result.kept == [i for i, m in enumerate(maxima) if not m > threshold]
        assert list(result.max_similarity) == maxima
        _check_result(pairwise_filter(items, threshold, seeds), items, seeds, maxima)
    assert result.kept == kept and 0 < len(kept) < len(items)
