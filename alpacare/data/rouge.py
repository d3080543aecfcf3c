"""Exact, fast ROUGE-L near-duplicate filtering (self-instruct / Alpaca / AlpaCare semantics).

The reference filters score every new instruction against every other one with
``rouge_score`` (pure-Python O(m*n) LCS tables, one pair at a time), which is quadratic in the
number of instructions with a large constant: hours at 52k. This module returns exactly the
same decisions (it reproduces rouge_score's tokenizer and its floating-point F-measure bit for
bit) in seconds. It is pure: no Hydra, no I/O.

Algorithm
---------
1. Tokens -> integer ids. Each instruction's token multiset becomes a *set* of features
   ``(token, occurrence number)`` ("the#1", "the#2", ...), so the multiset (bag) overlap of two
   instructions is the size of their feature-set intersection. Features are numbered by rarity
   (document frequency, rarest first) and each text's features are kept sorted in that order.
2. Exact bound. rouge_score's F-measure (beta 1) is ``2*LCS/(m+n)`` up to float rounding, and
   ``LCS <= overlap <= min(m, n)``. So a pair can score >= a floor f only if
   ``overlap >= r(m, n) = ceil((f - 1e-9) * (m + n) / 2)`` (the 1e-9 covers rounding: the float
   F differs from the exact ratio by a few ulps, ~1e-16), and only if ``r(m, n) <= min(m, n)``,
   which bounds the partner's length. Pairs sharing no token score exactly 0.
3. Prefix filter (AllPairs / PPJoin, Bayardo et al. 2007, Xiao et al. 2008). Two texts with
   overlap o hold their rarest shared feature among the first ``|x| - o + 1`` features (in rarity
   order) of each: o - 1 shared ones come after it in both. Over all partner lengths, o >= a(m), the
   least admissible r(m, n), so the *long prefix* ``m - a(m) + 1`` finds every pair; over partners
   at least as long (n >= m), o >= r(m, m), so the shorter *short prefix* ``m - r(m, m) + 1`` does.
   The inverted index has two parts: A holds each text's short prefix, B the rest of its long
   prefix; a query probes A with its long prefix and B with its short one (a pair with n <= m meets
   in A, one with n > m in A or B through q's short prefix). Only prefixes are indexed or read: the
   long posting lists of frequent words ("the#1", "a#1") are mostly never built or read.
4. Filters before any LCS. Posting lists are split by the indexed text's length class (one class
   per length up to 16, then 10% wide), and a query at prefix position i reads only the lengths it
   can still reach: from its shortest admissible partner up to the longest n with
   r(m, n) <= m - i. At a text's first posting, where it has met the rarest shared feature, the
   overlap is at most ``1 + min(features left in q, features left in j)`` (PPJoin's positional
   filter, from the position stored in the posting); then a 128-bit signature per text bounds it
   (a feature whose bit is clear in the other's signature is not shared); the survivors get their
   exact overlap by merging the two sorted feature lists, and only those whose overlap reaches
   r(m, n) are candidates for the LCS.
5. Best-first exact maximum. The candidates are bucket-sorted by their bound
   ``2*overlap/(m+n)`` (1024 buckets, O(n)) and their LCS is computed from the highest bound down,
   stopping as soon as the best score found beats every remaining bound (plus a 1e-9 margin).
   Every text scoring >= f is a candidate, so the maximum is exact wherever it is >= f, nearest
   neighbour and ties included; a maximum below f is reported as the best score among the
   candidates scored (a lower bound; 0.0 and no neighbour when none), which says only that the
   exact one is below f too. The keep/drop decision is ``max > threshold`` with the max computed
   by the same float expression as rouge_score (``2*p*r/(p+r)``), so with f <= threshold the
   decisions are exactly the reference's, a pair at exactly the threshold included.
   The filters' floor defaults to the threshold: decisions and the scores of dropped
   instructions are exact and few pairs are looked at. Floor 0 turns the filters off (every text
   sharing a token is a candidate, its overlap counted through the index): every maximum is exact,
   at a cost quadratic in the number of instructions (``max_similarity_to`` against a few hundred
   seeds uses it; benchmarks/bench_dedup.py measures both).
6. LCS length by Hyyro's bit-parallel algorithm in numba (one 64-bit word per 64 tokens of the
   query; tokens of the candidate absent from the query are skipped since they cannot change
   the bit vector).

Semantics
---------
- ``greedy_filter`` (self-instruct, Alpaca): walk in order; keep an instruction iff its
  ROUGE-L against every seed and every instruction kept before it is <= threshold.
  Its reported max similarity is over seeds + instructions kept before it; for a dropped one
  the nearest neighbour is the instruction that knocked it out.
- ``pairwise_filter`` (AlpaCare's released filter.py): drop an instruction if any *other*
  instruction of the input (or any seed, if given) scores above threshold, so both members of
  a near-duplicate pair go. Reported max is over all other instructions and the seeds.
- Ties for the nearest neighbour go to the earliest text, seeds before instructions. An
  instruction that shares no token with any compared text (or tokenizes to nothing) reports
  similarity 0.0 and no neighbour.

The pairwise kernel runs in parallel threads; the greedy walk is sequential by nature.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
from numba import njit, prange

__all__ = ["tokenize", "rouge_l", "FilterResult", "greedy_filter", "pairwise_filter", "max_similarity_to"]

# rouge_score/tokenize.py lowercases, replaces runs of [^a-z0-9] by a space, splits on
# whitespace and keeps tokens matching ^[a-z0-9]+$: that is exactly the [a-z0-9] runs.
_TOKEN_RE = re.compile(r"[a-z0-9]+")
# Texts are tokenized in batches joined by this (see _token_ids).
_BOUNDARY = "\x00"
_TOKEN_OR_BOUNDARY_RE = re.compile(r"[a-z0-9]+|\x00")
_ENCODE_CHUNK = 20_000

# Score buckets for the best-first LCS order, and the slack that covers float rounding between
# the exact bound 2*overlap/(m+n) and rouge_score's float F-measure (a few ulps, ~1e-16).
_N_BUCKETS = 1024
_MARGIN = 1e-9
# Instructions handed to one numba call; between calls the progress callback runs.
_CHUNK = 512

_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)

# progress(done, kept): instructions done so far and how many of them are kept.
Progress = Callable[[int, int], None]


def tokenize(text: str) -> list[str]:
    """Tokens exactly as rouge_score's default tokenizer makes them (use_stemmer=False)."""
    return _TOKEN_RE.findall(text.lower())


def _fmeasure(lcs: int, m: int, n: int) -> float:
    """rouge_score's _score_lcs + scoring.fmeasure, same operations in the same order."""
    if m == 0 or n == 0:
        return 0.0
    precision = lcs / n
    recall = lcs / m
    if precision + recall > 0:
        return 2 * precision * recall / (precision + recall)
    return 0.0


def _lcs_python(a: Sequence[str], b: Sequence[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(a: str, b: str) -> float:
    """ROUGE-L F-measure of two texts, equal to rouge_score's ``score(a, b)["rougeL"].fmeasure``."""
    ta, tb = tokenize(a), tokenize(b)
    return _fmeasure(_lcs_python(ta, tb), len(ta), len(tb))


@dataclass(frozen=True)
class FilterResult:
    """Outcome of a filter run over ``instructions`` (indices refer to that list).

    kept: indices of kept instructions, ascending.
    max_similarity[i]: maximum ROUGE-L F of instruction i against the texts it was compared with
        (greedy: seeds + instructions kept before it; pairwise: seeds + all other instructions),
        exact wherever it is >= ``floor``; a value below ``floor`` is a lower bound of an exact
        maximum that is below ``floor`` too. 0.0 when it shares no token with any of them.
    nearest_index[i] / nearest_seed[i]: index (into instructions / into seeds) of the text that
        achieves that maximum, -1 in the other array or when there is none.
    stats: counters and timings (lcs_computed, candidate_pairs, seconds, ...).
    """

    mode: str
    threshold: float
    kept: list[int]
    max_similarity: np.ndarray
    nearest_index: np.ndarray
    nearest_seed: np.ndarray
    stats: dict = field(default_factory=dict)
    instructions: Sequence[str] = field(default=(), repr=False)
    seeds: Sequence[str] = field(default=(), repr=False)
    floor: float = 0.0

    @property
    def dropped(self) -> list[int]:
        keep = set(self.kept)
        return [i for i in range(len(self.max_similarity)) if i not in keep]

    def nearest_text(self, i: int) -> Optional[str]:
        """The text most similar to instruction i (a seed or an instruction), or None."""
        if self.nearest_seed[i] >= 0:
            return self.seeds[self.nearest_seed[i]]
        if self.nearest_index[i] >= 0:
            return self.instructions[self.nearest_index[i]]
        return None


# --------------------------------------------------------------------------- encoding


@dataclass
class _Corpus:
    """Seeds then instructions as flat int32 arrays (CSR by ``off``)."""

    tok: np.ndarray  # token id per position
    sfeat: np.ndarray  # text k's features (token, occurrence) as rarity ranks, ascending, at off[k]:off[k+1]
    off: np.ndarray  # text k spans positions off[k]:off[k+1]
    n_features: int
    n_seeds: int
    max_len: int
    max_distinct: int


def _encode(texts: Sequence[str], n_seeds: int) -> _Corpus:
    vocab: dict[str, int] = {_BOUNDARY: 0}
    parts, lens = [], []
    for lo in range(0, len(texts), _ENCODE_CHUNK):
        ids, n_tokens = _token_ids(texts[lo:lo + _ENCODE_CHUNK], vocab)
        parts.append(ids)
        lens.append(n_tokens)
    tok = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
    del parts
    off = np.zeros(len(texts) + 1, dtype=np.int64)
    if lens:
        np.cumsum(np.concatenate(lens), out=off[1:])
    vocab_size = max(len(vocab) - 1, 1)
    occ, max_occ, max_distinct = _occurrence_numbers(tok, off, vocab_size)
    # Feature (token, occurrence) numbered densely: token t's occurrences 0..max_occ[t]-1 all occur
    # (a text holding t c times holds its occurrences 0..c-1), so base[t] + occurrence is dense.
    base = np.zeros(vocab_size, dtype=np.int64)
    np.cumsum(max_occ[:-1], out=base[1:])
    feat = (base[tok] + occ).astype(np.int32)
    del occ
    n_features = int(max_occ.sum())
    # Each feature occurs at most once per text, so its count is its document frequency. Features
    # are renamed by rarity (rank 0 = rarest), the global order of the prefix filter.
    df = np.bincount(feat, minlength=n_features)
    rank = np.empty(n_features, dtype=np.int32)
    rank[np.argsort(df, kind="stable")] = np.arange(n_features, dtype=np.int32)
    sfeat = rank[feat]
    del feat
    _sort_segments(sfeat, off)
    return _Corpus(tok, sfeat, off, n_features, n_seeds, int(np.diff(off).max(initial=0)), max_distinct)


def _token_ids(texts: Sequence[str], vocab: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """(token ids of the texts one after the other, tokens per text), ids from ``vocab`` (grown).

    One regex pass over the texts joined by a NUL, which is no token character (so a NUL inside a
    text is a blank to the tokenizer, and between texts a boundary): the same tokens as ``tokenize``
    on each text, without a Python call per text. Lowercasing the joined string changes no ASCII
    letter or digit (only Greek capital sigma's lowercase depends on its neighbours)."""
    joined = _BOUNDARY.join(t.replace(_BOUNDARY, " ") for t in texts).lower()
    ids = np.fromiter(map(vocab.setdefault, _TOKEN_OR_BOUNDARY_RE.findall(joined), _Counter(vocab)), dtype=np.int64)
    cut = np.flatnonzero(ids == 0)  # boundary ids, one between each two texts
    n_tokens = np.diff(np.concatenate(([-1], cut, [len(ids)]))) - 1
    return (ids[ids != 0] - 1).astype(np.int32), n_tokens


class _Counter:
    """Iterator of the next free id of ``vocab``: map(vocab.setdefault, tokens, _Counter(vocab))."""

    def __init__(self, vocab: dict[str, int]):
        self.vocab = vocab

    def __iter__(self):
        return self

    def __next__(self) -> int:
        return len(self.vocab)


@njit(cache=True)
def _sort_segments(values, off):
    for k in range(len(off) - 1):
        values[off[k]:off[k + 1]] = np.sort(values[off[k]:off[k + 1]])


@njit(cache=True)
def _occurrence_numbers(tok, off, vocab_size):
    """occ[p] = how many earlier positions of the same text hold the same token; max_occ[t] = the
    most times one text holds token t; and the most distinct tokens in one text."""
    seen = np.zeros(vocab_size, dtype=np.int32)
    max_occ = np.zeros(vocab_size, dtype=np.int64)
    occ = np.zeros(len(tok), dtype=np.int32)
    max_distinct = 0
    for k in range(len(off) - 1):
        distinct = 0
        for p in range(off[k], off[k + 1]):
            occ[p] = seen[tok[p]]
            if occ[p] == 0:
                distinct += 1
            seen[tok[p]] += 1
        for p in range(off[k], off[k + 1]):
            max_occ[tok[p]] = max(max_occ[tok[p]], seen[tok[p]])
            seen[tok[p]] = 0
        max_distinct = max(max_distinct, distinct)
    return occ, max_occ, max_distinct


# --------------------------------------------------------------------------- prefix filter


@njit(cache=True)
def _required_overlap(low, m, n):
    """Least bag overlap a pair of lengths m, n needs for 2*overlap/(m+n) >= ``low`` (and at least 1:
    texts sharing no token score 0, which is never above a threshold)."""
    return max(1, int(math.ceil(low * (m + n) / 2.0)))


def _length_classes(max_len: int) -> np.ndarray:
    """cls[n]: posting lists are split by the length of the indexed text, one class per length up
    to 16, then classes 10% wide, so that a probe reads only the lengths its position allows."""
    n = np.arange(max_len + 1)
    geometric = 17 + np.floor(np.log(np.maximum(n, 16) / 16.0) / np.log(1.1)).astype(np.int64)
    return np.where(n <= 16, n, geometric).astype(np.int64)


@njit(cache=True)
def _longest_partner(low, m, i, max_len):
    """Longest partner length n whose required overlap r(m, n) fits in the m - i features of q from
    position i on (the most a text first met there can share); one more than that, for rounding."""
    if low <= 0.0:
        return max_len
    return max(0, min(max_len, int(2.0 * (m - i) / low) - m + 1))


@njit(cache=True)
def _prefix_lengths(low, max_len):
    """(long[m], short[m], shortest[m]): how many of a length-m text's rarest features find its
    partners of any length, and its partners at least as long; the shortest partner it can have.

    A partner of length n needs overlap o >= r(m, n) = _required_overlap(low, m, n), and r <= min(m, n)
    (the overlap cannot exceed either text). Two texts with overlap o hold their rarest shared
    feature among their first |x| - o + 1 features in the global (rarity) order: o - 1 shared ones
    come after it in both. r grows with n, so over all admissible partners o >= a(m) = r(m, n) at
    the least n with r(m, n) <= n: long[m] = m - a(m) + 1. Over partners with n >= m, o >= r(m, m):
    short[m] = m - r(m, m) + 1.
    """
    prefix = np.zeros(max_len + 1, dtype=np.int64)
    short = np.zeros(max_len + 1, dtype=np.int64)
    shortest = np.zeros(max_len + 1, dtype=np.int64)
    for m in range(1, max_len + 1):
        lo, hi = 1, m  # r(m, m) <= m since low <= 1
        while lo < hi:
            mid = (lo + hi) // 2
            if _required_overlap(low, m, mid) <= mid:
                hi = mid
            else:
                lo = mid + 1
        prefix[m] = m - _required_overlap(low, m, lo) + 1
        short[m] = m - _required_overlap(low, m, m) + 1
        shortest[m] = lo
    return prefix, short, shortest


# --------------------------------------------------------------------------- LCS kernels


@njit(cache=True)
def _popcount(x):
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return int((x * np.uint64(0x0101010101010101)) >> np.uint64(56))


@njit(cache=True)
def _match_masks(q_tok, q0, q1, slot, pm, n_words):
    """The bit-parallel LCS's match masks of the query q_tok[q0:q1]: each distinct token gets a slot
    (``slot[token]``, -1 = absent) and ``n_words`` 64-bit words in ``pm`` with bit k set where the
    query's k-th token is that token. The caller resets ``slot`` for the query's tokens afterwards."""
    n_slots = 0
    for p in range(q0, q1):
        if slot[q_tok[p]] < 0:
            slot[q_tok[p]] = n_slots
            for w in range(n_words):
                pm[n_slots * n_words + w] = np.uint64(0)
            n_slots += 1
        k = p - q0
        pm[slot[q_tok[p]] * n_words + k // 64] |= np.uint64(1) << np.uint64(k % 64)


@njit(cache=True)
def _lcs_bitparallel(pm, slot, m, n_words, vbuf, tok, start, end):
    """LCS length of the query (encoded in pm/slot, m tokens) and tok[start:end] (Hyyro 2004).

    Bit i of V is 0 where query position i is matched; a candidate token absent from the query
    has an all-zero match mask and leaves V unchanged, so it is skipped.
    """
    if n_words == 1:
        v = _ONES
        for p in range(start, end):
            s = slot[tok[p]]
            if s >= 0:
                u = v & pm[s]
                v = (v + u) | (v - u)
        zeros = ~v
        if m < 64:
            zeros &= (np.uint64(1) << np.uint64(m)) - np.uint64(1)
        return _popcount(zeros)
    for w in range(n_words):
        vbuf[w] = _ONES
    for p in range(start, end):
        s = slot[tok[p]]
        if s < 0:
            continue
        base = s * n_words
        carry = np.uint64(0)
        for w in range(n_words):
            vw = vbuf[w]
            u = vw & pm[base + w]
            t = vw + u
            c1 = np.uint64(1) if t < vw else np.uint64(0)
            t2 = t + carry
            c2 = np.uint64(1) if t2 < t else np.uint64(0)
            vbuf[w] = t2 | (vw - u)  # u is a subset of vw: no borrow crosses words
            carry = c1 | c2
    lcs = 0
    for w in range(n_words):
        zeros = ~vbuf[w]
        bits = m - 64 * w
        if bits < 64:
            zeros &= (np.uint64(1) << np.uint64(bits)) - np.uint64(1)
        lcs += _popcount(zeros)
    return lcs


@njit(cache=True)
def _fmeasure_nb(lcs, m, n):
    # Same float operations, in the same order, as rouge_score (no fastmath: IEEE semantics).
    precision = lcs / n
    recall = lcs / m
    if precision + recall > 0:
        return 2 * precision * recall / (precision + recall)
    return 0.0


@njit(cache=True)
def _lcs_dp(a, b):
    """Plain DP LCS on int arrays; used by tests to check the bit-parallel kernel."""
    n = len(b)
    prev = np.zeros(n + 1, dtype=np.int64)
    cur = np.zeros(n + 1, dtype=np.int64)
    for i in range(len(a)):
        for j in range(n):
            if a[i] == b[j]:
                cur[j + 1] = prev[j] + 1
            else:
                cur[j + 1] = max(prev[j + 1], cur[j])
        prev, cur = cur, prev
    return prev[n]


# --------------------------------------------------------------------------- best match


@njit(cache=True)
def _new_workspace(n_texts, vocab_size, max_len, max_distinct):
    n_words = max(1, (max_len + 63) // 64)
    cnt = np.zeros(n_texts, dtype=np.int32)
    touched = np.empty(n_texts, dtype=np.int32)
    order = np.empty(n_texts, dtype=np.int32)
    bucket = np.zeros(_N_BUCKETS + 2, dtype=np.int64)
    slot = np.full(vocab_size, -1, dtype=np.int32)
    pm = np.zeros(max(1, max_distinct) * n_words, dtype=np.uint64)
    vbuf = np.zeros(n_words, dtype=np.uint64)
    return cnt, touched, order, bucket, slot, pm, vbuf


@njit(cache=True)
def _first_group(gkey, lo, hi, key):
    """First g in lo..hi-1 with gkey[g] >= key (binary search; hi if none)."""
    while lo < hi:
        mid = (lo + hi) // 2
        if gkey[mid] < key:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True)
def _probe(q, f, i, m, low, c_lo, c_hi, n_classes, part, sig, cnt, touched, n_touched):
    """Texts of feature f's posting lists in length classes c_lo..c_hi into ``touched`` (query q
    holds f at position i of its rarity order; cnt[j]: 1 = a candidate, -1 = ruled out, 0 = not met).

    If f is the rarest feature q and j share, every shared feature lies at or after it in both, so
    1 + min(features left after it in q, in j) bounds their overlap (PPJoin's positional filter);
    a text whose bound falls short of ``low`` is skipped without touching its counter. That is safe:
    a pair that can reach ``low`` has its rarest shared feature in both probed ranges (the class
    range only narrows as i grows), is met there first and passes. A text that passes is then
    checked once against its signature bound (see _signatures).
    Returns (the new n_touched, postings read)."""
    post, fgroup, gkey, gstart, glen, fill = part
    left_q = m - 1 - i
    n_read = 0
    if fill[f] == 0:  # nothing indexed under f yet: no need to find its classes
        return n_touched, 0
    end = fgroup[f + 1]
    g = _first_group(gkey, fgroup[f], end, np.int64(f) * n_classes + c_lo)
    c_stop = np.int64(f) * n_classes + c_hi
    while g < end and gkey[g] <= c_stop:
        if glen[g] == 0:
            g += 1
            continue
        k0, k1 = 3 * gstart[g], 3 * (gstart[g] + glen[g])
        n_read += glen[g]
        g += 1
        if low <= 0.0:  # floor 0: every text sharing a feature is a candidate, hits counted
            for k in range(k0, k1, 3):
                j = post[k]
                if cnt[j] == 0:
                    touched[n_touched] = j
                    n_touched += 1
                cnt[j] += 1
            continue
        for k in range(k0, k1, 3):
            n = post[k + 2]
            need = _required_overlap(low, m, n)
            if 1 + min(left_q, n - 1 - post[k + 1]) < need:
                continue
            j = post[k]
            if cnt[j] != 0:
                continue
            touched[n_touched] = j
            n_touched += 1
            if _signature_bound(sig, q, j, m) < need or _signature_bound(sig, j, q, n) < need:
                cnt[j] = -1
            else:
                cnt[j] = 1
    return n_touched, n_read


@njit(cache=True)
def _signatures(sfeat, off):
    """128 bits per text, one set per feature (by a multiplicative hash of its id). A feature of x
    whose bit is clear in y's signature is not in y, so
    ``overlap(x, y) <= |x| - popcount(sig(x) & ~sig(y))``: a bound in a few instructions."""
    sig = np.zeros((len(off) - 1, 2), dtype=np.uint64)
    for k in range(len(off) - 1):
        for p in range(off[k], off[k + 1]):
            h = (np.uint64(sfeat[p]) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(57)
            sig[k, h >> np.uint64(6)] |= np.uint64(1) << (h & np.uint64(63))
    return sig


@njit(cache=True)
def _signature_bound(sig, x, y, m):
    """Upper bound of overlap(x, y) from the signatures, x of length m (see _signatures)."""
    return m - _popcount(sig[x, 0] & ~sig[y, 0]) - _popcount(sig[x, 1] & ~sig[y, 1])


@njit(cache=True)
def _overlap(sfeat, a0, a1, b0, b1):
    """Size of the intersection of two ascending feature lists (the bag overlap of two texts)."""
    o = 0
    while a0 < a1 and b0 < b1:
        x, y = sfeat[a0], sfeat[b0]
        if x == y:
            o += 1
            a0 += 1
            b0 += 1
        elif x < y:
            a0 += 1
        else:
            b0 += 1
    return o


@njit(cache=True)
def _best_match(q, low, ix, tok, sfeat, off, skip, cnt, touched, order, bucket, slot, pm, vbuf):
    """Max ROUGE-L F of text q against the indexed texts (except ``skip``), exact when it is
    >= ``low`` + _MARGIN; below that, the best among the candidates scored (a lower bound).

    The index is in two parts (see _Index): A holds each text's short prefix, B the rest of its
    long prefix. A pair with n <= m has its rarest shared feature in q's long prefix and j's short
    one; a pair with n > m, in q's short prefix and j's long one. So q probes A with its long prefix
    and B with its short one, rarest feature first.

    Returns (best score, index of the earliest text achieving it or -1, LCS runs, candidates,
    postings read).
    """
    long_prefix, short_prefix, shortest, cls, part_a, part_b, sig = ix
    q0, q1 = off[q], off[q + 1]
    m = q1 - q0
    if m == 0:
        return 0.0, -1, 0, 0, 0
    # 1. Probe, within the partner lengths each position allows: from q's shortest possible partner
    #    (A) or the lengths above m (B: shorter partners are all found through A) up to the longest
    #    one that position i leaves room for.
    n_touched = 0
    n_read = 0
    max_len = len(cls) - 1
    n_classes = cls[max_len] + 1
    for i in range(long_prefix[m]):
        f = sfeat[q0 + i]
        c_hi = cls[_longest_partner(low, m, i, max_len)]
        n_touched, r = _probe(q, f, i, m, low, cls[shortest[m]], c_hi, n_classes, part_a, sig, cnt, touched,
                              n_touched)
        n_read += r
        if i < short_prefix[m]:
            n_touched, r = _probe(q, f, i, m, low, cls[min(m + 1, max_len)], c_hi, n_classes, part_b, sig, cnt,
                                  touched, n_touched)
            n_read += r
    if skip >= 0 and cnt[skip] != 0:  # the query itself, when it is in the index
        cnt[skip] = 0
        for t in range(n_touched):
            if touched[t] == skip:
                touched[t] = touched[n_touched - 1]
                n_touched -= 1
                break
    # 2. Exact bag overlap of each candidate: at floor 0 (both texts probed whole) the count of hits,
    #    else a merge of the two sorted feature lists. Candidates whose overlap cannot reach ``low``
    #    go; cnt[j] becomes the overlap.
    kept = 0
    n_candidates = 0
    for t in range(n_touched):
        j = touched[t]
        if cnt[j] < 0:
            cnt[j] = 0
            continue
        n_candidates += 1
        n = off[j + 1] - off[j]
        need = _required_overlap(low, m, n)
        if low <= 0.0:
            o = cnt[j]
        else:
            o = _overlap(sfeat, q0, q1, off[j], off[j + 1])
        if o < need:
            cnt[j] = 0
            continue
        cnt[j] = o
        touched[kept] = j
        kept += 1
    n_touched = kept
    if n_touched == 0:
        return 0.0, -1, 0, n_candidates, n_read
    # 3. Bucket-sort candidates by their bound 2*overlap/(m+n), highest first.
    bucket[:] = 0
    for t in range(n_touched):
        j = touched[t]
        ub = 2.0 * cnt[j] / (m + off[j + 1] - off[j])
        bucket[int(ub * _N_BUCKETS)] += 1
    total = 0
    for b in range(_N_BUCKETS, -1, -1):  # bucket b starts at ``total`` in ``order``
        c = bucket[b]
        bucket[b] = total
        total += c
    for t in range(n_touched):
        j = touched[t]
        ub = 2.0 * cnt[j] / (m + off[j + 1] - off[j])
        b = int(ub * _N_BUCKETS)
        order[bucket[b]] = j
        bucket[b] += 1
    # 4. Match masks of the query for the bit-parallel LCS.
    n_words = max(1, (m + 63) // 64)
    _match_masks(tok, q0, q1, slot, pm, n_words)
    # 5. Exact LCS in order of decreasing bound until no bound can beat the best.
    best = 0.0
    best_j = -1
    n_lcs = 0
    for t in range(n_touched):
        j = order[t]
        n = off[j + 1] - off[j]
        ub = 2.0 * cnt[j] / (m + n)
        if ub + _MARGIN < best:
            # Sorted by bucket, so only this bucket can still hold a better bound.
            b = int(ub * _N_BUCKETS)
            if (b + 1) / _N_BUCKETS + _MARGIN < best:
                break
            continue
        lcs = _lcs_bitparallel(pm, slot, m, n_words, vbuf, tok, off[j], off[j + 1])
        n_lcs += 1
        f = _fmeasure_nb(lcs, m, n)
        if f > best or (f == best and f > 0.0 and j < best_j):
            best = f
            best_j = j
    # 6. Reset the scratch arrays for the next query.
    for t in range(n_touched):
        cnt[touched[t]] = 0
    for p in range(q0, q1):
        slot[tok[p]] = -1
    return best, best_j, n_lcs, n_candidates, n_read


@njit(cache=True)
def _index_text(j, ix, sfeat, off):
    """Text j into the index: its short prefix into part A, the rest of its long prefix into B, in
    the posting list of (feature, j's length class); (j, position of the feature in j's rarity
    order, j's length) per posting, three int32 in a row so that a probe reads one in one place."""
    long_prefix, short_prefix, shortest, cls, part_a, part_b, sig = ix
    nc = cls[len(cls) - 1] + 1
    j0 = off[j]
    n = off[j + 1] - j0
    for i in range(long_prefix[n]):
        f = sfeat[j0 + i]
        post, fgroup, gkey, gstart, glen, fill = part_a if i < short_prefix[n] else part_b
        key = np.int64(f) * nc + cls[n]
        g = fgroup[f] + np.searchsorted(gkey[fgroup[f]:fgroup[f + 1]], key)
        k = 3 * (gstart[g] + glen[g])
        glen[g] += 1
        fill[f] += 1
        post[k] = j
        post[k + 1] = i
        post[k + 2] = n


@njit(cache=True)
def _posting_keys(long_prefix, short_prefix, cls, n_classes, sfeat, off, part):
    """(feature, length class) as one int64, for every posting that part A (0) or B (1) may receive."""
    total = 0
    for j in range(len(off) - 1):
        n = off[j + 1] - off[j]
        total += short_prefix[n] if part == 0 else long_prefix[n] - short_prefix[n]
    keys = np.empty(total, dtype=np.int64)
    k = 0
    for j in range(len(off) - 1):
        j0 = off[j]
        n = off[j + 1] - j0
        lo, hi = (0, short_prefix[n]) if part == 0 else (short_prefix[n], long_prefix[n])
        for i in range(lo, hi):
            keys[k] = np.int64(sfeat[j0 + i]) * n_classes + cls[n]
            k += 1
    return keys


@njit(cache=True)
def _greedy_chunk(lo, hi, threshold, low, ix, tok, sfeat, off, keep, best, best_j, counters,
                  cnt, touched, order, bucket, slot, pm, vbuf):
    """Greedy walk over texts lo..hi-1; kept ones join the index for the texts after them."""
    for q in range(lo, hi):
        s, j, n_lcs, n_cand, n_read = _best_match(q, low, ix, tok, sfeat, off, -1,
                                                  cnt, touched, order, bucket, slot, pm, vbuf)
        best[q] = s
        best_j[q] = j
        counters[0] += n_lcs
        counters[1] += n_cand
        counters[3] += n_read
        keep[q] = not (s > threshold)
        if keep[q]:
            counters[2] += 1
            _index_text(q, ix, sfeat, off)


@njit(cache=True, parallel=True)
def _pairwise_chunk(lo, hi, n_threads, low, long_prefix, short_prefix, shortest, cls, a0, a1, a2, a3, a4,
                    a5, b0, b1, b2, b3, b4, b5, sig, tok, sfeat, off, best, best_j, counters, vocab_size, max_len,
                    max_distinct):
    """Each text lo..hi-1 against the full (static) index, in parallel threads. The index comes as
    flat arrays: numba's parallel loops take no tuples."""
    n_texts = len(off) - 1
    for t in prange(n_threads):
        ix = (long_prefix, short_prefix, shortest, cls, (a0, a1, a2, a3, a4, a5), (b0, b1, b2, b3, b4, b5), sig)
        cnt, touched, order, bucket, slot, pm, vbuf = _new_workspace(n_texts, vocab_size, max_len, max_distinct)
        for q in range(lo + t, hi, n_threads):
            s, j, n_lcs, n_cand, n_read = _best_match(q, low, ix, tok, sfeat, off, q,
                                                      cnt, touched, order, bucket, slot, pm, vbuf)
            best[q] = s
            best_j[q] = j
            counters[t, 0] += n_lcs
            counters[t, 1] += n_cand
            counters[t, 2] += n_read


# --------------------------------------------------------------------------- public API


def _check_threshold(threshold: float) -> float:
    threshold = float(threshold)
    if math.isnan(threshold) or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    return threshold


def _check_floor(floor: Optional[float], threshold: float) -> float:
    if floor is None:
        return threshold
    floor = float(floor)
    if math.isnan(floor) or not 0.0 <= floor <= threshold:
        raise ValueError(f"similarity floor must be in [0, threshold={threshold}], got {floor}")
    return floor


@dataclass
class _Index:
    """Inverted index (feature, length class) -> (text, position of the feature in the text's rarity
    order, text length), over the prefixes that a floor allows, in two parts: A holds each text's
    short prefix (enough for partners at least as long), B the rest of its long prefix (for longer
    partners). Each part: postings, and per feature its lists (groups) by length class, ascending.
    The lists have room for every text and fill as texts join."""

    low: float  # pairs whose 2*overlap/(m+n) is below this cannot score >= the floor
    long_prefix: np.ndarray  # [length] -> features probed/indexed for partners of any length
    short_prefix: np.ndarray  # [length] -> features enough for partners at least as long
    shortest: np.ndarray  # [length] -> shortest possible partner
    cls: np.ndarray  # [length] -> length class
    part_a: tuple  # (postings, first group per feature, key / start / fill per group, fill per feature)
    part_b: tuple
    sig: np.ndarray  # per text, see _signatures

    @classmethod
    def empty(cls, corpus: _Corpus, floor: float) -> "_Index":
        low = floor - _MARGIN  # rouge_score's float F may exceed 2*LCS/(m+n) by a few ulps
        long_prefix, short_prefix, shortest = _prefix_lengths(low, corpus.max_len)
        classes = _length_classes(corpus.max_len)
        nc = int(classes[-1]) + 1
        parts = []
        for part in (0, 1):
            keys, room = np.unique(_posting_keys(long_prefix, short_prefix, classes, nc, corpus.sfeat, corpus.off, part),
                                   return_counts=True)
            fgroup = np.searchsorted(keys // nc, np.arange(corpus.n_features + 1)).astype(np.int64)
            gstart = np.zeros(len(keys), dtype=np.int64)
            np.cumsum(room[:-1], out=gstart[1:])
            parts.append((np.empty(3 * int(room.sum()), dtype=np.int32), fgroup, keys, gstart,
                          np.zeros(len(keys), dtype=np.int64), np.zeros(corpus.n_features, dtype=np.int64)))
        return cls(low, long_prefix, short_prefix, shortest, classes, parts[0], parts[1],
                   _signatures(corpus.sfeat, corpus.off))

    @property
    def arrays(self) -> tuple:
        return self.long_prefix, self.short_prefix, self.shortest, self.cls, self.part_a, self.part_b, self.sig

    def add(self, corpus: _Corpus, j: int) -> None:
        _index_text(j, self.arrays, corpus.sfeat, corpus.off)

    @property
    def postings(self) -> int:
        return int(self.part_a[4].sum() + self.part_b[4].sum())


def _result(mode, threshold, floor, keep, best, best_j, corpus, instructions, seeds, stats) -> FilterResult:
    s = corpus.n_seeds
    nearest = best_j[s:]
    nearest_seed = np.where((nearest >= 0) & (nearest < s), nearest, -1)
    nearest_index = np.where(nearest >= s, nearest - s, -1)
    kept = np.flatnonzero(keep[s:]).tolist()
    stats.update(mode=mode, threshold=threshold, floor=floor, total=len(instructions), seeds=len(seeds),
                 kept=len(kept), dropped=len(instructions) - len(kept))
    return FilterResult(mode, threshold, kept, best[s:].copy(), nearest_index, nearest_seed, stats,
                        instructions, seeds, floor)


def _prepare(instructions, seeds):
    instructions = list(instructions)
    seeds = list(seeds)
    for name, texts in (("instructions", instructions), ("seeds", seeds)):
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"{name}[{i}] is {type(t).__name__}, expected str")
    corpus = _encode(seeds + instructions, len(seeds))
    return instructions, seeds, corpus


def greedy_filter(instructions: Sequence[str], threshold: float, seeds: Sequence[str] = (),
                  progress: Optional[Progress] = None, floor: Optional[float] = None) -> FilterResult:
    """Self-instruct/Alpaca filter: keep i iff ROUGE-L(i, t) <= threshold for every seed t and
    every instruction t kept before i. ``progress(done, kept)`` is called as instructions are done.
    ``max_similarity`` is exact wherever it is >= ``floor`` (default: the threshold; 0.0 = everywhere).
    """
    threshold = _check_threshold(threshold)
    return _greedy_walk("greedy", instructions, threshold, _check_floor(floor, threshold), seeds, progress)


def _greedy_walk(mode: str, instructions: Sequence[str], threshold: float, floor: float, seeds: Sequence[str],
                 progress: Optional[Progress]) -> FilterResult:
    """Seeds indexed first, then each instruction scored (best match) against the index and added
    to it when its best score is <= ``threshold``."""
    t0 = time.perf_counter()
    instructions, seeds, corpus = _prepare(instructions, seeds)
    n_texts = len(corpus.off) - 1
    index = _Index.empty(corpus, floor)
    t_index = time.perf_counter()
    vocab_size = int(corpus.tok.max(initial=0)) + 1
    ws = _new_workspace(n_texts, vocab_size, corpus.max_len, corpus.max_distinct)
    keep = np.zeros(n_texts, dtype=np.bool_)
    best = np.zeros(n_texts, dtype=np.float64)
    best_j = np.full(n_texts, -1, dtype=np.int64)
    counters = np.zeros(4, dtype=np.int64)  # LCS runs, candidates, kept, postings read
    for j in range(corpus.n_seeds):
        index.add(corpus, j)
    for lo in range(corpus.n_seeds, n_texts, _CHUNK):
        hi = min(lo + _CHUNK, n_texts)
        _greedy_chunk(lo, hi, threshold, index.low, index.arrays, corpus.tok, corpus.sfeat, corpus.off, keep, best,
                      best_j, counters, *ws)
        if progress is not None:
            progress(hi - corpus.n_seeds, int(counters[2]))
    stats = {"lcs_computed": int(counters[0]), "candidate_pairs": int(counters[1]), "postings_read": int(counters[3]),
             "index_postings": index.postings, "encode_seconds": round(t_index - t0, 3),
             "seconds": round(time.perf_counter() - t0, 3)}
    return _result(mode, threshold, floor, keep, best, best_j, corpus, instructions, seeds, stats)


def pairwise_filter(instructions: Sequence[str], threshold: float, seeds: Sequence[str] = (),
                    progress: Optional[Progress] = None, floor: Optional[float] = None) -> FilterResult:
    """AlpaCare release filter: drop i if ROUGE-L(i, t) > threshold for any other instruction t
    of the input or any seed t; both members of a near-duplicate pair are dropped.
    ``max_similarity`` is exact wherever it is >= ``floor`` (default: the threshold; 0.0 = everywhere).
    """
    threshold = _check_threshold(threshold)
    floor = _check_floor(floor, threshold)
    t0 = time.perf_counter()
    instructions, seeds, corpus = _prepare(instructions, seeds)
    n_texts = len(corpus.off) - 1
    index = _Index.empty(corpus, floor)
    for j in range(n_texts):  # every text is compared with every other: index them all
        index.add(corpus, j)
    t_index = time.perf_counter()
    vocab_size = int(corpus.tok.max(initial=0)) + 1
    best = np.zeros(n_texts, dtype=np.float64)
    best_j = np.full(n_texts, -1, dtype=np.int64)
    n_threads = _n_threads()
    counters = np.zeros((n_threads, 3), dtype=np.int64)  # LCS runs, candidates, postings read
    chunk = _CHUNK * n_threads
    kept = 0
    for lo in range(corpus.n_seeds, n_texts, chunk):
        hi = min(lo + chunk, n_texts)
        _pairwise_chunk(lo, hi, n_threads, index.low, index.long_prefix, index.short_prefix, index.shortest,
                        index.cls, *index.part_a, *index.part_b, index.sig, corpus.tok, corpus.sfeat, corpus.off,
                        best, best_j, counters, vocab_size, corpus.max_len, corpus.max_distinct)
        kept += int(np.count_nonzero(~(best[lo:hi] > threshold)))
        if progress is not None:
            progress(hi - corpus.n_seeds, kept)
    keep = ~(best > threshold)
    keep[: corpus.n_seeds] = False
    stats = {"lcs_computed": int(counters[:, 0].sum()), "candidate_pairs": int(counters[:, 1].sum()),
             "postings_read": int(counters[:, 2].sum()), "index_postings": index.postings,
             "encode_seconds": round(t_index - t0, 3), "seconds": round(time.perf_counter() - t0, 3)}
    return _result("pairwise", threshold, floor, keep, best, best_j, corpus, instructions, seeds, stats)


def _n_threads() -> int:
    import numba

    return max(1, int(numba.get_num_threads()))


def max_similarity_to(instructions: Sequence[str], references: Sequence[str],
                      progress: Optional[Progress] = None) -> FilterResult:
    """Each instruction's exact maximum ROUGE-L F against ``references`` only (not against each
    other): the greedy walk with only the references indexed and nothing kept, so no instruction
    joins the index. ``nearest_seed[i]`` is the index of the closest reference. Used by the
    report's dataset analysis (generated tasks vs the seed tasks)."""
    # Threshold -1: every score (>= 0) is "above" it, so nothing is kept or indexed. Floor 0: no
    # prefix filter, every reference sharing a token with the instruction is a candidate.
    return _greedy_walk("against_references", instructions, -1.0, 0.0, references, progress)
