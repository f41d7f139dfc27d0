"""`slmforge eval`: adapted bundles against a baseline on held-out questions, with RAG and closed-book.

Thin: options, input checks before any model loads, then ``bench/evaluate.py`` answers and scores
and ``bench/eval_report.py`` prints and writes. Runs on the runtime (no torch).
"""

from __future__ import annotations

from pathlib import Path

import click
from slmforge.runtime.answer.cli import threads_option

from slmforge.output import emit_json, json_option


@click.command("eval")
@click.argument("bundles", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="BUNDLE...")
@click.option("--qa", required=True, type=click.Path(path_type=Path),
              help="Held-out questions with reference answers (qa.heldout.jsonl from 'data qa', or your own JSONL).")
@click.option("--baseline", type=click.Path(path_type=Path),
              help="The bundle every BUNDLE is compared with (the base model with the same index).")
@click.option("--out", type=click.Path(path_type=Path), help="Folder for eval.json, answers.jsonl and eval.png.")
@json_option
@click.option("--limit", type=click.IntRange(min=1), help="Answer only the first N questions.")
@click.option("--k", default=4, show_default=True, type=click.IntRange(1, 100), help="Chunks retrieved per question.")
@click.option("--max-tokens", type=click.IntRange(min=1), help="Longest answer in tokens (default: each bundle's).")
@click.option("--no-closed-book", is_flag=True, help="Skip the answers without retrieval (halves the time).")
@click.option("--probes", type=click.Path(path_type=Path),
              help="Off-domain questions for the refusal rate: one per line, or JSONL (default: 10 built in).")
@threads_option
def eval_cmd(bundles: tuple[Path, ...], qa: Path, baseline: Path | None, out: Path | None, as_json: bool,
             limit: int | None, k: int, max_tokens: int | None, no_closed_book: bool, probes: Path | None,
             threads: int | None) -> None:
    """Answer held-out questions with each BUNDLE (and --baseline): F1, ROUGE-L, hit@k, citations,
    groundedness, refusals, speed; differences from the baseline with 95 % intervals."""
    from slmforge.bench.eval_report import check_out, gain_line, table, write_outputs
    from slmforge.bench.evaluate import run_eval

    if out is not None:
        check_out(out)
    result, rows = run_eval(list(bundles), qa, baseline=baseline, k=k, max_tokens=max_tokens,
                            closed_book=not no_closed_book, limit=limit, probes_path=probes,
                            threads=threads)
    names = [n for n in result["systems"] if n != result["baseline"]] or [result["baseline"]]
    result["summary"] = gain_line(result, names[0])  # the line the pipeline and the demo print
    written = write_outputs(out, result, rows) if out is not None else []
    if as_json:
        emit_json(result)
        return
    click.echo(table(result))
    for path in written:
        click.echo(f"  {path}")
    for name in names:
        click.echo(gain_line(result, name))
