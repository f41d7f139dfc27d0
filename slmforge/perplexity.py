"""Held-out perplexity, computed one way for the trainer, export's quality gate and ``bench run``.

The texts become one token stream, each text followed by EOS (so documents do not run into each
other), cut into non-overlapping windows; perplexity is exp(mean NLL per predicted token) over all
windows. Each side brings its own logits (torch, llama.cpp, onnxruntime-genai); the windowing and
the arithmetic live here so their figures can be compared. numpy only: the runtime imports it too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from slmforge.errors import UserError


def token_stream(tokenize: Callable[[str], list[int]], texts: Iterable[str], eos: int | None,
                 max_tokens: int | None = None) -> list[int]:
    """Token ids of all texts, each followed by ``eos`` (when the tokenizer has one), cut at ``max_tokens``."""
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenize(text))
        if eos is not None:
            ids.append(eos)
        if max_tokens is not None and len(ids) >= max_tokens:
            return ids[:max_tokens]
    return ids


def token_windows(ids: list[int], window: int, bos: int | None = None) -> list[list[int]]:
    """Non-overlapping windows of ``window`` tokens (a shorter tail kept when it predicts one token or more).

    With ``bos`` (a model that wants BOS, ``slmforge.hf_tokens``) every window starts with it, as every
    prompt does at run time: a window cut mid-text without it puts Gemma in a state it never saw (its
    perplexity 2.5x higher, and Q8_0's logits off by up to 10)."""
    if bos is not None:
        windows, i = [], 0
        while i < len(ids):
            head = [] if ids[i] == bos else [bos]
            windows.append(head + ids[i:i + window - len(head)])
            i += window - len(head)
        windows = [w for w in windows if len(w) >= 2]
        if not windows:
            raise UserError("perplexity: the held-out texts give fewer than 2 tokens; provide more held-out text")
        return windows
    windows = [ids[i:i + window] for i in range(0, len(ids), window)]
    windows = [w for w in windows if len(w) >= 2]
    if not windows:
        raise UserError("perplexity: the held-out texts give fewer than 2 tokens; provide more held-out text")
    return windows


def target_nll(logits: np.ndarray, targets: list[int] | np.ndarray) -> np.ndarray:
    """Per-token negative log-likelihood of ``targets`` under ``logits`` (one row per target; float64 log-softmax)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=-1))
    return log_norm - z[np.arange(len(targets)), np.asarray(targets)]


def window_nll(logits: np.ndarray, window: list[int]) -> np.ndarray:
    """Per-token NLL of a window from its all-position logits (position i predicts token i + 1)."""
    return target_nll(np.asarray(logits)[: len(window) - 1], window[1:])


def perplexity(nll: Iterable[np.ndarray] | np.ndarray) -> float:
    """exp(mean NLL per predicted token), from one array of per-token NLL or one array per window."""
    parts = [np.asarray(nll, dtype=np.float64).ravel()] if isinstance(nll, np.ndarray) else \
        [np.asarray(n, dtype=np.float64).ravel() for n in nll]
    values = np.concatenate(parts) if parts else np.empty(0)
    if values.size == 0:
        raise UserError("perplexity: no predicted tokens to measure")
    return float(np.exp(values.mean()))
