"""Quality next to speed: held-out perplexity through the bundle's own backend, FAQ retrieval hit@k,
and answer token F1 against reference answers, so a faster quant that answers worse shows up.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from slmforge.bench.metrics import answer_scores
from slmforge.bench.records import Metric, measured, unknown
from tqdm import tqdm

from slmforge.errors import UserError
from slmforge.qa_records import read_qa

PPL_WINDOW = 512
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text")


# -- held-out text ------------------------------------------------------------------------------------------

def _jsonl(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{path}:{lineno}: not a JSON line; fix or remove it") from None
        if not isinstance(obj, dict):
            raise UserError(f"{path}:{lineno}: expected a JSON object per line")
        yield lineno, obj


def load_heldout(path: str | Path) -> list[str]:
    """Texts to measure perplexity on: a dataset dir (heldout.jsonl), a ``{"text"}`` JSONL, or text files."""
    p = Path(path)
    if p.is_dir() and (p / "heldout.jsonl").is_file():
        p = p / "heldout.jsonl"
    if p.is_file() and p.suffix == ".jsonl":
        texts = [obj["text"] for _, obj in _jsonl(p) if isinstance(obj.get("text"), str) and obj["text"].strip()]
    elif p.is_file():
        texts = [p.read_text(encoding="utf-8", errors="replace")]
    elif p.is_dir():
        texts = [f.read_text(encoding="utf-8", errors="replace") for f in sorted(p.rglob("*"))
                 if f.is_file() and f.suffix in TEXT_SUFFIXES]
    else:
        raise UserError(f"{p}: held-out text not found; pass a heldout.jsonl, a dataset dir or text files")
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise UserError(f"{p}: no text to measure perplexity on (JSONL needs a \"text\" field)")
    return texts


def token_stream(backend: Any, texts: list[str], eos: int, max_tokens: int) -> list[int]:
    """The backend's own tokens of each text, each followed by EOS, cut at ``max_tokens``."""
    ids: list[int] = []
    for text in texts:
        ids.extend(backend.tokenize(text))
        ids.append(eos)
        if len(ids) >= max_tokens:
            break
    return ids[:max_tokens]


def _nll(logits: np.ndarray, targets: list[int]) -> float:
    """Summed negative log-likelihood of ``targets`` under per-position ``logits`` (float64 log-softmax)."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    logz = np.log(np.exp(z).sum(axis=1))
    return float((logz - z[np.arange(len(targets)), targets]).sum())


class _LlamaLogits:
    """All-position logits from llama.cpp: a second context on the same GGUF with ``logits_all``."""

    def __init__(self, backend: Any, window: int) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(backend.model_path), n_ctx=window, n_batch=window, n_ubatch=window,
                         n_threads=backend.threads, n_threads_batch=backend.threads, logits_all=True, verbose=False)
        self.eos = int(self.llm.token_eos())

    def __call__(self, tokens: list[int]) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(tokens)
        return np.asarray(self.llm.scores[: len(tokens)])

    def close(self) -> None:
        self.llm.close()


class _GenaiLogits:
    """All-position logits from onnxruntime-genai: one generator per window, prompt logits read back."""

    def __init__(self, backend: Any, window: int) -> None:
        self.model = backend._model
        self.eos = min(backend.eos_ids) if backend.eos_ids else 0

    def __call__(self, tokens: list[int]) -> np.ndarray:
        import onnxruntime_genai as og

        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=len(tokens) + 1, do_sample=False)
        generator = og.Generator(self.model, params)
        generator.append_tokens(np.asarray(tokens, dtype=np.int32))
        return np.asarray(generator.get_output("logits"))[0]

    def close(self) -> None:
        pass


def perplexity(backend: Any, texts: list[str], max_tokens: int = 2048, window: int = PPL_WINDOW) -> Metric:
    """exp(mean NLL per predicted token) over non-overlapping windows, through the bundle's own backend."""
    scorer = _LlamaLogits(backend, window) if backend.name == "llama.cpp" else _GenaiLogits(backend, window)
    try:
        ids = token_stream(backend, texts, scorer.eos, max_tokens)
        windows = [ids[i:i + window] for i in range(0, len(ids), window)]
        windows = [w for w in windows if len(w) >= 2]
        if not windows:
            return unknown("ppl", "held-out text is shorter than two tokens", "skipped")
        total, count = 0.0, 0
        for w in tqdm(windows, desc="perplexity", unit="win", file=sys.stderr, leave=False):
            logits = scorer(w)
            total += _nll(logits[:-1], w[1:])
            count += len(w) - 1
    finally:
        scorer.close()
    return measured(math.exp(total / count), "ppl", n=count, note=f"{count} tokens, windows of {window}")


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
