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


@bench.command("retrieval")
@click.option("--qa", "qa_files", multiple=True, required=True, type=click.Path(path_type=Path),
              help="QA JSONL (repeatable): generated, FAQ or paraphrased questions with source and section.")
@click.option("--docs", multiple=True, required=True, type=click.Path(path_type=Path),
              help="The documents the index is built from (folders or files, repeatable).")
@click.option("--embedder", "embedders", multiple=True, required=True, metavar="NAME=DIR",
              help="An exported device embedder folder (embedder.json, model.onnx), repeatable.")
@click.option("--baseline", default="stock", show_default=True, help="The embedder NAME the others are compared with.")
@click.option("--retriever", type=click.Path(path_type=Path),
              help="A 'train retriever' checkpoint: only questions from its held-out documents are asked.")
@click.option("--threads", type=click.IntRange(1, 1024), help="onnxruntime threads (default: its own choice).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder for retrieval.json and .png.")
@json_option
def retrieval_cmd(qa_files: tuple[Path, ...], docs: tuple[Path, ...], embedders: tuple[str, ...], baseline: str,
                  retriever: Path | None, threads: int | None, out: Path, as_json: bool) -> None:
    """hit@1, hit@4, MRR and nDCG@10 of BM25, each embedder and their fusion, on held-out questions."""
    from slmforge.bench.retrieval_benchmark import plot, run_benchmark

    from slmforge.fileio import atomic_write_json
    from slmforge.manifest import read_manifest
    from slmforge.qa_records import read_qa

    named: dict[str, Path] = {}
    for spec in embedders:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            raise UserError(f"--embedder {spec}: write it as NAME=FOLDER, e.g. stock=bundle/embedder")
        named[name] = Path(folder)
    for path in (*qa_files, *docs, *named.values()):
        if not path.exists():
            raise UserError(f"{path}: not found")
    heldout = None
    if retriever is not None:
        held = read_manifest(retriever).params.get("heldout_documents")
        if not isinstance(held, list):
            raise UserError(f"{retriever}: its slmforge.json lists no heldout_documents; is it a 'train retriever' "
                            "checkpoint?")
        heldout = set(held)
    records = [r for f in qa_files for r in read_qa(f)]
    report = run_benchmark(records, list(docs), named, heldout, baseline, threads)
    report["inputs"] = {"qa": [str(f) for f in qa_files], "docs": [str(d) for d in docs],
                        "retriever": str(retriever) if retriever else None}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "retrieval.json", report)
    plot(report, out / "retrieval.png")
    if as_json:
        emit_json({k: v for k, v in report.items() if k != "rows"})
        return
    for set_name, table in report["summary"].items():
        click.echo(f"\n{set_name} questions: {table['n']}")
        click.echo(format_table(["method", *table["methods"][next(iter(table["methods"]))]],
                                [[m, *(f"{v['mean']:.3f} [{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}]" for v in row.values())]
                                 for m, row in table["methods"].items()]))
        for pair, diffs in table["vs_baseline"].items():
            click.echo(f"  {pair}: " + ", ".join(f"{k} {d['mean']:+.3f} [{d['ci95_low']:+.3f}, {d['ci95_high']:+.3f}]"
                                                 for k, d in diffs.items()))
    click.echo("\nNAME+bm25 is the search as bundled: BM25 fusion weight "
               + ", ".join(f"{n} {w}" for n, w in report["bm25_weight_as_bundled"].items()))
    speed = report["embed_speed"]["embedders"]
    click.echo("\nembedding speed (same run): " + ", ".join(f"{n} {s['ms_per_chunk_median']} ms/chunk" for n, s in speed.items()))
    click.echo(f"wrote {out / 'retrieval.json'} and {out / 'retrieval.png'}")
