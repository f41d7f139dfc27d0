"""Continual pretraining (CPT): next-token loss on the domain's raw text, packed without padding.

Documents are tokenized, joined with EOS and cut into full ``seq_len`` blocks (GPT-style
packing), so every position of every batch is a real token. Positions restart after each EOS
and attention runs per document (``packed_attention``): no document attends to the one before
it, and an EOS is not trained to guess the first token of an unrelated next document.
Held-out perplexity before and after training goes into the manifest.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from slmforge.trainer.packed_attention import packed_attention
from slmforge.trainer.train_common import (
    IGNORE,
    TrainOptions,
    check_model_dir,
    check_out,
    cleanup_failed_start,
    heldout_ppl,
    load_model_and_tokenizer,
    prepare_work_dir,
    run_training,
    save_output,
    seed_everything,
    standard_inputs,
    training_arguments,
    wrap_lora,
)

from slmforge.errors import UserError
from slmforge.heldout import split_heldout


class BlockDataset(torch.utils.data.Dataset):
    """Fixed-length token blocks; labels are the inputs (the model shifts them)."""

    def __init__(self, blocks: list[list[int]]) -> None:
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return {"input_ids": self.blocks[i]}


class BlockCollator:
    """Stack blocks; positions restart after each EOS, and the token after an EOS is no target."""

    def __init__(self, eos_id: int) -> None:
        self.eos_id = eos_id

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        ids = torch.tensor([f["input_ids"] for f in features], dtype=torch.long)
        doc_start = torch.zeros_like(ids, dtype=torch.bool)
        doc_start[:, 0] = True
        doc_start[:, 1:] = ids[:, :-1] == self.eos_id
        index = torch.arange(ids.shape[1]).expand_as(ids)
        position_ids = index - torch.where(doc_start, index, 0).cummax(dim=1).values
        return {"input_ids": ids, "labels": ids.masked_fill(doc_start, IGNORE), "position_ids": position_ids}


def pack_blocks(tokenizer: Any, texts: list[str], seq_len: int) -> list[list[int]]:
    """One EOS-separated token stream cut into full blocks; a corpus shorter than a block is one block."""
    stream: list[int] = []
    for text in texts:
        stream.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        stream.append(tokenizer.eos_token_id)
    if len(stream) < 2:
        raise UserError("the training text gives fewer than 2 tokens; nothing to learn from")
    if len(stream) < seq_len:
        return [stream]
    return [stream[i:i + seq_len] for i in range(0, len(stream) - seq_len + 1, seq_len)]


def build_trainer(model: Any, tokenizer: Any, blocks: list[list[int]], opts: TrainOptions, work: Path) -> Any:
    from transformers import Trainer, TrainingArguments

    return Trainer(model=model, args=TrainingArguments(**training_arguments(opts, work)),
                   train_dataset=BlockDataset(blocks), data_collator=BlockCollator(tokenizer.eos_token_id),
                   processing_class=tokenizer)


def train_pretrain(opts: TrainOptions) -> dict[str, Any]:
    """Run CPT end to end; return the manifest metrics."""
    started = time.time()
    check_model_dir(opts.model)
    check_out(opts.out, [opts.model, opts.data])
    files, train_texts, held_texts, held_source = split_heldout(opts.data, opts.seed)
    seed_everything(opts.seed)
    model, tokenizer = load_model_and_tokenizer(opts.model)
    blocks = pack_blocks(tokenizer, train_texts, opts.seq_len)
    ppl_before = heldout_ppl(model, tokenizer, held_texts, opts)
    model = wrap_lora(model, opts)
    work, resume_from = prepare_work_dir(opts.out, opts.resume)
    try:
        trainer = build_trainer(model, tokenizer, blocks, opts, work)
        with packed_attention(trainer.model):
            run = run_training(trainer, resume_from)
    except BaseException:
        cleanup_failed_start(opts.out)
        raise
    ppl_after = heldout_ppl(trainer.model, tokenizer, held_texts, opts)
    metrics = {
        **run,
        "train_tokens": sum(len(b) for b in blocks),
        "train_blocks": len(blocks),
        "padding_tokens": 0,
        "heldout_source": held_source,
        "heldout_ppl_before": ppl_before,
        "heldout_ppl_after": ppl_after,
    }
    save_output(trainer, tokenizer, opts, "pretrain", standard_inputs(opts, files), metrics, started)
    return metrics
