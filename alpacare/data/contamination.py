"""Test-set contamination: which training texts contain a test item (exact scores, fast).

A teacher can hand back benchmark questions it has seen; a student trained on them scores well for
the wrong reason. This module finds, for every training text (instruction and input together), the
test item it contains best. It is pure: no Hydra, no I/O; the test items come from
alpacare/evaluation/test_items.py.

Score
-----
``containment(item, text) = max over windows w of LCS(item, w) / |item|`` over rouge_score's tokens
(lowercased ``[a-z0-9]+`` runs, ``alpacare.data.rouge.tokenize``), where a window is a stretch of the
text at most ``window(|item|)`` tokens long (the item plus a quarter plus two): the ROUGE-L recall of
the best-matching passage of the text, with the test item as the reference, i.e. the share of the
item's words that appear, in order and close together, in the text. It is 1.0 for a verbatim copy,
a recased one, one embedded in a longer instruction and one moved into the input (instruction and
input are scored as one text); each changed word of the item costs 1/|item|. The window keeps a short
item from matching a long text whose words merely contain the item's as a scattered subsequence.
A text is contaminated when its best score is *above* the threshold (``dedup.contamination_threshold``;
above, like ``dedup.threshold``): at 0.8 a 5-word item must be copied whole, a 20-word item with at
most 3 words changed.

Candidates
----------
Scoring every text against every item (52k x ~40k with the fetched benchmarks) is out of the question.
Only items that share a word trigram with the text are scored. An item whose every trigram holds a
changed word keeps at most 4 of 5 of its words (one change in the middle of a 5-word item; fewer for
any other length), so at thresholds >= 0.8 no copy made by changing words is lost; only a copy with
a word inserted after every second word would be (tests/test_contamination.py checks this against
brute force). An inverted index maps each trigram (three token ids packed into one int64, exact, no
hashing) to the items holding it; one pass over a text's trigrams' posting lists collects its
candidates. Requiring a *contiguous* shared trigram also keeps a short item from
matching a long text whose words happen to contain the item's as a scattered subsequence.
For each candidate, the multiset word overlap bounds the LCS from above (``LCS <= overlap``), so the
bit-parallel LCS (the ROUGE-L kernel of alpacare/data/rouge.py) runs only for candidates whose bound
can reach the threshold and beat the best so far. Items shorter than ``MIN_ITEM_TOKENS`` are not
indexed: three words ("What is Atlantis?") are a phrase, not evidence of a copied item.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
from numba import njit

from alpacare.data.rouge import _lcs_bitparallel, _match_masks, tokenize

__all__ = ["TestItem", "Match", "ContaminationIndex", "MIN_ITEM_TOKENS", "NGRAM"]

# Word n-gram of the candidate index (see the module docstring for why 3).
NGRAM = 3
# Shortest test item that is indexed, in tokens. Benchmarks/bench_contamination.py measures the
# precision and recall this gives on copies of real test items vs real seed tasks.
MIN_ITEM_TOKENS = 4
# Token ids are packed three to an int64 (21 bits each).
_ID_BITS = 21
_MAX_VOCAB = 1 << _ID_BITS
# Texts handed to one numba call; the progress callback runs between calls.
_CHUNK = 4096


@dataclass(frozen=True)
class TestItem:
    """One item of a test set or benchmark: where it comes from, its id there, and its text."""

    source: str
    id: str
    text: str


@dataclass(frozen=True)
class Match:
    """A training text's best-contained test item and its containment score (0..1)."""

    index: int  # into the checked texts
    item: TestItem
    score: float


@dataclass
class CheckResult:
    """Every checked text's best score and item (-1: none shares a trigram); ``matches`` holds those
    above the threshold. A score at or below the threshold is a lower bound (candidates that could
    not exceed it are not scored), so check with threshold 0 for every exact score."""

    threshold: float
    best_score: np.ndarray
    best_item: np.ndarray
    matches: list[Match]
    stats: dict = field(default_factory=dict)


def _encode(texts: Sequence[str], vocab: dict[str, int], grow: bool) -> tuple[np.ndarray, np.ndarray]:
    """Token ids (CSR by ``off``); unknown tokens get new ids when ``grow``, else -1."""
    ids: list[int] = []
    off = np.zeros(len(texts) + 1, dtype=np.int64)
    if grow:
        for k, text in enumerate(texts):
            ids.extend([vocab.setdefault(w, len(vocab)) for w in tokenize(text)])
            off[k + 1] = len(ids)
    else:
        get = vocab.get
        for k, text in enumerate(texts):
            ids.extend([get(w, -1) for w in tokenize(text)])
            off[k + 1] = len(ids)
    return np.asarray(ids, dtype=np.int64), off


def _gram_keys(tok: np.ndarray, off: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(key, position) of every trigram that lies inside one text and holds no unknown (-1) token."""
    if len(tok) < NGRAM:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    pos = np.arange(len(tok) - NGRAM + 1)
    text_end = np.repeat(off[1:], np.diff(off))[: len(pos)]
    ok = pos + NGRAM <= text_end
    for k in range(NGRAM):
        ok &= tok[pos + k] >= 0
    pos = pos[ok]
    key = np.zeros(len(pos), dtype=np.int64)
    for k in range(NGRAM):
        key = (key << _ID_BITS) | tok[pos + k]
    return key, pos


class ContaminationIndex:
    """The test items, tokenized, with a trigram -> items index. Build once, ``check`` many texts."""

    def __init__(self, items: Sequence[TestItem]):
        t0 = time.perf_counter()
        self.vocab: dict[str, int] = {}
        tok, off = _encode([it.text for it in items], self.vocab, grow=True)
        lens = np.diff(off)
        keep = np.flatnonzero(lens >= MIN_ITEM_TOKENS)
        self.items = [items[i] for i in keep]
        self.skipped_short = len(items) - len(keep)
        starts = off[keep]
        self.off = np.concatenate([[0], np.cumsum(lens[keep])]).astype(np.int64)
        self.tok = np.concatenate([tok[s:s + n] for s, n in zip(starts, lens[keep])]) if len(keep) else np.zeros(0, np.int64)
        if len(self.vocab) >= _MAX_VOCAB:
            raise ValueError(f"contamination index: {len(self.vocab)} distinct test-item tokens, more than {_MAX_VOCAB}")
        key, pos = _gram_keys(self.tok, self.off)
        item_of = np.searchsorted(self.off, pos, side="right") - 1
        # (trigram, item) pairs sorted and deduplicated: the posting list of each trigram, items ascending.
        order = np.lexsort((item_of, key))
        key, item_of = key[order], item_of[order]
        fresh = np.ones(len(key), dtype=bool)
        fresh[1:] = (key[1:] != key[:-1]) | (item_of[1:] != item_of[:-1])
        key, item_of = key[fresh], item_of[fresh]
        self.gram_keys, first = np.unique(key, return_index=True)
        self.post_start = np.append(first, len(key)).astype(np.int64)
        self.post = item_of.astype(np.int32)
        self.seconds = time.perf_counter() - t0

    def __len__(self) -> int:
        return len(self.items)

    def check(self, texts: Sequence[str], threshold: float,
              progress: Optional[Callable[[int], None]] = None) -> CheckResult:
        """Each text's best containment of a test item; ``matches`` = texts scoring above ``threshold``."""
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"contamination threshold must be in [0, 1), got {threshold}")
        t0 = time.perf_counter()
        n = len(texts)
        best = np.zeros(n, dtype=np.float64)
        best_j = np.full(n, -1, dtype=np.int64)
        counters = np.zeros(2, dtype=np.int64)
        if self.items:
            for lo in range(0, n, _CHUNK):
                hi = min(lo + _CHUNK, n)
                tok, off = _encode(texts[lo:hi], self.vocab, grow=False)
                key, pos = _gram_keys(tok, off)
                g = np.searchsorted(self.gram_keys, key)
                g[g >= len(self.gram_keys)] = 0
                hit = (self.gram_keys[g] == key) if len(self.gram_keys) else np.zeros(len(key), bool)
                # Per position: the trigram's index in the item index, or -1.
                gram_at = np.full(len(tok), -1, dtype=np.int64)
                gram_at[pos[hit]] = g[hit]
                _check_chunk(tok, off, gram_at, self.tok, self.off, self.post, self.post_start, len(self.vocab),
                             float(threshold), best[lo:hi], best_j[lo:hi], counters)
                if progress is not None:
                    progress(hi - lo)
        matches = [Match(int(i), self.items[best_j[i]], float(best[i])) for i in np.flatnonzero(best > threshold)]
        stats = {"texts": n, "items": len(self.items), "items_too_short": self.skipped_short,
                 "candidate_pairs": int(counters[0]), "lcs_computed": int(counters[1]),
                 "index_seconds": round(self.seconds, 3), "check_seconds": round(time.perf_counter() - t0, 3)}
        return CheckResult(float(threshold), best, best_j, matches, stats)


@njit(cache=True)
def _check_chunk(tok, off, gram_at, q_tok, q_off, post, post_start, vocab_size, threshold, best, best_j, counters):
    """Every text of the chunk against the index. One thread: the check is cheap next to loading the
    sources (benchmarks/bench_contamination.py), and a parallel kernel would add seconds of numba
    compilation to every fresh install."""
    n_texts = len(off) - 1
    n_items = len(q_off) - 1
    max_q = 0
    for j in range(n_items):
        max_q = max(max_q, q_off[j + 1] - q_off[j])
    n_words = max(1, (max_q + 63) // 64)
    stamp = np.full(max(n_items, 1), -1, dtype=np.int64)
    touched = np.empty(max(n_items, 1), dtype=np.int64)
    # One spare entry: unknown text tokens (id -1) index the last one, which stays 0 / -1.
    count = np.zeros(vocab_size + 1, dtype=np.int32)
    used = np.zeros(vocab_size + 1, dtype=np.int32)
    slot = np.full(vocab_size + 1, -1, dtype=np.int32)
    pm = np.zeros((max_q + 1) * n_words, dtype=np.uint64)
    vbuf = np.zeros(n_words, dtype=np.uint64)
    for i in range(n_texts):
        s, j, n_cand, n_lcs = _best_item(i, tok, off, gram_at, q_tok, q_off, post, post_start, threshold,
                                         stamp, touched, count, used, slot, pm, vbuf)
        best[i] = s
        best_j[i] = j
        counters[0] += n_cand
        counters[1] += n_lcs


@njit(cache=True)
def _best_item(i, tok, off, gram_at, q_tok, q_off, post, post_start, threshold, stamp, touched, count, used, slot, pm, vbuf):
    """Best containment score of any candidate item in text i, and that item (earliest on ties)."""
    t0, t1 = off[i], off[i + 1]
    n_touched = 0
    for p in range(t0, t1):
        g = gram_at[p]
        if g < 0:
            continue
        for k in range(post_start[g], post_start[g + 1]):
            j = post[k]
            if stamp[j] != i:
                stamp[j] = i
                touched[n_touched] = j
                n_touched += 1
    if n_touched == 0:
        return 0.0, -1, 0, 0
    for p in range(t0, t1):
        if tok[p] >= 0:
            count[tok[p]] += 1
    best = 0.0
    best_j = -1
    n_lcs = 0
    for c in range(n_touched):
        j = touched[c]
        a, b = q_off[j], q_off[j + 1]
        m = b - a
        # Multiset overlap: an upper bound on the LCS.
        overlap = 0
        for p in range(a, b):
            w = q_tok[p]
            if used[w] < count[w]:
                overlap += 1
            used[w] += 1
        for p in range(a, b):
            used[q_tok[p]] = 0
        bound = overlap / m
        if bound <= threshold or bound < best or (bound == best and j > best_j):
            continue
        lcs = _lcs_with_pattern(q_tok, a, b, tok, t0, t1, slot, pm, vbuf)
        n_lcs += 1
        score = lcs / m
        if score > best or (score == best and score > 0.0 and j < best_j):
            best = score
            best_j = j
    for p in range(t0, t1):
        if tok[p] >= 0:
            count[tok[p]] = 0
    return best, best_j, n_touched, n_lcs


def window(m: int) -> int:
    """Longest stretch of a text that may hold a copy of an m-token item: the item plus a quarter of
    its length plus two words of insertions (see the module docstring)."""
    return m + (m + 3) // 4 + 2


@njit(cache=True)
def _lcs_with_pattern(q_tok, a, b, tok, t0, t1, slot, pm, vbuf):
    """Max LCS of item q_tok[a:b] (the bit-parallel pattern) and any window of text tok[t0:t1] that
    starts at a token of the item and spans at most ``window(m)`` tokens."""
    m = b - a
    n_words = max(1, (m + 63) // 64)
    _match_masks(q_tok, a, b, slot, pm, n_words)
    span = m + (m + 3) // 4 + 2
    best = 0
    # Unknown text tokens (-1) read slot[-1], the spare entry, which is -1: skipped as absent from the item.
    for s in range(t0, t1):
        if slot[tok[s]] < 0:
            continue
        lcs = _lcs_bitparallel(pm, slot, m, n_words, vbuf[:n_words], tok, s, min(t1, s + span))
        if lcs > best:
            best = lcs
            if best == m:
                break
        if s + span >= t1:  # later windows are suffixes of this one
            break
    for p in range(a, b):
        slot[q_tok[p]] = -1
    return best
