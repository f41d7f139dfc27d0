"""`slmforge compress`: depth-prune a checkpoint by measured block importance."""

from __future__ import annotations

from pathlib import Path

import click

from slmforge.output import emit_json, format_table, json_option


@click.command("compress")
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path), help="Checkpoint to prune.")
@click.option("--drop-layers", help="Comma-separated block indices to remove, e.g. 3,5,7.")
@click.option("--keep-layers", type=int, help="Keep this many blocks; drop the most redundant ones (needs --data).")
@click.option("--data", type=click.Path(path_type=Path),
              help="Dataset dir (slmforge data prepare) to score blocks on and measure perplexity.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder for the pruned checkpoint.")
@click.option("--seq-len", default=256, show_default=True, help="Tokens per scoring/eval window.")
@click.option("--score-tokens", default=16384, show_default=True, help="Tokens of training text to score blocks on.")
@click.option("--eval-tokens", default=16384, show_default=True, help="Held-out tokens for perplexity (0: skip).")
@json_option
def compress(model_dir: Path, drop_layers: str | None, keep_layers: int | None, data: Path | None, out: Path,
             seq_len: int, score_tokens: int, eval_tokens: int, as_json: bool) -> None:
    """Remove transformer blocks: the ones you name, or the N-keep whose output is most similar
    to their input (cosine on your text). Follow with `slmforge distill` to recover quality."""
    from slmforge.trainer.shrink.compress import compress as run

    result = run(model_dir, out, drop_layers=drop_layers, keep_layers=keep_layers, data=data, seq_len=seq_len,
                 score_tokens=score_tokens, eval_tokens=eval_tokens)
    report = {"checkpoint": str(result.checkpoint), "dropped": result.dropped, **result.metrics}
    if as_json:
        emit_json(report)
        return
    if result.scores:
        rows = [[i, f"{s:.4f}", f"{1 - s:.4f}", "dropped" if i in result.dropped else ""]
                for i, s in enumerate(result.scores)]
        click.echo(format_table(["block", "cos(in,out)", "influence", ""], rows))
    m = result.metrics
    click.echo(f"blocks {m['blocks_before']} -> {m['blocks_after']}, parameters {m['parameters_before']:,} -> "
               f"{m['parameters_after']:,}, size {m['bytes_before'] / 2**20:.1f} -> {m['bytes_after'] / 2**20:.1f} MiB")
    if "heldout_ppl_before" in m:
        click.echo(f"held-out perplexity {m['heldout_ppl_before']} -> {m['heldout_ppl_after']}")
    click.echo(f"wrote {result.checkpoint}")
