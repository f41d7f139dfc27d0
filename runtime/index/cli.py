"""`slmforge index add|remove|status`: keep a bundle's index in step with your documents."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import click
from slmforge.runtime.bundle.reader import RAG_DB, Bundle, open_bundle, write_manifest

from slmforge.errors import UserError
from slmforge.output import emit_json, format_table, json_option

bundle_arg = click.argument("bundle_path", metavar="BUNDLE", type=click.Path(path_type=Path))


def _open_for_update(path: Path) -> Bundle:
    """A bundle folder whose files other than rag.db verify (rag.db may be mid-update from a killed run)."""
    if path.is_file():
        raise UserError(f"{path}: a .tar bundle is read-only; index a bundle folder and re-pack it with --tar")
    return open_bundle(path, verify=True, skip_verify=(RAG_DB,))


def _refresh_manifest(bundle: Bundle, index_status: dict, report: dict | None = None) -> None:
    """Record the index's new state and rag.db's new hash in manifest.json."""
    entry = dict(bundle.manifest.index)
    entry.update(documents=index_status["documents"], chunks=index_status["chunks"],
                 updated=index_status["updated"] or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    if report and report.get("warnings"):
        entry["warnings"] = sorted(set(entry.get("warnings", [])) | set(report["warnings"]))
    write_manifest(bundle.root, bundle.manifest.model_copy(update={"index": entry}))


@click.group("index")
def index() -> None:
    """Add, remove and inspect documents in a bundle's index."""


@index.command("add")
@bundle_arg
@click.argument("docs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--keep-missing", is_flag=True, help="Do not remove indexed documents that vanished from DOCS folders.")
@json_option
def add(bundle_path: Path, docs: tuple[Path, ...], keep_missing: bool, as_json: bool) -> None:
    """Index new and changed documents; skip unchanged ones (by sha256); drop deleted ones.

    Each document is written in its own transaction: if interrupted, re-run to finish.
    """
    from slmforge.runtime.index.embedder import Embedder
    from slmforge.runtime.index.store import RagIndex
    from slmforge.runtime.index.sync import sync_documents

    bundle = _open_for_update(bundle_path)
    entry = bundle.manifest.index
    embedder = Embedder(bundle.embedder_dir)
    with RagIndex(bundle.rag_db) as rag:
        rag.require_embedder(embedder.info.name, str(bundle.rag_db))
        report = sync_documents(rag, embedder, list(docs), remove_missing=not keep_missing,
                                max_tokens=int(entry.get("chunk_tokens", 200)), overlap=int(entry.get("overlap", 32)),
                                progress=not as_json)
        status = rag.status().to_dict()
    _refresh_manifest(bundle, status, report.to_dict())
    if as_json:
        emit_json({**report.to_dict(), "documents": status["documents"], "chunks": status["chunks"]})
    else:
        click.echo(f"{report.summary()}; index now holds {status['documents']} documents, {status['chunks']} chunks")


@index.command("remove")
@bundle_arg
@click.argument("docs", nargs=-1, required=True)
@json_option
def remove(bundle_path: Path, docs: tuple[str, ...], as_json: bool) -> None:
    """Remove documents: by path on disk, by indexed source name, or every name under a prefix ending in '/'."""
    from slmforge.runtime.index.store import RagIndex
    from slmforge.runtime.index.sync import remove_documents

    bundle = _open_for_update(bundle_path)
    with RagIndex(bundle.rag_db) as rag:
        removed = remove_documents(rag, list(docs))
        status = rag.status().to_dict()
    _refresh_manifest(bundle, status)
    if as_json:
        emit_json({"removed": removed, "documents": status["documents"], "chunks": status["chunks"]})
    else:
        click.echo(f"removed {len(removed)} documents; index now holds {status['documents']} documents, "
                   f"{status['chunks']} chunks")


@index.command("status")
@bundle_arg
@json_option
def status(bundle_path: Path, as_json: bool) -> None:
    """What the index holds, per document, and whether the manifest is up to date."""
    from slmforge.runtime.bundle.reader import verify_files
    from slmforge.runtime.index.store import RagIndex

    bundle = open_bundle(bundle_path, verify=False)
    with RagIndex(bundle.rag_db, readonly=True) as rag:
        st = rag.status(with_sources=True).to_dict()
    try:
        verify_files(bundle.root, bundle.manifest)
        st["manifest"] = "verified"
    except UserError as exc:
        st["manifest"] = f"out of date: {exc}"
    if as_json:
        emit_json(st)
        return
    click.echo(f"index: {st['path']}  {st['documents']} documents, {st['chunks']} chunks, "
               f"{st['size_bytes'] / 1e6:.1f} MB, updated {st['updated']}")
    click.echo(f"embedder: {st['embedder']} ({st['dim']} dims); search: {st['settings']}")
    click.echo(f"manifest: {st['manifest']}")
    rows = [(s["source"], s["chunks"], s["sha256"][:12], s["warning"] or "") for s in st["sources"]]
    click.echo(format_table(["source", "chunks", "sha256", "warning"], rows))
