"""Depth pruning: drop the transformer blocks that change the hidden state least on domain text.

A block whose output is nearly parallel to its input (cosine similarity close to 1) adds
little; removing it costs little perplexity (ShortGPT's "block influence" = 1 − cos). The
scores are measured on the user's own text, so the blocks kept are the ones that matter
for their domain. Distillation (distill.py) then recovers part of what pruning lost.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmforge.errors import UserError
from slmforge.fileio import atomic_dir
from slmforge.heldout import train_and_heldout
from slmforge.manifest import ArtifactManifest, input_ref, lineage_of


@dataclass
class CompressResult:
    checkpoint: Path
    scores: list[float]  # mean cosine(input, output) per block of the source model
    dropped: list[int]
    metrics: dict[str, Any]


def decoder_layers(model: Any) -> Any:
    """The ModuleList of transformer blocks of a causal LM (Llama-style `model.model.layers`)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise UserError(f"{type(model).__name__}: no model.layers; depth pruning supports Llama-style decoders")
    return layers


def block_similarity(model: Any, blocks: list[list[int]], batch_size: int = 4) -> list[float]:
    """Mean over tokens of cos(block input, block output), for every block, from forward hooks."""
    import torch
    from tqdm import tqdm

    layers = decoder_layers(model)
    sums = [0.0] * len(layers)
    count = 0

    def hook_for(i: int):
        def hook(module, args, kwargs, output):
            h_in = args[0] if args else kwargs["hidden_states"]
            h_out = output[0] if isinstance(output, tuple) else output
            cos = torch.nn.functional.cosine_similarity(h_in.float(), h_out.float(), dim=-1)
            sums[i] += cos.sum().item()
        return hook

    trunk = getattr(model, "model", model)  # the decoder without the LM head: logits are not needed here
    handles = [layer.register_forward_hook(hook_for(i), with_kwargs=True) for i, layer in enumerate(layers)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in tqdm(range(0, len(blocks), batch_size), desc="scoring blocks", unit="batch",
                              dynamic_ncols=True):
                ids = torch.tensor(blocks[start:start + batch_size], dtype=torch.long)
                trunk(input_ids=ids, use_cache=False)
                count += ids.numel()
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return [s / count for s in sums]


def choose_drops(scores: list[float], keep: int) -> list[int]:
    """The ``len(scores) - keep`` most redundant blocks (highest cosine), in layer order."""
    if not 1 <= keep <= len(scores):
        raise UserError(f"--keep-layers {keep}: the model has {len(scores)} blocks; keep between 1 and {len(scores)}")
    order = sorted(range(len(scores)), key=lambda i: scores[i], reverse=True)
    return sorted(order[: len(scores) - keep])


def parse_layer_list(text: str, num_layers: int) -> list[int]:
    try:
        layers = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise UserError(f"--drop-layers {text!r}: give comma-separated block indices, e.g. 3,5,7") from None
    bad = [i for i in layers if not 0 <= i < num_layers]
    if bad:
        raise UserError(f"--drop-layers: block {bad[0]} does not exist (the model has blocks 0..{num_layers - 1})")
    if len(layers) >= num_layers:
        raise UserError(f"--drop-layers: dropping all {num_layers} blocks leaves no model; keep at least one")
    return layers


def drop_blocks(model: Any, drop: list[int]) -> None:
    """Remove blocks in place and renumber the rest (layer_idx drives the KV cache)."""
    import torch

    layers = decoder_layers(model)
    kept = [layer for i, layer in enumerate(layers) if i not in set(drop)]
    for new_idx, layer in enumerate(kept):
        attn = getattr(layer, "self_attn", None)
        if attn is not None and hasattr(attn, "layer_idx"):
            attn.layer_idx = new_idx
        if hasattr(layer, "layer_idx"):
            layer.layer_idx = new_idx
    model.model.layers = torch.nn.ModuleList(kept)
    config = model.config
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = [t for i, t in enumerate(config.layer_types) if i not in set(drop)]
    config.num_hidden_layers = len(kept)


def model_size(model: Any) -> dict[str, int]:
    params = sum(p.numel() for p in model.parameters())
    return {"parameters": params, "blocks": len(decoder_layers(model))}


def checkpoint_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


def compress_summary(metrics: dict[str, Any]) -> str:
    """The manifest's one line: blocks and parameters before and after, and held-out perplexity when measured."""
    line = (f"{metrics['blocks_before']} → {metrics['blocks_after']} blocks, "
            f"{metrics['parameters_before'] / 1e6:.1f}M → {metrics['parameters_after'] / 1e6:.1f}M params")
    if "heldout_ppl_before" in metrics and "heldout_ppl_after" in metrics:
        line += f", held-out ppl {metrics['heldout_ppl_before']:.2f} → {metrics['heldout_ppl_after']:.2f}"
    return line


def compress(model_dir: Path, out: Path, drop_layers: str | None = None, keep_layers: int | None = None,
             data: Path | None = None, seq_len: int = 256, score_tokens: int = 16384,
             eval_tokens: int = 16384) -> CompressResult:
    """Score blocks on ``data`` (if given), drop the chosen ones, save a smaller checkpoint."""
    from slmforge.trainer.train.common import check_model_dir, check_out, load_model_and_tokenizer
    from slmforge.trainer.train.perplexity import perplexity
    from slmforge.trainer.train.pretrain import pack_blocks

    if (drop_layers is None) == (keep_layers is None):
        raise UserError("give exactly one of --drop-layers 3,5,7 or --keep-layers N")
    if keep_layers is not None and data is None:
        raise UserError("--keep-layers needs --data DIR: block importance is measured on your text")
    check_model_dir(model_dir)
    check_out(out, [model_dir])
    started = time.time()
    model, tokenizer = load_model_and_tokenizer(model_dir)
    before = model_size(model)
    scores: list[float] = []
    metrics: dict[str, Any] = {}
    held: list[str] = []
    if data is not None:
        train, held = train_and_heldout(data)
        blocks = pack_blocks(tokenizer, train, seq_len)[: max(1, score_tokens // seq_len)]
        scores = [round(s, 6) for s in block_similarity(model, blocks)]
        metrics["score_tokens"] = sum(len(b) for b in blocks)
    held = held if eval_tokens > 0 else []
    if held:
        metrics["heldout_ppl_before"] = round(perplexity(model, tokenizer, held, seq_len=seq_len, max_tokens=eval_tokens), 4)
    drop = (parse_layer_list(drop_layers, before["blocks"]) if drop_layers is not None
            else choose_drops(scores, keep_layers))
    drop_blocks(model, drop)
    if held:
        metrics["heldout_ppl_after"] = round(perplexity(model, tokenizer, held, seq_len=seq_len, max_tokens=eval_tokens), 4)
    after = model_size(model)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        metrics.update({
            "blocks_before": before["blocks"], "blocks_after": after["blocks"],
            "parameters_before": before["parameters"], "parameters_after": after["parameters"],
            "bytes_before": checkpoint_bytes(model_dir), "bytes_after": checkpoint_bytes(tmp),
            "cosine_by_block": scores,
        })
        inputs = [input_ref("model", model_dir)] + ([input_ref("data", data)] if data is not None else [])
        ArtifactManifest(
            kind="checkpoint", stage="compress", inputs=inputs,
            params={"drop_layers": drop, "keep_layers": keep_layers, "seq_len": seq_len,
                    "score_tokens": score_tokens, "criterion": "cosine(block input, block output), drop highest"},
            metrics=metrics, summary=compress_summary(metrics), parent=str(model_dir.resolve()),
            lineage=lineage_of(model_dir),
            duration_s=round(time.time() - started, 2),
        ).write(tmp)
    return CompressResult(out.resolve(), scores, drop, metrics)
