"""Causal attention run example by example inside packed rows.

A packed row holds several examples, told apart by ``position_ids`` restarting at 0. transformers
keeps them apart with a block-diagonal mask, and a masked ``scaled_dot_product_attention`` call
computes every query/key pair of the row before throwing most of them away. Here each example's
slice gets its own ``is_causal`` call instead: the same numbers, for the pairs inside one
example only. Attention alone, 4 × 512-token rows on 2 CPU cores: ~120 ms instead of 170–270 ms
per layer (forward + backward); a whole training step is mostly matrix multiplies, and there
the saving is below the machine's step-to-step noise (docs/training.md, "Throughput bench").

Only our packed training loops switch it on (``packed_attention``), and only around
``trainer.train()``. A batch that does carry padding (an ``attention_mask`` with zeros) gets
transformers' own mask and sdpa, so padding is never attended.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

NAME = "slmforge_packed"


def example_bounds(position_ids: torch.Tensor) -> list[list[tuple[int, int]]]:
    """Per row, the (start, end) of each example: a new one begins wherever the position is 0."""
    starts = position_ids == 0
    starts[:, 0] = True
    width = position_ids.shape[-1]
    rows: list[list[int]] = [[] for _ in range(position_ids.shape[0])]
    for b, i in torch.nonzero(starts).tolist():
        rows[b].append(i)
    return [list(zip(s, s[1:] + [width])) for s in rows]


def packed_causal_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                            position_ids: torch.Tensor | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: query (B, H, T, D), key/value (B, KV, T, D) → (B, T, H, D)."""
    if attention_mask is not None or position_ids is None or query.shape[2] != key.shape[2]:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    gqa = query.shape[1] != key.shape[1]
    rows = []
    for b, bounds in enumerate(example_bounds(position_ids.expand(query.shape[0], -1))):
        rows.append(torch.cat([
            F.scaled_dot_product_attention(query[b:b + 1, :, s:e], key[b:b + 1, :, s:e], value[b:b + 1, :, s:e],
                                           dropout_p=dropout, scale=scaling, is_causal=True, enable_gqa=gqa)
            for s, e in bounds], dim=2))
    return torch.cat(rows).transpose(1, 2).contiguous(), None


def padding_mask_only(*args: Any, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor | None:
    """transformers' mask hook for ``NAME``: no mask (pieces come from position_ids) unless the batch has padding."""
    if attention_mask is None or bool(attention_mask.all()):
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def supports_packed_attention(model: Any) -> bool:
    """Plain causal decoders only: sub-models, sliding windows or soft-capped logits keep transformers' masks."""
    config = model.config
    return (not getattr(config, "sub_configs", None)
            and getattr(config, "sliding_window", None) is None
            and getattr(config, "attn_logit_softcapping", None) is None
            and getattr(config, "_attn_implementation", None) in ("sdpa", "eager"))


@contextmanager
def packed_attention(model: Any) -> Iterator[bool]:
    """Use ``packed_causal_attention`` inside the block (yields whether it could), then restore the model's own."""
    from transformers import AttentionInterface, AttentionMaskInterface

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not supports_packed_attention(base):
        yield False
        return
    AttentionInterface.register(NAME, packed_causal_attention)
    AttentionMaskInterface.register(NAME, padding_mask_only)
    before = base.config._attn_implementation
    base.set_attn_implementation(NAME)
    try:
        yield base.config._attn_implementation == NAME  # a model that cannot switch keeps its own (still correct)
    finally:
        base.set_attn_implementation(before)
