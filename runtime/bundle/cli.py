"""`slmforge bundle`: package a model export, its embedder and a RAG index of your documents."""

from __future__ import annotations

from pathlib import Path

import click
from slmforge.runtime.index.chunking import DEFAULT_MAX_TOKENS, DEFAULT_OVERLAP
from slmforge.runtime.index.store import DEFAULTS, VECTOR_MODES

from slmforge.output import emit_json, json_option


@click.command("bundle")
@click.option("--export", "export_dir", required=True, type=click.Path(path_type=Path),
              help="Folder written by 'slmforge export' (export.json, model, embedder/).")
@click.option("--docs", multiple=True, required=True, type=click.Path(path_type=Path),
              help="Documents folder or file to index (repeatable).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Bundle folder (or .tar with --tar).")
@click.option("--tar", is_flag=True, help="Write one .tar file instead of a folder.")
@click.option("--system-prompt", default=None, help="System prompt stored in the bundle.")
@click.option("--quant", default=None, help="Which exported artifact to ship (e.g. Q4_K_M, int4); default: best passing.")
@click.option("--n-ctx", type=int, default=None, help="Context window the runtime uses (default: profile, ≤ 2048).")
@click.option("--chunk-tokens", type=int, default=DEFAULT_MAX_TOKENS, show_default=True,
              help="Chunk size in embedder tokens.")
@click.option("--overlap", type=int, default=DEFAULT_OVERLAP, show_default=True, help="Overlap between chunks.")
@click.option("--vector-mode", type=click.Choice(list(VECTOR_MODES)), default=DEFAULTS["vector_mode"],
              show_default=True, help="First pass of vector search (bitscan: in-memory Hamming scan of the bit vectors), re-scored exactly.")
@click.option("--vec-weight", type=float, default=None,
              help=f"Weight of vector ranks in fusion (default {DEFAULTS['vec_weight']}).")
@click.option("--bm25-weight", type=float, default=None,
              help="Weight of BM25 ranks in fusion (default: the one 'train retriever' chose for a tuned embedder, "
                   f"else {DEFAULTS['bm25_weight']}).")
@click.option("--index-from", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Start from another bundle's rag.db when it used the same embedder and chunking "
                   "(unchanged documents are not embedded again).")
@json_option
def bundle(export_dir: Path, docs: tuple[Path, ...], out: Path, tar: bool, system_prompt: str | None,
           quant: str | None, n_ctx: int | None, chunk_tokens: int, overlap: int, vector_mode: str,
           vec_weight: float | None, bm25_weight: float | None, index_from: Path | None, as_json: bool) -> None:
    """Package model, embedder and RAG index for a device."""
    from slmforge.runtime.bundle.build import build_bundle

    result = build_bundle(
        export_dir, list(docs), out, tar=tar, system_prompt=system_prompt, quant=quant, n_ctx=n_ctx,
        chunk_tokens=chunk_tokens, overlap=overlap,
        index_settings={"vector_mode": vector_mode, "vec_weight": vec_weight, "bm25_weight": bm25_weight},
        progress=not as_json, index_from=index_from,
    )
    m = result.manifest
    if as_json:
        emit_json({"path": str(result.path), "model": m.model, "index": m.index, "files": len(m.files),
                   "seconds": result.seconds, "sync": result.report.to_dict()})
        return
    size = sum(f.size for f in m.files)
    click.echo(f"bundle: {result.path}  ({size / 1e6:.1f} MB, {len(m.files)} files, {result.seconds:.1f} s)")
    click.echo(f"model:  {m.model['path']} ({m.model['format']} {m.model['quant']}), profile {m.profile}")
    click.echo(f"index:  {m.index['documents']} documents, {m.index['chunks']} chunks ({result.report.summary()})")
    for warning in result.report.warnings:
        click.echo(f"warning: {warning}", err=True)
