"""Exact and near-duplicate removal (datasketch MinHash LSH over word 5-gram shingles).

Duplicates waste training steps and make a model memorize; across the train/held-out
boundary they also make held-out perplexity lie. The first occurrence (in input order)
is kept, so results are deterministic.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

_WORD = re.compile(r"\w+")


@dataclass
class DedupResult:
    keep: list[int]
    exact: int = 0
    near: int = 0
    examples: list[tuple[int, int]] = field(default_factory=list)  # (removed, kept) index pairs


def _normalized(text: str) -> str:
    return " ".join(text.lower().split())


def shingles(text: str, n: int = 5) -> set[bytes]:
    """Word n-grams of the lowercased text (single words when the text is shorter than n)."""
    words = _WORD.findall(text.lower())
    if len(words) < n:
        return {w.encode() for w in words}
    return {" ".join(words[i:i + n]).encode() for i in range(len(words) - n + 1)}


def deduplicate(texts: list[str], threshold: float = 0.8, num_perm: int = 128, seed: int = 1,
                ngram: int = 5) -> DedupResult:
    """Indices of ``texts`` to keep after dropping exact copies and near copies (Jaccard ≥ threshold).

    ``ngram``: words per shingle; short texts (questions) need short shingles to be compared at all."""
    from datasketch import MinHash, MinHashLSH

    result = DedupResult(keep=[])
    seen: dict[str, int] = {}
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    hashes: dict[int, MinHash] = {}
    for i, text in enumerate(texts):
        digest = hashlib.sha256(_normalized(text).encode()).hexdigest()
        if digest in seen:
            result.exact += 1
            result.examples.append((i, seen[digest]))
            continue
        seen[digest] = i
        grams = shingles(text, ngram)
        if not grams:
            result.keep.append(i)
            continue
        mh = MinHash(num_perm=num_perm, seed=seed)
        mh.update_batch(list(grams))
        # LSH gives candidates; the MinHash estimate confirms them (fewer false positives)
        similar = sorted(j for j in lsh.query(mh) if hashes[j].jaccard(mh) >= threshold)
        if similar:
            result.near += 1
            result.examples.append((i, similar[0]))
            continue
        lsh.insert(i, mh)
        hashes[i] = mh
        result.keep.append(i)
    return result
