"""`slmforge feedback export BUNDLE --format kto|dpo --out FILE`: ratings → the next training cycle."""

from __future__ import annotations

from pathlib import Path

import click

from slmforge.output import emit_json, json_option


@click.group("feedback")
def feedback() -> None:
    """Export thumbs up/down collected by serve (POST /v1/feedback) and chat (/good, /bad)."""


@feedback.command("export")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["kto", "dpo"]), default="kto", show_default=True,
              help="kto: one rated answer per line; dpo: chosen/rejected pairs.")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True, help="JSONL file to write.")
@click.option("--telemetry", "telemetry_file", type=click.Path(path_type=Path), default=None,
              help="Telemetry database (default: <bundle>.telemetry.db next to the bundle).")
@json_option
def export(bundle: Path, fmt: str, out: Path, telemetry_file: Path | None, as_json: bool) -> None:
    """Write ratings as JSONL that 'slmforge train align --method kto|dpo' reads."""
    from slmforge.runtime.telemetry.feedback import export_feedback
    from slmforge.runtime.telemetry.store import TelemetryStore, telemetry_path

    if telemetry_file is None and not bundle.exists():
        raise click.BadParameter(f"{bundle}: no such bundle", param_hint="BUNDLE")
    store = TelemetryStore(telemetry_file or telemetry_path(bundle), readonly=True)
    try:
        result = export_feedback(store, fmt, out)
    finally:
        store.close()
    if as_json:
        emit_json(result)
    else:
        click.echo(f"wrote {result['records']} {fmt} records from {result['ratings']} ratings "
                   f"({result['good']} good, {result['bad']} bad) to {out}")
