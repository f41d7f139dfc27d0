"""Is the device still being asked what its documents answer? Drift and groundedness, locally.

The reference is the index itself, probed two ways: its chunk centroid, and how well it
matches questions that are certainly off-topic (``NULL_PROBES``: cooking, sport, travel...).
A question whose best cosine to the index is no better than what off-topic probes get is
out of domain. Requests are judged in windows:

- query drift: the out-of-domain rate and the window's mean top-1 vs. the probes' level;
- topic shift: cosine distance of the window's mean query vector to the index centroid;
- groundedness: answer-to-context support (answer sentences vs. cited chunks).

Measured on the shipped Python docs with all-MiniLM-L6-v2 (see docs/telemetry.md).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from slmforge.rag_prompt import strip_citations

# Questions no technical document collection answers; their scores are the index's "noise floor".
NULL_PROBES = [
    "What is a good recipe for lasagna?", "Who won the last tennis grand slam?", "How do I get to the airport?",
    "What should I wear to a wedding?", "How many legs does a spider have?", "Tell me a joke about cats.",
    "What time does the bakery open?", "How do I fix a leaking tap?", "Which planet is the largest?",
    "What are good exercises for back pain?", "Recommend a novel for the summer.", "How much does a new car cost?",
    "When is the best season to visit Japan?", "How do I grow basil indoors?", "Who was the first person on the moon?",
    "What is the population of Brazil?", "How do I remove a wine stain?", "What is your favourite colour?",
    "How long should I boil an egg?", "Which football team has the most fans?",
]
OOD_MARGIN = 0.10  # out of domain: top-1 below the probes' 95th percentile + this
LOW_WINDOW_MARGIN = 0.15  # drifted window: mean top-1 below the probes' 95th percentile + this
MAX_OOD_RATE = 0.25  # a window with more out-of-domain questions than this has drifted
MAX_CENTROID_DISTANCE = 0.8  # 1 - cos(window mean query, index centroid); in-domain ~0.5, off-topic ~0.97
MIN_SUPPORT = 0.30  # mean answer-sentence similarity to the cited chunks (measured: in-domain 0.36, off-topic 0.07)
DEFAULT_WINDOW = 20
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


@dataclass
class IndexReference:
    """What in-domain looks like for this index: its centroid and its off-topic noise floor."""

    centroid: np.ndarray
    chunks: int
    null_top1_mean: float
    null_top1_p95: float

    @property
    def ood_threshold(self) -> float:
        return round(self.null_top1_p95 + OOD_MARGIN, 4)

    @property
    def low_window_threshold(self) -> float:
        return round(self.null_top1_p95 + LOW_WINDOW_MARGIN, 4)

    @classmethod
    def from_vectors(cls, vectors: np.ndarray, probe_vectors: np.ndarray) -> IndexReference:
        """``vectors``: the index's chunk vectors; ``probe_vectors``: ``NULL_PROBES`` embedded the same way."""
        vecs = np.asarray(vectors, dtype=np.float32)
        if len(vecs) < 1:
            raise ValueError("the index is empty; add documents before judging drift")
        centroid = vecs.mean(axis=0)
        centroid /= max(float(np.linalg.norm(centroid)), 1e-12)
        null_top1 = (np.asarray(probe_vectors, dtype=np.float32) @ vecs.T).max(axis=1)
        return cls(centroid=centroid, chunks=len(vecs), null_top1_mean=round(float(null_top1.mean()), 4),
                   null_top1_p95=round(float(np.percentile(null_top1, 95)), 4))

    def to_dict(self) -> dict[str, Any]:
        return {"chunks": self.chunks, "null_top1_mean": self.null_top1_mean, "null_top1_p95": self.null_top1_p95,
                "ood_threshold": self.ood_threshold, "low_window_threshold": self.low_window_threshold}

    def centroid_similarity(self, query_vector: np.ndarray) -> float:
        return float(np.asarray(query_vector, dtype=np.float32) @ self.centroid)

    def is_out_of_domain(self, top1: float | None) -> bool | None:
        return None if top1 is None else bool(top1 < self.ood_threshold)


def split_sentences(text: str, min_chars: int = 12) -> list[str]:
    """Answer sentences long enough to carry a claim (citation markers like [1] removed)."""
    parts = (strip_citations(s).strip() for s in _SENTENCE.split(text or ""))
    return [p for p in parts if len(p) >= min_chars]


def answer_support(
    answer: str, context_texts: Sequence[str], embed: Callable[[list[str]], np.ndarray]
) -> float | None:
    """Mean over answer sentences of the best cosine to any cited chunk; None without both."""
    sentences = split_sentences(answer)
    if not sentences or not context_texts:
        return None
    vecs = embed(sentences + list(context_texts))
    sims = vecs[: len(sentences)] @ vecs[len(sentences):].T
    return round(float(sims.max(axis=1).mean()), 4)


@dataclass
class WindowStats:
    start: int  # index of the first request in the window
    requests: int
    top1_mean: float | None
    ood_rate: float | None
    centroid_distance: float | None
    support_mean: float | None
    flags: list[str] = field(default_factory=list)


def _mean(values: list[float | None]) -> float | None:
    real = [v for v in values if v is not None]
    return round(float(np.mean(real)), 4) if real else None


def window_stats(rows: list[dict[str, Any]], reference: IndexReference, start: int) -> WindowStats:
    """Drift statistics of one window of request rows (telemetry attribute dicts)."""
    top1 = [r.get("slmforge.retrieval.top1_score") for r in rows]
    ood = [reference.is_out_of_domain(t) for t in top1]
    vectors = [r["slmforge.query.embedding"] for r in rows if r.get("slmforge.query.embedding") is not None]
    distance = None
    if vectors:
        mean = np.mean(np.stack(vectors), axis=0)
        distance = round(1.0 - float(mean @ reference.centroid) / max(float(np.linalg.norm(mean)), 1e-12), 4)
    stats = WindowStats(
        start=start,
        requests=len(rows),
        top1_mean=_mean(top1),
        ood_rate=_mean([None if o is None else float(o) for o in ood]),
        centroid_distance=distance,
        support_mean=_mean([r.get("slmforge.answer.support") for r in rows]),
    )
    if stats.top1_mean is not None and stats.top1_mean < reference.low_window_threshold:
        stats.flags.append("low_retrieval")
    if stats.ood_rate is not None and stats.ood_rate > MAX_OOD_RATE:
        stats.flags.append("out_of_domain")
    if stats.centroid_distance is not None and stats.centroid_distance > MAX_CENTROID_DISTANCE:
        stats.flags.append("topic_shift")
    if stats.support_mean is not None and stats.support_mean < MIN_SUPPORT:
        stats.flags.append("low_support")
    return stats


def drift_report(rows: list[dict[str, Any]], reference: IndexReference, window: int = DEFAULT_WINDOW,
                 bad_feedback_rate: float | None = None) -> dict[str, Any]:
    """Windows over the question-answering requests, the latest status and a plain recommendation."""
    asked = [r for r in rows if r.get("slmforge.retrieval.top1_score") is not None]
    windows = [window_stats(asked[i:i + window], reference, i) for i in range(0, len(asked), window)]
    if len(windows) > 1 and windows[-1].requests < window // 2:  # fold a short tail into its neighbour
        windows = windows[:-2] + [window_stats(asked[windows[-2].start:], reference, windows[-2].start)]
    latest = windows[-1] if windows else None
    status, recommendation = recommend(latest, bad_feedback_rate)
    return {
        "status": status,
        "recommendation": recommendation,
        "reference": reference.to_dict(),
        "thresholds": {"window": window, "max_ood_rate": MAX_OOD_RATE, "min_window_top1": reference.low_window_threshold,
                       "max_centroid_distance": MAX_CENTROID_DISTANCE, "min_support": MIN_SUPPORT},
        "drifted_windows": [i for i, w in enumerate(windows) if {"low_retrieval", "out_of_domain"} & set(w.flags)],
        "windows": [asdict(w) for w in windows],
    }


def recommend(latest: WindowStats | None, bad_feedback_rate: float | None = None) -> tuple[str, str]:
    """(status, one plain sentence): fine, re-index or retrain."""
    if latest is None:
        return "unknown", "No questions recorded yet: serve the bundle and ask it something first."
    flags = set(latest.flags)
    if {"low_retrieval", "out_of_domain"} & flags:
        rate = f"{latest.ood_rate:.0%}" if latest.ood_rate is not None else "many"
        return "re-index", (
            f"Recent questions drifted away from the indexed documents ({rate} out of domain, mean top-1 "
            f"{latest.top1_mean}); add documents that cover them (slmforge index add) or re-build the index.")
    if "low_support" in flags or (bad_feedback_rate is not None and bad_feedback_rate > 0.3):
        return "retrain", (
            "Retrieval finds relevant passages but answers are weakly supported by them or rated badly; "
            "fine-tune on the domain and on exported feedback (slmforge feedback export, slmforge train align).")
    if "topic_shift" in flags:
        return "fine", ("Questions concentrate on part of the documents (topic shift) but retrieval is confident; "
                        "nothing to do unless answers degrade.")
    return "fine", "Questions match the indexed documents and answers are supported by them; nothing to do."
