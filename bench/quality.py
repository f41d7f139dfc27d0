"""Quality next to speed: held-out perplexity through the bundle's own backend, FAQ retrieval hit@k,
and answer token F1 against reference answers, so a faster quant that answers worse shows up.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from slmforge.bench.metrics import answer_scores
from slmforge.bench.records import Metric, measured, unknown
from slmforge.runtime.generate.backend import Backend
from tqdm import tqdm

from slmforge.errors import UserError
from slmforge.perplexity import perplexity as perplexity_of
from slmforge.perplexity import token_stream, token_windows, window_nll
from slmforge.qa_records import read_qa

PPL_WINDOW = 512


# -- held-out perplexity ------------------------------------------------------------------------------------

def perplexity(backend: Backend, texts: list[str], max_tokens: int = 2048, window: int = PPL_WINDOW) -> Metric:
    """exp(mean NLL per predicted token) over non-overlapping windows of the backend's own tokens
    (each text followed by EOS, each window starting with BOS when the model wants it), with the logits of
    the bundle's own backend."""
    ids = token_stream(backend.tokenize, texts, getattr(backend, "eos_id", None), max_tokens)
    try:
        windows = token_windows(ids, window, getattr(backend, "bos_id", None))
    except UserError:
        return unknown("ppl", "held-out text is shorter than two tokens", "skipped")
    nll = [window_nll(backend.logits(w), w) for w in tqdm(windows, desc="perplexity", unit="win", file=sys.stderr,
                                                          leave=False)]
    count = sum(len(w) - 1 for w in windows)
    return measured(perplexity_of(nll), "ppl", n=count, note=f"{count} tokens, windows of {window}")


# -- FAQ retrieval ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FaqQuestion:
    question: str
    source: str
    heading: str


def faq_questions(index: Any) -> list[FaqQuestion]:
    """FAQ questions the bundle's own index holds: sections of FAQ files whose heading ends in '?'."""
    rows = index.conn.execute(
        "SELECT DISTINCT source, heading FROM chunks WHERE lower(source) LIKE '%faq%' ORDER BY source, heading")
    out: dict[str, FaqQuestion] = {}
    for source, heading in rows:
        question = heading.split(" > ")[-1].strip()
        if question.endswith("?") and question not in out:
            out[question] = FaqQuestion(question, source, heading)
    return list(out.values())


def faq_retrieval(engine: Any, k: int) -> tuple[dict[str, Metric], list[float]]:
    """hit@k over the index's FAQ questions, and every question's embed + search latency (ms)."""
    questions = faq_questions(engine.index)
    latencies: list[float] = []
    hits = 0
    for q in tqdm(questions, desc=f"FAQ hit@{k}", unit="q", file=sys.stderr, leave=False):
        start = time.perf_counter()
        found = engine.retrieve(q.question, k)[0]
        latencies.append((time.perf_counter() - start) * 1000)
        hits += any(h.source == q.source and h.heading == q.heading for h in found)
    if not questions:
        return {"faq_hit_at_k": unknown("ratio", "the bundle's index holds no FAQ sections (headings ending in '?')",
                                        "skipped")}, latencies
    return {"faq_hit_at_k": measured(hits / len(questions), "ratio", n=len(questions), note=f"k={k}")}, latencies


# -- answer quality -----------------------------------------------------------------------------------------

def load_qa(path: str | Path) -> list[tuple[str, str]]:
    """(question, reference answer) pairs from a QA JSONL file (any format ``slmforge.qa_records`` reads)."""
    return [(r.question, r.answer) for r in read_qa(path)]


def qa_f1(engine: Any, items: list[tuple[str, str]], k: int, max_tokens: int) -> Metric:
    """Mean token F1 of the bundle's RAG answers (greedy) against the reference answers."""
    scores = []
    for question, reference in tqdm(items, desc="QA answers", unit="q", file=sys.stderr, leave=False):
        answer = engine.answer(question, k=k, max_tokens=max_tokens, sampling={"temperature": 0.0, "seed": 0})
        scores.append(answer_scores(answer.answer, reference)["f1"])  # [n] markers removed, as in eval
    return measured(float(np.mean(scores)), "F1", std=float(np.std(scores)), n=len(scores),
                    note=f"greedy, k={k}, max {max_tokens} new tokens")
