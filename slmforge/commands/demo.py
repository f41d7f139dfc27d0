"""`slmforge demo`: the shipped Python-docs recipe end to end on the embedded defaults."""

from __future__ import annotations

import json
from pathlib import Path

import click

from slmforge.assets import example_recipe
from slmforge.commands.pipeline import run_recipe, summary_table
from slmforge.recipe import load_recipe


@click.command()
@click.option("--quick", is_flag=True,
              help="Same path on the FAQ part of the excerpt with a few steps per stage (about 4.5 minutes on 2 cores; "
                   "a first run on the machine adds about 2 for the cached base import and embedder gate).")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), help="Run directory (default: runs/python-docs[-quick]).")
def demo(quick: bool, out: Path | None) -> None:
    """Base import → prepare → CPT → SFT → DPO → merge → export for three profiles → bundles →
    a cited answer → bench report, on SmolLM2-135M and the shipped Python-docs excerpt."""
    recipe = example_recipe(quick)
    run_dir, outcomes = run_recipe(recipe, out=out)
    click.echo(summary_table(outcomes))
    answer_path = run_dir / "answer.json"
    if answer_path.is_file():
        answer = json.loads(answer_path.read_text())
        click.echo(f"\nQ: {load_recipe(recipe).stages.answer.question}")
        click.echo(f"A: {answer.get('answer', '').strip()}")
        for i, c in enumerate(answer.get("citations", []), 1):
            click.echo(f"  [{i}] {c.get('source')} — {c.get('heading')} (score {c.get('score', 0):.3f})")
    eval_path = run_dir / "eval" / "eval.json"
    if eval_path.is_file():  # the domain gain, measured: adapted bundle vs the base model with the same index
        click.echo(f"\n{json.loads(eval_path.read_text()).get('summary', '')}")
    profiles = load_recipe(recipe).stages.export.profiles
    bundles = [run_dir / "bundles" / p for p in profiles if (run_dir / "bundles" / p).is_dir()]
    first = bundles[0] if bundles else run_dir / "bundles" / "<profile>"
    click.echo(f"\nbundles: {', '.join(str(b) for b in bundles)}")
    click.echo(f"bench report: {run_dir / 'bench' / 'report' / 'report.md'}")
    click.echo("\nnext:")
    click.echo(f"  slmforge chat {first}")
    click.echo(f"  slmforge serve {first} --port 8080")
    click.echo(f"  slmforge bench run {first} --detect --out results.jsonl   # on the device itself")
