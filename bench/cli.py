"""`slmforge bench run|report`: measure bundles on this device (and emulated profiles), then report.

`bench run` needs only the base install: it imports the runtime, never torch/transformers.
"""

from __future__ import annotations

from pathlib import Path

import click

from slmforge.errors import UserError
from slmforge.output import emit_json, format_table, json_option


@click.group()
def bench() -> None:
    """Benchmark bundles across device profiles; build reports."""


@bench.command("run")
@click.argument("bundles", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--profile", "profile_name", help="The device profile of this machine (default: detect the host).")
@click.option("--detect", is_flag=True, help="Detect this machine's profile (the default).")
@click.option("--emulate", multiple=True, metavar="PROFILE",
              help="Also judge the bundles against PROFILE from host measurements (labelled as projections).")
@click.option("--repeats", default=5, show_default=True, type=click.IntRange(1, 100),
              help="Timed repeats of pp512/tg128 (mean ± std).")
@click.option("--threads", type=click.IntRange(1, 1024), help="Threads (default: the host's cores, capped by --profile).")
@click.option("--qa", type=click.Path(path_type=Path), help="JSONL of questions with reference answers (token F1).")
@click.option("--qa-limit", default=10, show_default=True, type=click.IntRange(1), help="QA pairs to answer.")
@click.option("--heldout", type=click.Path(path_type=Path), help="Held-out text for perplexity (heldout.jsonl, dir, file).")
@click.option("--ppl-tokens", default=2048, show_default=True, type=click.IntRange(2), help="Tokens of perplexity.")
@click.option("--k", default=4, show_default=True, type=click.IntRange(1, 100), help="Chunks retrieved per question.")
@click.option("--question", default=None, help="The RAG question whose TTFT is timed.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="results.jsonl to write.")
@click.option("--append", is_flag=True, help="Add to --out instead of replacing it.")
@json_option
def run_cmd(bundles: tuple[Path, ...], profile_name: str | None, detect: bool, emulate: tuple[str, ...],
            repeats: int, threads: int | None, qa: Path | None, qa_limit: int, heldout: Path | None,
            ppl_tokens: int, k: int, question: str | None, out: Path, append: bool, as_json: bool) -> None:
    """Measure BUNDLE... (bundle folders, .tar bundles, or bare .gguf / ONNX model folders) on this machine."""
    from slmforge.bench.campaign import Campaign

    if profile_name and detect:
        raise UserError("--profile and --detect exclude each other: name this device's profile or detect it")
    for path in (*bundles, *(p for p in (qa, heldout) if p)):
        if not path.exists():
            raise UserError(f"{path}: not found")
    campaign = Campaign.prepare(profile_name, list(emulate), threads)
    records = campaign.run(list(bundles), out, append, repeats=repeats, qa=qa, qa_limit=qa_limit, heldout=heldout,
                           ppl_tokens=ppl_tokens, k=k, question=question)
    if as_json:
        emit_json([r.model_dump(mode="json") for r in records])
        return
    click.echo(format_table(*campaign.summary(records)))
    click.echo(f"\n{len(records)} records → {out}   (next: slmforge bench report {out} --out DIR)")


@bench.command("report")
@click.argument("results", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder for report.md, report.json, PNGs.")
@click.option("--eval", "eval_file", type=click.Path(path_type=Path), default=None,
              help="eval.json (or its folder) from 'slmforge eval': F1 and citation accuracy join the summary.")
@json_option
def report_cmd(results: tuple[Path, ...], out: Path, eval_file: Path | None, as_json: bool) -> None:
    """Merge results.jsonl files from many devices into report.md, report.json and PNG plots."""
    from slmforge.bench.report import build_report

    summary = build_report(list(results), out, eval_file=eval_file)
    if as_json:
        emit_json(summary)
        return
    click.echo(f"{summary['records']} records from {len(results)} file(s), {summary['summary_rows']} summary rows "
               f"→ {out}")
    for name in summary["files"]:
        click.echo(f"  {out / name}")
    for gap in summary["problems"][:10]:
        click.echo(f"  note: {gap}")
