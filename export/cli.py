"""`slmforge export`: compile a checkpoint to GGUF/ONNX that fits a device profile."""

from __future__ import annotations

from pathlib import Path

import click

from slmforge.output import emit_json, format_table, json_option

MB = 1e6


def _row(art) -> list:
    return [art.format, art.quant, f"{art.size_bytes / MB:.1f}", art.bits_per_weight,
            f"{(art.est_memory_bytes or 0) / MB:.0f}", art.est_decode_tok_s,
            art.ppl_source and f"{art.ppl_source:.3f}", art.ppl_exported and f"{art.ppl_exported:.3f}",
            art.ppl_ratio and f"{art.ppl_ratio:.4f}", art.kl_mean and f"{art.kl_mean:.4f}",
            art.top1_agreement and f"{art.top1_agreement:.3f}", art.gate]


HEADERS = ["format", "quant", "size MB", "bits/w", "est. mem MB", "est. tok/s", "ppl src", "ppl exp",
           "ratio", "KL", "top-1", "gate"]


@click.command("export")
@click.option("--model", "model", required=True, type=click.Path(path_type=Path),
              help="HF checkpoint folder (from base import, train, merge, compress or distill).")
@click.option("--profile", "profile_name", required=True, help="Device profile name, 'host', or a profile YAML.")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Export folder to write.")
@click.option("--format", "fmt", type=click.Choice(["gguf", "onnx", "all"]), default=None,
              help="Model format(s); default: the profile's preferred format.")
@click.option("--quant", default=None,
              help="Force one quantization (GGUF: F16, Q8_0, Q6_K, Q5_K_M, Q4_K_M, Q4_0, Q3_K_M, Q2_K, ...; "
                   "ONNX: fp32, int8, int4). Default: the best that fits the profile.")
@click.option("--heldout", type=click.Path(path_type=Path), multiple=True,
              help="Held-out domain text for the quality gate: dataset folder, .jsonl or text files; repeat it "
                   "and the gate reads them in order until it has --eval-tokens (default: the shipped "
                   "Python-docs excerpt).")
@click.option("--eval-tokens", type=click.IntRange(16), default=2048, show_default=True,
              help="Held-out tokens the quality gate scores.")
@click.option("--threads", type=click.IntRange(1), default=None, help="CPU threads for llama.cpp.")
@click.option("--no-embedder", is_flag=True, help="Skip exporting the RAG embedder to embedder/.")
@click.option("--embedder-source", type=click.Path(path_type=Path), default=None,
              help="Export this sentence-transformer as the RAG embedder (a 'train retriever' checkpoint) instead "
                   "of the embedded all-MiniLM-L6-v2; same int8 path and cosine gate.")
@click.option("--reuse", type=click.Path(path_type=Path), default=None,
              help="An earlier export folder of the same checkpoint: artifacts it built and gated on the same "
                   "held-out text (and its embedder) are linked instead of rebuilt and re-measured.")
@json_option
def export(model: Path, profile_name: str, out: Path, fmt: str | None, quant: str | None, heldout: tuple[Path, ...],
           eval_tokens: int, threads: int | None, no_embedder: bool, embedder_source: Path | None, reuse: Path | None, as_json: bool) -> None:
    """Compile MODEL to GGUF and/or ONNX for a device profile, with a quality gate.

    Without --quant the highest-quality quantization whose estimated memory (weights + KV cache
    at the profile's context + runtime overhead) fits the profile's app memory and whose
    estimated decode speed meets its target is chosen. Exit 2 if nothing fits, 3 if the
    artifact fails the perplexity gate (the artifact is kept, marked 'fail').
    """
    from slmforge.export.run import ExportOptions, run_export

    from slmforge.errors import QualityGateFailed, UserError
    from slmforge.manifest import EXPORT_MANIFEST_NAME, ExportManifest
    from slmforge.profiles import load_profile

    if not model.is_dir():
        raise UserError(f"{model}: no such checkpoint folder")
    profile = load_profile(profile_name)
    formats = {"all": ["gguf", "onnx"], None: [profile.formats[0]]}.get(fmt, [fmt])
    opts = ExportOptions(formats=formats, quant=quant, heldout=list(heldout), eval_tokens=eval_tokens, threads=threads,
                         embedder=not no_embedder, embedder_source=embedder_source, progress=not as_json,
                         reuse=reuse)
    try:
        manifest = run_export(model, profile, out, opts)
    except QualityGateFailed:
        manifest = ExportManifest.model_validate_json((out / EXPORT_MANIFEST_NAME).read_text())
        _report(manifest, out, as_json)
        raise
    _report(manifest, out, as_json)


def _report(manifest, out: Path, as_json: bool) -> None:
    if as_json:
        emit_json(manifest.model_dump(mode="json"))
        return
    click.echo(f"export for profile '{manifest.profile}' -> {out}")
    click.echo(format_table(HEADERS, [_row(a) for a in manifest.artifacts]))
    for art in manifest.artifacts:
        click.echo(f"  {art.format} {art.quant}: {art.reason}")
    if manifest.embedder:
        click.echo(f"  embedder: {manifest.embedder.path}/ ({manifest.embedder.name}, {manifest.embedder.quant})")
