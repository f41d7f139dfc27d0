"""Answer repeated questions without running the model again.

Keyed by the normalized question and the index version: an exact match first, then a
semantic match (cosine of question embeddings above a threshold). An answer is only as
good as the index it came from, so the whole cache empties when the index version changes.
Only single-turn questions are cached (a follow-up depends on its history).
"""

from __future__ import annotations

import re
import threading
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_SIMILARITY = 0.92
DEFAULT_CAPACITY = 512
_SPACE = re.compile(r"\s+")
_EDGE_PUNCT = re.compile(r"^[\W_]+|[\W_]+$")


def normalize_question(text: str) -> str:
    """Case-, width- and whitespace-insensitive form; trailing '?' and quotes do not matter."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return _EDGE_PUNCT.sub("", _SPACE.sub(" ", text).strip())


@dataclass
class CacheHit:
    kind: str  # "exact" | "semantic"
    value: Any
    similarity: float
    question: str  # the cached question that matched


class AnswerCache:
    """LRU map (index version, normalized question) → answer payload, with a semantic fallback."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY, similarity: float = DEFAULT_SIMILARITY) -> None:
        self.capacity = capacity
        self.similarity = similarity
        self.index_version: str | None = None
        self._entries: OrderedDict[str, tuple[np.ndarray | None, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = {"exact": 0, "semantic": 0}
        self.misses = 0

    def _sync_version(self, index_version: str) -> None:
        if index_version != self.index_version:
            self._entries.clear()
            self.index_version = index_version

    def get(self, question: str, index_version: str, vector: np.ndarray | None = None) -> CacheHit | None:
        key = normalize_question(question)
        with self._lock:
            self._sync_version(index_version)
            if key in self._entries:
                self._entries.move_to_end(key)
                self.hits["exact"] += 1
                return CacheHit("exact", self._entries[key][1], 1.0, key)
            best = self._nearest(vector)
            if best is not None and best[1] >= self.similarity:
                self._entries.move_to_end(best[0])
                self.hits["semantic"] += 1
                return CacheHit("semantic", self._entries[best[0]][1], best[1], best[0])
            self.misses += 1
            return None

    def _nearest(self, vector: np.ndarray | None) -> tuple[str, float] | None:
        keyed = [(k, v) for k, (v, _) in self._entries.items() if v is not None]
        if vector is None or not keyed:
            return None
        sims = np.stack([v for _, v in keyed]) @ np.asarray(vector, dtype=np.float32)
        i = int(np.argmax(sims))
        return keyed[i][0], float(sims[i])

    def put(self, question: str, index_version: str, value: Any, vector: np.ndarray | None = None) -> None:
        key = normalize_question(question)
        with self._lock:
            self._sync_version(index_version)
            vec = None if vector is None else np.asarray(vector, dtype=np.float32)
            self._entries[key] = (vec, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> dict[str, Any]:
        return {"entries": len(self), "index_version": self.index_version, "hits": dict(self.hits),
                "misses": self.misses, "similarity_threshold": self.similarity}
