"""`slmforge pipeline RECIPE.yaml`: every stage of a recipe, redoing only what changed."""

from __future__ import annotations

import time
from pathlib import Path

import click

from slmforge.fileio import atomic_write_json
from slmforge.output import emit_json, format_table, json_option
from slmforge.pipeline_plan import PlanBuilder
from slmforge.pipeline_runner import PipelineRunner, StageOutcome
from slmforge.recipe import load_recipe
from slmforge.stage_process import exit_on_sigterm


def run_recipe(recipe_path: Path, from_stage: str | None = None, until_stage: str | None = None,
               dry_run: bool = False, out: Path | None = None) -> tuple[Path, list[StageOutcome]]:
    """Plan and (unless ``dry_run``) run a recipe; returns the run directory and per-stage outcomes."""
    recipe = load_recipe(recipe_path)
    builder = PlanBuilder(recipe, recipe_path, out)
    stages = builder.build()
    runner = PipelineRunner(builder.run_dir, stages)
    selected = runner.select(from_stage, until_stage)
    forced = runner.forced_by(from_stage)
    if dry_run:
        return builder.run_dir, runner.plan(selected, forced)
    started = time.time()
    exit_on_sigterm()
    outcomes = runner.run(selected, forced)
    atomic_write_json(builder.run_dir / "run.json", {
        "recipe": str(recipe_path.resolve()),
        "run_dir": str(builder.run_dir),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
        "stages": [o.__dict__ | {"seconds": round(o.seconds, 1)} for o in outcomes],
    })
    return builder.run_dir, outcomes


def summary_table(outcomes: list[StageOutcome]) -> str:
    rows = [(o.name, o.status, f"{o.seconds:.1f}s" if o.seconds else "-", o.metric or o.reason or "")
            for o in outcomes]
    return format_table(("stage", "status", "time", "key metric / reason"), rows)


@click.command()
@click.argument("recipe", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--from", "from_stage", help="Start at this stage (it re-runs even if up to date).")
@click.option("--until", "until_stage", help="Stop after this stage.")
@click.option("--dry-run", is_flag=True, help="Print the plan and what would be skipped; run nothing.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), help="Run directory (default: the recipe's output_dir).")
@json_option
def pipeline(recipe: Path, from_stage: str | None, until_stage: str | None, dry_run: bool, out: Path | None,
             as_json: bool) -> None:
    """Run every stage of RECIPE in order; a stage whose output exists and whose inputs'
    hashes match its last run is skipped, so a re-run after a crash or an edit redoes only
    what changed."""
    run_dir, outcomes = run_recipe(recipe, from_stage, until_stage, dry_run, out)
    if as_json:
        emit_json({"run_dir": str(run_dir), "dry_run": dry_run, "stages": [o.__dict__ for o in outcomes]})
        return
    click.echo(("plan for " if dry_run else "run ") + str(run_dir))
    click.echo(summary_table(outcomes))
