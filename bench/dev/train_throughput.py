"""Training throughput: our packed CPT/SFT vs. a naive HF Trainer with padded batches.

Both sides train the same model (LoRA, same seed) for one pass over the *same* examples (SFT) or
documents (CPT, every token: the baseline cuts long documents into ``seq_len`` chunks rather than
dropping their tails) with the same step budget (``batch_size × seq_len`` tokens) and sequence
cap; we count *real* tokens (not padding) per second of training, the warm-up step excluded. A
pass over a fixed set, rather than a fixed number of steps, keeps the comparison about packing:
with a few steps each side would see a different random sample, and the baseline's padding (so
its speed) depends strongly on which examples land in its batches. Printed as ours ÷ baseline from one run, since absolute timings on
a shared machine mean little; the sides alternate in ABBA order and the best run of each counts,
so a burst of load on the machine cannot decide the ratio. Goal: ≥ 1.5.

Each side also reports its fill (real tokens ÷ positions computed), which splits the ratio into
what packing removes (fill ÷ fill) and what a position costs (the rest): at equal cost per
position, removing padding cannot beat the baseline by more than 1 ÷ its fill.

    python -m slmforge.bench.dev.train_throughput --data DATASET_DIR --qa qa.jsonl [--examples 48 --documents 32]
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import torch
from slmforge.trainer.data.datasets import load_records, to_messages
from slmforge.trainer.train.common import (
    IGNORE,
    TrainOptions,
    load_model_and_tokenizer,
    training_arguments,
    wrap_lora,
)
from slmforge.trainer.train.packed_attention import packed_attention
from slmforge.trainer.train.pretrain import BlockCollator, BlockDataset, pack_blocks
from slmforge.trainer.train.sft import PackedCollator, RowDataset, build_examples, pack_examples, step_layout

from slmforge.heldout import text_dataset_files


class CountingCollator:
    """Wraps a collator and records the real tokens (before any padding) and positions of each batch, in order.

    Per batch, not a running total: the data loader fetches one batch ahead of the step that
    trains it, so a total read at a step's end would include the next step's tokens.
    """

    def __init__(self, collate: Callable[[list], dict[str, torch.Tensor]]) -> None:
        self.collate = collate
        self.batch_tokens: list[int] = []
        self.batch_positions: list[int] = []

    def __call__(self, features: list) -> dict[str, torch.Tensor]:
        self.batch_tokens.append(sum(len(f["input_ids"]) for f in features))
        batch = self.collate(features)
        self.batch_positions.append(batch["input_ids"].numel())
        return batch


def padded_collator(pad_id: int) -> Callable[[list], dict[str, torch.Tensor]]:
    """The naive baseline: one example per row, right-padded to the longest row, padding masked."""

    def collate(features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        ids, labels, mask = [], [], []
        for f in features:
            pad = width - len(f["input_ids"])
            ids.append(f["input_ids"] + [pad_id] * pad)
            labels.append(f.get("labels", f["input_ids"]) + [IGNORE] * pad)
            mask.append([1] * len(f["input_ids"]) + [0] * pad)
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "attention_mask": torch.tensor(mask)}

    return collate


def timed_train(model_dir: Path, dataset: Any, collate: Callable, rows_per_step: int, work: Path,
                packed: bool) -> dict[str, float]:
    """One pass over ``dataset``; real tokens, seconds and tokens/s of every step but the first (warm-up).

    ``packed``: our side, attention per packed example as ``slmforge train`` runs it.
    """
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.step_ends: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.step_ends.append(time.perf_counter())

    opts = TrainOptions(model=model_dir, data=model_dir, out=work, epochs=1.0, batch_size=rows_per_step, lr=1e-4,
                        save_every=0)
    torch.manual_seed(0)
    model, _tokenizer = load_model_and_tokenizer(model_dir)
    model = wrap_lora(model, opts)
    counter = CountingCollator(collate)
    clock = StepClock()
    args = TrainingArguments(**training_arguments(opts, work, disable_tqdm=False))
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=counter, callbacks=[clock])
    with packed_attention(model) if packed else contextlib.nullcontext() as per_example:
        if packed and not per_example:
            raise click.ClickException(f"{model_dir}: this model cannot take attention per packed example "
                                       "(sub-models, sliding window or soft-capping); the bench measures that path")
        trainer.train()
    steps = len(clock.step_ends)
    if steps < 2:
        raise click.ClickException("each side needs at least 2 steps (one is warm-up): raise --examples/--documents")
    tokens = sum(counter.batch_tokens[1:steps])
    positions = sum(counter.batch_positions[1:steps])
    seconds = clock.step_ends[-1] - clock.step_ends[0]
    return {"steps": steps, "tokens": tokens, "positions": positions, "fill": round(tokens / positions, 4),
            "seconds": round(seconds, 6), "tokens_per_s": round(tokens / seconds, 1)}


def abba_order(rounds: int) -> list[str]:
    """ours, baseline, baseline, ours, …: load that drifts during the run hits both sides alike."""
    pair = ("ours", "baseline")
    return [side for i in range(rounds) for side in (pair if i % 2 == 0 else pair[::-1])]


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, items: list[dict[str, list[int]]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.items[i]


Side = tuple[torch.utils.data.Dataset, Callable, int]  # dataset, collator, rows per step


def cpt_pair(tokenizer: Any, data: Path, seq_len: int, batch_size: int, seed: int, documents: int) -> tuple[Side, Side]:
    """Ours: EOS-joined blocks as ``slmforge train pretrain`` cuts them; baseline: each document in ``seq_len`` chunks."""
    train_file, _ = text_dataset_files(data)
    _, records = load_records(train_file, "pretrain")
    texts = [r["text"] for r in records]
    random.Random(seed).shuffle(texts)
    texts = texts[:documents]
    ours = (BlockDataset(pack_blocks(tokenizer, texts, seq_len)), BlockCollator(tokenizer.eos_token_id), batch_size)
    docs = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
    chunks = [{"input_ids": d[i:i + seq_len]} for d in docs for i in range(0, len(d), seq_len)]
    return ours, (ListDataset(chunks), padded_collator(tokenizer.pad_token_id), batch_size)


def sft_pair(tokenizer: Any, qa: Path, seq_len: int, batch_size: int, seed: int,
             examples_wanted: int) -> tuple[Side, Side]:
    """Ours: packed as ``slmforge train sft`` packs them (``step_layout``); baseline: one example per padded row."""
    fmt, records = load_records(qa, "sft")
    examples, _ = build_examples(tokenizer, [to_messages(fmt, r) for r in records], seq_len)
    random.Random(seed).shuffle(examples)
    examples = examples[:examples_wanted]
    row_len, rows_per_step = step_layout(seq_len, batch_size, per_example_attention=True)
    ours = (RowDataset(pack_examples(examples, row_len)), PackedCollator(tokenizer.pad_token_id), rows_per_step)
    naive = ListDataset([{"input_ids": ids, "labels": labels} for ids, labels in examples])
    return ours, (naive, padded_collator(tokenizer.pad_token_id), batch_size)


def plot_throughput(results: dict[str, Any], path: Path) -> Path:
    """Tokens/s of both sides per stage, and how much of what each side computed was real tokens."""
    from slmforge.bench.plots import pyplot

    plt = pyplot()
    stages = [s for s in ("cpt", "sft") if s in results]
    fig, (speed, fill) = plt.subplots(1, 2, figsize=(9, 3.6))
    for i, stage in enumerate(stages):
        row = results[stage]
        for j, (side, colour) in enumerate((("baseline", "tab:gray"), ("ours", "tab:blue"))):
            x = i + (j - 0.5) * 0.38
            label = ("padded HF Trainer" if side == "baseline" else "slmforge (packed)") if i == 0 else None
            speed.bar(x, row[side]["tokens_per_s"], 0.36, color=colour, label=label)
            fill.bar(x, row[side]["fill"] * 100, 0.36, color=colour)
            fill.text(x, row[side]["fill"] * 100 + 1, f"{row[side]['fill']:.0%}", ha="center", fontsize=8)
        top = max(row["ours"]["tokens_per_s"], row["baseline"]["tokens_per_s"])
        speed.text(i, top * 1.04, f"{row['ratio']}× (goal 1.5×)", ha="center", fontsize=9)
        fill.text(i, 108, f"removing padding alone\ngives ≤ {1 / row['baseline']['fill']:.2f}×", ha="center", fontsize=8)
    for ax, label in ((speed, "real tokens / s"), (fill, "real tokens / positions computed (%)")):
        ax.set_xticks(range(len(stages)), [s.upper() for s in stages])
        ax.set_ylabel(label, fontsize=9)
    speed.set_ylim(0, max(results[s][side]["tokens_per_s"] for s in stages for side in ("ours", "baseline")) * 1.2)
    fill.set_ylim(0, 124)
    speed.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"Training throughput, {results['model'].rsplit('/', 1)[-1]}, batch {results['batch_size']} × "
                 f"seq {results['seq_len']}, one run (best of {results['rounds']} per side)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


@click.command()
@click.option("--model", type=click.Path(path_type=Path), default=None,
              help="HF checkpoint (default: the embedded SmolLM2-135M base import).")
@click.option("--data", type=click.Path(path_type=Path), required=True, help="Dataset dir (train.jsonl) for CPT.")
@click.option("--qa", type=click.Path(path_type=Path), required=True, help="SFT JSONL (messages or alpaca).")
@click.option("--examples", type=click.IntRange(min=2), default=48, show_default=True,
              help="SFT examples both sides train on (one pass; the same ones, by seed).")
@click.option("--documents", type=click.IntRange(min=2), default=32, show_default=True,
              help="CPT documents both sides train on (one pass; the same ones, by seed). Fewer than ~30 "
                   "shipped documents can miss the long ones, whose chunk tails are most of the baseline's padding.")
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--seq-len", type=click.IntRange(min=16), default=512, show_default=True,
              help="Longest example / CPT block, as `slmforge train --seq-len` (same default).")
@click.option("--rounds", type=click.IntRange(min=1), default=2, show_default=True,
              help="Runs per side, in ABBA order (ours, baseline, baseline, ours); the best of each side counts.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench-train-throughput.json"), show_default=True)
def main(model: Path | None, data: Path, qa: Path, examples: int, documents: int, batch_size: int, seq_len: int,
         rounds: int, out: Path) -> None:
    from transformers import AutoTokenizer

    if model is None:
        from slmforge.trainer.base.importer import import_base

        model = import_base(None, out=None).checkpoint
    tokenizer = AutoTokenizer.from_pretrained(model)
    work = out.parent / f".{out.stem}.work"
    results: dict[str, Any] = {"model": str(model), "sft_examples": examples, "cpt_documents": documents,
                               "batch_size": batch_size, "seq_len": seq_len, "rounds": rounds}
    for stage, (ours, naive) in (("cpt", cpt_pair(tokenizer, data, seq_len, batch_size, 0, documents)),
                                 ("sft", sft_pair(tokenizer, qa, seq_len, batch_size, 0, examples))):
        sides = {"ours": ours, "baseline": naive}
        runs: dict[str, list[dict[str, float]]] = {"ours": [], "baseline": []}
        for side in abba_order(rounds):
            runs[side].append(timed_train(model, *sides[side], work / f"{stage}-{side}", packed=side == "ours"))
        row: dict[str, Any] = {side: max(r, key=lambda x: x["tokens_per_s"]) for side, r in runs.items()}
        row["all_runs"] = runs
        row["ratio"] = round(row["ours"]["tokens_per_s"] / row["baseline"]["tokens_per_s"], 2)
        row["fill_ratio"] = round(row["ours"]["fill"] / row["baseline"]["fill"], 3)
        speed_ratio = row["ours"]["tokens_per_s"] / row["baseline"]["tokens_per_s"]
        row["position_speed_ratio"] = round(speed_ratio * row["baseline"]["fill"] / row["ours"]["fill"], 3)
        results[stage] = row
        click.echo(f"{stage}: ours {row['ours']['tokens_per_s']} tok/s vs padded HF Trainer "
                   f"{row['baseline']['tokens_per_s']} tok/s -> ratio {row['ratio']}x (goal >= 1.5) = "
                   f"fill {row['ours']['fill']:.2f}/{row['baseline']['fill']:.2f} "
                   f"x cost per position {row['position_speed_ratio']:.2f}")
    out.write_text(json.dumps(results, indent=2) + "\n")
    plot = plot_throughput(results, out.with_suffix(".png"))
    click.echo(f"wrote {out} and {plot}")


if __name__ == "__main__":
    main()
