"""`slmforge telemetry report BUNDLE`: latency, speed, memory and drift from the bundle's telemetry.db."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from slmforge.runtime.telemetry.drift import DEFAULT_WINDOW

from slmforge.output import emit_json, format_table, json_option


@click.group("telemetry")
def telemetry() -> None:
    """Read the telemetry a served bundle collected (it never leaves the device unless you export it)."""


def _reference(bundle: Path) -> tuple[Path, Any]:
    """The bundle's source path and the drift reference of its index (the language model is not loaded)."""
    from slmforge.runtime.answer.service import index_reference
    from slmforge.runtime.bundle.reader import open_bundle
    from slmforge.runtime.index.embedder import Embedder
    from slmforge.runtime.index.store import RagIndex

    opened = open_bundle(bundle, verify=False)  # only the index and embedder are read; serve/run verify files
    with RagIndex(opened.rag_db, readonly=True) as index:
        return opened.source, index_reference(index, Embedder(opened.embedder_dir).embed)


@telemetry.command("report")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--telemetry", "telemetry_file", type=click.Path(path_type=Path), default=None,
              help="Telemetry database (default: <bundle>.telemetry.db next to the bundle).")
@click.option("--window", type=click.IntRange(2), default=DEFAULT_WINDOW, show_default=True,
              help="Questions per drift window.")
@click.option("--plot", type=click.Path(path_type=Path), default=None, help="Write a PNG of the time series here.")
@json_option
def report(bundle: Path, telemetry_file: Path | None, window: int, plot: Path | None, as_json: bool) -> None:
    """p50/p95 latency, tok/s, memory, cache and routing, feedback, and drift with a recommendation."""
    from slmforge.runtime.telemetry.report import build_report, plot_report
    from slmforge.runtime.telemetry.store import TelemetryStore, telemetry_path

    source, reference = _reference(bundle)
    db = telemetry_file or telemetry_path(source)
    store = TelemetryStore(db, readonly=True)
    try:
        rows, feedback = store.requests(), store.feedback()
    finally:
        store.close()
    result = build_report(rows, feedback, reference, window=window)
    result["telemetry"] = str(db)
    if plot is not None:
        result["plot"] = str(plot_report(rows, result, reference, plot))
    if as_json:
        emit_json(result)
        return
    drift = result["drift"]
    table = [
        ("requests / answers", f"{result['requests']} / {result['chat_answers']}"),
        ("status codes", ", ".join(f"{k}: {v}" for k, v in result["status_codes"].items())),
        ("latency p50 / p95 (ms)", f"{result['latency_ms']['p50']} / {result['latency_ms']['p95']}"),
        ("time to first token p50 / p95 (ms)", f"{result['ttft_ms']['p50']} / {result['ttft_ms']['p95']}"),
        ("decode tok/s p50 (p5)", f"{result['decode_tok_s']['p50']} ({result['decode_tok_s']['p5']})"),
        ("memory RSS p50 / peak (MB)", f"{result['memory_mb']['rss_p50']} / {result['memory_mb']['peak']}"),
        ("cache hit rate", result["cache_hit_rate"]),
        ("routes", ", ".join(f"{k}: {v}" for k, v in result["routes"].items())),
        ("feedback (bad / all)", f"{result['feedback']['bad']} / {result['feedback']['ratings']}"),
        ("drifted windows", f"{len(drift['drifted_windows'])} of {len(drift['windows'])}"),
        ("drift status", drift["status"]),
    ]
    click.echo(format_table(["metric", "value"], table))
    click.echo(f"\nrecommendation: {drift['recommendation']}")
    if plot is not None:
        click.echo(f"plot: {result['plot']}")
