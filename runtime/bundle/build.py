"""Build a bundle from an export folder and the user's documents.

Layout: ``manifest.json``, the model (``model-<QUANT>.gguf`` or ``onnx-<quant>/``),
``embedder/``, ``rag.db`` and (for GGUF) an Ollama ``Modelfile``. Built under a
temporary name and renamed at the end; optionally packed into one ``.tar``.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmforge.runtime.answer.engine import DEFAULT_MAX_TOKENS as DEFAULT_ANSWER_TOKENS
from slmforge.runtime.answer.engine import DEFAULT_REPEAT_PENALTY
from slmforge.runtime.bundle.modelfile import render_modelfile
from slmforge.runtime.bundle.reader import RAG_DB, write_manifest
from slmforge.runtime.index.chunking import DEFAULT_MAX_TOKENS, DEFAULT_OVERLAP
from slmforge.runtime.index.embedder import MODEL_FILE, TOKENIZER_FILE, Embedder, read_embedder_info
from slmforge.runtime.index.store import DEFAULTS, INDEX_VERSION, RagIndex, embedder_settings
from slmforge.runtime.index.sync import SyncReport, sync_documents

from slmforge.errors import UserError
from slmforge.fileio import atomic_dir, atomic_write_text, sha256_file, sha256_path
from slmforge.manifest import (
    EXPORT_MANIFEST_NAME,
    BundleManifest,
    EmbedderInfo,
    ExportedArtifact,
    ExportManifest,
)
from slmforge.rag_prompt import DEFAULT_SYSTEM_PROMPT
from slmforge.schema import load_model

EMBEDDER_DIR = "embedder"
MODELFILE = "Modelfile"
DEFAULT_N_CTX = 2048


@dataclass
class BundleResult:
    path: Path
    manifest: BundleManifest
    report: SyncReport
    seconds: float


def read_export(export_dir: Path) -> ExportManifest:
    path = Path(export_dir) / EXPORT_MANIFEST_NAME
    if not path.is_file():
        raise UserError(f"{export_dir}: no {EXPORT_MANIFEST_NAME}; pass a folder written by 'slmforge export'")
    return load_model(ExportManifest, path)


def choose_artifact(export: ExportManifest, export_dir: Path, quant: str | None) -> ExportedArtifact:
    """The requested quant, else the first artifact that passed its gate (GGUF preferred), else the first."""
    if not export.artifacts:
        raise UserError(f"{export_dir}: export.json lists no model artifacts; re-run 'slmforge export'")
    if quant:
        for art in export.artifacts:
            if art.quant.lower() == quant.lower():
                return art
        have = ", ".join(a.quant for a in export.artifacts)
        raise UserError(f"{export_dir}: no artifact with quant '{quant}'; this export has: {have}")
    ranked = sorted(export.artifacts, key=lambda a: (a.gate == "fail", a.format != "gguf"))
    if ranked[0].gate == "fail":
        raise UserError(f"{export_dir}: every artifact failed its quality gate; pick one explicitly with --quant")
    return ranked[0]


def _copy_artifact(src: Path, dst: Path, expected_sha: str | None) -> None:
    if not src.exists():
        raise UserError(f"{src}: listed in export.json but missing; re-run 'slmforge export'")
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copyfile(src, dst)
    if expected_sha and sha256_path(dst) != expected_sha:
        raise UserError(f"{src}: sha256 differs from export.json (altered or truncated); re-run 'slmforge export'")


def generation_defaults(profile_max_context: int | None, n_ctx: int | None, max_tokens: int | None) -> dict[str, Any]:
    ctx = n_ctx or min(DEFAULT_N_CTX, profile_max_context or DEFAULT_N_CTX)
    return {"temperature": 0.0, "top_p": 1.0, "repeat_penalty": DEFAULT_REPEAT_PENALTY, "max_tokens": max_tokens or DEFAULT_ANSWER_TOKENS, "n_ctx": ctx,
            "stop": ["<|im_end|>"], "seed": 0}


def _profile_context(name: str) -> int | None:
    from slmforge.profiles import load_profile

    if name == "host":  # measured at run time; the runtime's default context applies
        return None
    try:
        return load_profile(name).max_context
    except UserError:
        return None


def base_model_name(lineage: list[dict[str, Any]]) -> str | None:
    """The imported base model's name (its checkpoint's ``slmforge.json``), so a bench report can set
    bundles of different models side by side; None when the lineage has no readable base import."""
    base = next((step for step in lineage if step.get("stage") == "base-import"), None)
    if base is None or not base.get("path"):
        return None
    try:
        params = json.loads((Path(base["path"]) / "slmforge.json").read_text(encoding="utf-8")).get("params", {})
    except (OSError, ValueError, AttributeError):
        return Path(base["path"]).name
    name = params.get("name") if isinstance(params, dict) else None
    return str(name) if name else Path(base["path"]).name


def build_bundle(
    export_dir: Path,
    docs: list[Path],
    out: Path,
    tar: bool = False,
    system_prompt: str | None = None,
    quant: str | None = None,
    n_ctx: int | None = None,
    max_tokens: int | None = None,
    chunk_tokens: int = DEFAULT_MAX_TOKENS,
    overlap: int = DEFAULT_OVERLAP,
    index_settings: dict[str, Any] | None = None,
    progress: bool = True,
    index_from: Path | None = None,
) -> BundleResult:
    """Build the bundle folder (or ``.tar``) at ``out``; nothing is left behind on failure."""
    started = time.perf_counter()
    export_dir = Path(export_dir)
    export = read_export(export_dir)
    artifact = choose_artifact(export, export_dir, quant)
    if export.embedder is None:
        raise UserError(f"{export_dir}: export.json has no embedder; re-run 'slmforge export' (it writes embedder/)")
    for d in docs:
        if not Path(d).exists():
            raise UserError(f"{d}: no such documents folder or file")
    out = Path(out)
    if tar and out.suffix != ".tar":
        out = out.with_name(out.name + ".tar")
    system_prompt = system_prompt or DEFAULT_SYSTEM_PROMPT
    build_target = out if not tar else Path(tempfile.mkdtemp(prefix=".bundle-", dir=out.parent.resolve())) / out.stem
    try:
        with atomic_dir(build_target) as tmp:
            model_rel = Path(artifact.path).name
            _copy_artifact(export_dir / artifact.path, tmp / model_rel, artifact.sha256)
            _copy_artifact(export_dir / export.embedder.path, tmp / EMBEDDER_DIR, None)
            embedder_info = read_embedder_info(tmp / EMBEDDER_DIR)
            embedder = Embedder(tmp / EMBEDDER_DIR)
            settings = search_settings(embedder_info, index_settings)
            if index_from is not None and _reusable_index(Path(index_from), tmp / EMBEDDER_DIR, chunk_tokens, overlap):
                shutil.copyfile(Path(index_from) / RAG_DB, tmp / RAG_DB)
                index = RagIndex(tmp / RAG_DB)
                index.set_settings(**{**{k: DEFAULTS[k] for k in SEARCH_KEYS}, **settings})
            else:
                index = RagIndex.create(tmp / RAG_DB, dim=embedder.dim, embedder=embedder_info.name, **settings)
            try:
                report = sync_documents(index, embedder, [Path(d) for d in docs], max_tokens=chunk_tokens,
                                        overlap=overlap, progress=progress)
                status = index.status()
            finally:
                index.close()
            if status.chunks == 0:
                raise UserError(f"no text found in {', '.join(map(str, docs))} (looked for .rst .md .markdown .txt)")
            generation = generation_defaults(_profile_context(export.profile), n_ctx, max_tokens)
            if artifact.format == "gguf":
                atomic_write_text(tmp / MODELFILE, render_modelfile(model_rel, export.chat_template, system_prompt,
                                                                    generation))
            manifest = BundleManifest(
                files=[],
                model={"format": artifact.format, "quant": artifact.quant, "path": model_rel,
                       "size_bytes": artifact.size_bytes, "sha256": artifact.sha256,
                       "bits_per_weight": artifact.bits_per_weight, "gate": artifact.gate,
                       "ppl_ratio": artifact.ppl_ratio, "kl_mean": artifact.kl_mean,
                       "top1_agreement": artifact.top1_agreement, "base_model": base_model_name(export.lineage)},
                embedder=EmbedderInfo.model_validate({**embedder_info.model_dump(), "path": EMBEDDER_DIR}),
                chat_template=export.chat_template,
                system_prompt=system_prompt,
                generation=generation,
                profile=export.profile,
                lineage=[*export.lineage, {"stage": "export", "path": str(export_dir.resolve()),
                                            "sha256": sha256_file(export_dir / EXPORT_MANIFEST_NAME)}],
                index=index_entry(status.to_dict(), chunk_tokens, overlap, report),
                inputs=[{"role": "export", "path": str(export_dir.resolve()),
                         "sha256": sha256_file(export_dir / EXPORT_MANIFEST_NAME)}]
                + [{"role": "docs", "path": str(Path(d).resolve()), "sha256": sha256_path(d)} for d in docs],
            )
            manifest = write_manifest(tmp, manifest)
        if tar:
            _write_tar(build_target, out)
    finally:
        if tar:
            shutil.rmtree(build_target.parent, ignore_errors=True)
    return BundleResult(out, manifest, report, round(time.perf_counter() - started, 2))


SEARCH_KEYS = ("vector_mode", "vec_weight", "bm25_weight")  # what 'bundle' sets; a reused index is reset to them


def search_settings(embedder_info: EmbedderInfo, given: dict[str, Any] | None) -> dict[str, Any]:
    """The index's search settings: what the command line gave, else what the embedder comes with (the
    BM25 weight 'train retriever' chose on validation questions), else the index's ``DEFAULTS``."""
    return {**embedder_settings(embedder_info), **{k: v for k, v in (given or {}).items() if v is not None}}


def _reusable_index(bundle_dir: Path, embedder_dir: Path, chunk_tokens: int, overlap: int) -> bool:
    """True when another bundle's rag.db was built by the same embedder with the same chunking.

    Bundles of one export run share documents and embedder; copying the index and letting the
    incremental sync skip unchanged documents saves re-embedding the whole corpus per profile.
    """
    from slmforge.runtime.bundle.reader import open_bundle

    source = open_bundle(bundle_dir, verify=True)
    same_embedder = _vector_identity(source.embedder_dir) == _vector_identity(embedder_dir)
    same_chunks = (source.manifest.index.get("chunk_tokens"), source.manifest.index.get("overlap")) == (
        chunk_tokens, overlap)
    return same_embedder and same_chunks


def _vector_identity(embedder_dir: Path) -> tuple:
    """What decides the vectors: the model and tokenizer bytes and the pooling settings (not the
    export's timing or check records in embedder.json, which differ between identical exports)."""
    info = read_embedder_info(embedder_dir)
    model_file = getattr(info, "model_file", None) or MODEL_FILE
    return (sha256_path(embedder_dir / model_file), sha256_path(embedder_dir / TOKENIZER_FILE),
            info.pooling, info.max_tokens, info.normalize, info.dim)


def index_entry(status: dict[str, Any], chunk_tokens: int, overlap: int, report: SyncReport | None) -> dict[str, Any]:
    """The manifest's ``index`` record: what the index holds and how it was chunked."""
    entry = {
        "path": RAG_DB, "version": INDEX_VERSION, "documents": status["documents"], "chunks": status["chunks"],
        "updated": status["updated"], "chunk_tokens": chunk_tokens, "overlap": overlap,
        "settings": status["settings"],
    }
    if report is not None and report.warnings:
        entry["warnings"] = report.warnings
    return entry


def _write_tar(folder: Path, out: Path) -> None:
    """Pack ``folder`` as ``out`` (members under ``<name>/``), written to a temp name then renamed."""
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent.resolve())
    os.close(fd)
    try:
        with tarfile.open(tmp, "w") as tar:
            tar.add(folder, arcname=out.stem)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
