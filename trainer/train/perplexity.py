"""Held-out perplexity of an HF causal LM: the number every stage reports before and after.

The windowing and the arithmetic are the shared ones (``slmforge.perplexity``: each text followed
by EOS, non-overlapping windows of ``seq_len``, exp of the mean NLL per predicted token), so the
trainer's figure is the one export's gate and ``bench run`` compute; torch only brings the logits.
"""

from __future__ import annotations

from typing import Any

from slmforge.hf_tokens import bos_id, text_ids
from slmforge.perplexity import perplexity as perplexity_of
from slmforge.perplexity import token_stream, token_windows


def perplexity(model: Any, tokenizer: Any, texts: list[str], seq_len: int = 512,
               max_tokens: int | None = None, batch_size: int = 4) -> float:
    """exp(mean NLL per predicted token) over non-overlapping ``seq_len`` windows; no grad."""
    import torch

    windows = token_windows(token_stream(lambda text: text_ids(tokenizer, text), texts, tokenizer.eos_token_id, max_tokens),
                            seq_len, bos_id(tokenizer))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    nll = []
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
                nll.append(torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none").double().cpu().numpy())
    finally:
        model.train(was_training)
    return perplexity_of(nll)
