"""`slmforge merge CONFIG.yaml --out DIR`: merge checkpoints from a mergekit-style recipe."""

from __future__ import annotations

from pathlib import Path

import click

from slmforge.output import emit_json, format_table, json_option


@click.command("merge")
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder for the merged checkpoint.")
@click.option("--seed", default=0, show_default=True, help="Seed for the random drops of dare_ties/dare_linear.")
@json_option
def merge(config: Path, out: Path, seed: int, as_json: bool) -> None:
    """Merge checkpoints as CONFIG (a mergekit YAML subset) says; see docs/merging.md."""
    from slmforge.trainer.merge.engine import merge_from_config

    result = merge_from_config(config, out, seed=seed)
    report = {"checkpoint": str(result.checkpoint), **result.metrics}
    if as_json:
        emit_json(report)
    else:
        click.echo(format_table(["field", "value"], list(report.items())))
