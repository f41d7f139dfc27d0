"""`slmforge distill`: logit distillation of a teacher into a (pruned) student."""

from __future__ import annotations

from pathlib import Path

import click
from slmforge.trainer.train.common import checkpoint_options

from slmforge.output import emit_json, format_table, json_option


@click.command("distill")
@click.option("--teacher", required=True, type=click.Path(path_type=Path), help="Teacher checkpoint.")
@click.option("--student", required=True, type=click.Path(path_type=Path),
              help="Student checkpoint (e.g. from slmforge compress); same tokenizer as the teacher.")
@click.option("--data", required=True, type=click.Path(path_type=Path), help="Dataset dir from slmforge data prepare.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder for the distilled student.")
@click.option("--temperature", default=2.0, show_default=True, help="Softmax temperature of the KD term.")
@click.option("--alpha", default=0.5, show_default=True, help="Weight of the KD term; 1-alpha goes to the LM loss.")
@click.option("--max-steps", default=200, show_default=True)
@click.option("--lr", default=1e-4, show_default=True)
@click.option("--batch-size", default=4, show_default=True)
@click.option("--seq-len", default=256, show_default=True)
@click.option("--eval-tokens", default=16384, show_default=True, help="Held-out tokens for perplexity.")
@click.option("--seed", default=0, show_default=True)
@checkpoint_options
@json_option
def distill(teacher: Path, student: Path, data: Path, out: Path, temperature: float, alpha: float, max_steps: int,
            lr: float, batch_size: int, seq_len: int, eval_tokens: int, seed: int, save_every: int, resume: bool,
            as_json: bool) -> None:
    """Train STUDENT to match TEACHER's next-token distribution (forward KL at a temperature,
    mixed with the LM loss) on domain text; report teacher / student perplexity and size."""
    from slmforge.trainer.shrink.distill import DistillOptions, summary_rows
    from slmforge.trainer.shrink.distill import distill as run

    opts = DistillOptions(temperature=temperature, alpha=alpha, max_steps=max_steps, lr=lr, batch_size=batch_size,
                          seq_len=seq_len, eval_tokens=eval_tokens, seed=seed, save_every=save_every, resume=resume)
    result = run(teacher, student, data, out, opts)
    if as_json:
        emit_json({"checkpoint": str(result.checkpoint), **result.metrics})
        return
    click.echo(format_table(["model", "blocks", "parameters", "MiB", "held-out ppl"], summary_rows(result.metrics)))
    if "recovered_share" in result.metrics:
        click.echo(f"recovered {result.metrics['recovered_share']:.0%} of the perplexity lost to pruning")
    click.echo(f"wrote {result.checkpoint} (loss curve: distill.png)")
