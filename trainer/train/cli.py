"""`slmforge train pretrain|sft|align`: the training verbs (flags shared in train_common)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click
from slmforge.trainer.train.common import common_options, options_from

from slmforge.output import emit_json, json_option


def _report(metrics: dict[str, Any], out: Any, as_json: bool, keys: tuple[str, ...]) -> None:
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun / accelerate launch only rank 0 wrote, and says so
        return
    if as_json:
        emit_json({"out": str(out), "metrics": metrics})
        return
    parts = [f"{k}={metrics[k]}" for k in keys if metrics.get(k) is not None]
    click.echo(f"wrote {out}  " + "  ".join(parts))


@click.group("train")
def train() -> None:
    """Continual pretraining, SFT and preference alignment (LoRA by default)."""


@train.command("pretrain")
@common_options(default_lr=2e-4)
@json_option
def pretrain(as_json: bool, **kwargs: Any) -> None:
    """Continual pretraining on a dataset dir (train.jsonl + heldout.jsonl) or a {"text"} JSONL file."""
    from slmforge.trainer.train.pretrain import train_pretrain

    opts = options_from(kwargs)
    metrics = train_pretrain(opts)
    _report(metrics, opts.out, as_json, ("steps", "heldout_ppl_before", "heldout_ppl_after", "tokens_per_s"))


@train.command("sft")
@common_options(default_lr=2e-4)
@click.option("--heldout-text", type=click.Path(exists=True, path_type=Path), default=None,
              help="Held-out documents (a dataset dir, .jsonl or text) whose perplexity is measured before and "
                   "after, so the cost of instruction tuning to the domain knowledge shows.")
@click.option("--eval-examples", type=click.IntRange(min=1), default=None,
              help="Measure the held-out answer loss on the first N held-out examples only (default: all of "
                   "them; each costs a forward pass before and after training).")
@json_option
def sft(as_json: bool, **kwargs: Any) -> None:
    """Instruction tuning on chat {"messages"} or alpaca JSONL; loss on assistant tokens only."""
    from slmforge.trainer.train.sft import train_sft

    opts = options_from(kwargs)
    metrics = train_sft(opts)
    _report(metrics, opts.out, as_json, ("steps", "examples", "heldout_answer_loss_before", "heldout_answer_loss_after",
                                         "heldout_ppl_before", "heldout_ppl_after", "tokens_per_s"))


@train.command("align")
@click.option("--method", type=click.Choice(["dpo", "ipo", "kto", "orpo"]), default="dpo", show_default=True)
@click.option("--beta", type=click.FloatRange(min=0, min_open=True), default=0.1, show_default=True,
              help="Strength of the pull towards the reference model (DPO/IPO/KTO) or of the odds-ratio term (ORPO).")
@click.option("--loss-type", default=None,
              help="Override trl's loss_type (e.g. hinge, robust for DPO; apo_zero_unpaired for KTO).")
@click.option("--heldout-fraction", type=click.FloatRange(min=0, max=0.5), default=0.1, show_default=True,
              help="Share of pairs kept out of training to measure the reward margin before/after.")
@common_options(default_lr=5e-5, default_seq_len=512)
@json_option
def align(as_json: bool, **kwargs: Any) -> None:
    """Preference alignment with trl: DPO, IPO, KTO or ORPO."""
    from slmforge.trainer.train.align import train_align

    opts = options_from(kwargs)
    metrics = train_align(opts)
    _report(metrics, opts.out, as_json, ("steps", "method", "heldout_margin_before", "heldout_margin_after",
                                         "tokens_per_s"))
