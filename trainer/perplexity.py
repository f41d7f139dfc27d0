"""Held-out perplexity of an HF causal LM: the number every stage reports before and after.

Token-weighted over one stream of the texts (each text followed by EOS, so documents do not
run into each other), cut into non-overlapping windows of ``seq_len``: cheap, deterministic and
comparable between checkpoints that share a tokenizer.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from slmforge.trainer.datasets import iter_jsonl

from slmforge.errors import UserError

HELDOUT_NAME = "heldout.jsonl"


def load_texts(path: str | Path) -> list[str]:
    """The ``text`` of every line of a dataset dir's heldout.jsonl, or of any JSONL file with ``text``."""
    p = Path(path)
    if p.is_dir():
        p = p / HELDOUT_NAME
        if not p.is_file():
            raise UserError(f"{path}: no {HELDOUT_NAME} in this directory; pass a dataset dir from "
                            "'slmforge data prepare' or a .jsonl file with a \"text\" field")
    texts: list[str] = []
    for lineno, obj in iter_jsonl(p):
        text = obj.get("text")
        if not isinstance(text, str):
            raise UserError(f"{p}:{lineno}: no \"text\" string field; perplexity needs {{\"text\": ...}} lines")
        if text.strip():
            texts.append(text)
    if not texts:
        raise UserError(f"{p}: no non-empty \"text\" lines; nothing to measure perplexity on")
    return texts


def token_stream(tokenizer: Any, texts: list[str], max_tokens: int | None = None) -> list[int]:
    """Token ids of all texts, each followed by EOS, truncated to ``max_tokens``."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
        if max_tokens is not None and len(ids) >= max_tokens:
            return ids[:max_tokens]
    return ids


def perplexity(model: Any, tokenizer: Any, texts: list[str], seq_len: int = 512,
               max_tokens: int | None = None, batch_size: int = 4) -> float:
    """exp(mean NLL per predicted token) over non-overlapping ``seq_len`` windows; no grad."""
    import torch

    ids = token_stream(tokenizer, texts, max_tokens)
    windows = [ids[i:i + seq_len] for i in range(0, len(ids), seq_len)]
    windows = [w for w in windows if len(w) >= 2]
    if not windows:
        raise UserError("perplexity: the texts give fewer than 2 tokens; provide more held-out text")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    try:
        with torch.no_grad():
            # full windows batch together; the one shorter tail window runs alone (no padding)
            full = [w for w in windows if len(w) == len(windows[0])]
            tail = [w for w in windows if len(w) != len(windows[0])]
            batches = [full[i:i + batch_size] for i in range(0, len(full), batch_size)] + [[w] for w in tail]
            for batch in batches:
                input_ids = torch.tensor(batch, dtype=torch.long, device=device)
                logits = model(input_ids=input_ids).logits[:, :-1].float()
                targets = input_ids[:, 1:]
                nll = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="sum")
                total_nll += nll.item()
                total_tokens += targets.numel()
    finally:
        model.train(was_training)
    return math.exp(total_nll / total_tokens)
