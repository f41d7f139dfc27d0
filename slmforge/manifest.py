"""The artifact manifest every stage writes next to its output (``slmforge.json``).

Files are the interfaces between stages; the manifest says what made a file,
from which inputs (with sha256), with which settings, and what it measured.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from slmforge import __version__
from slmforge.errors import UserError
from slmforge.fileio import atomic_write_json, sha256_path
from slmforge.schema import load_model

MANIFEST_NAME = "slmforge.json"
SCHEMA_VERSION = 1

ArtifactKind = Literal["checkpoint", "dataset", "export", "bundle", "report"]


class InputRef(BaseModel):
    """One input of a stage, pinned by content hash."""

    model_config = ConfigDict(extra="allow")
    role: str = Field(description="what the input is to the stage, e.g. 'base', 'data', 'source'")
    path: str
    sha256: str


class ArtifactManifest(BaseModel):
    """What a stage wrote: ``slmforge.json`` inside a checkpoint/dataset/export directory."""

    model_config = ConfigDict(extra="allow")
    schema_version: int = SCHEMA_VERSION
    kind: ArtifactKind
    stage: str
    created: str = Field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    tool: str = f"slmforge {__version__}"
    inputs: list[InputRef] = Field(default_factory=list)
    params: dict[str, Any] = Field(default_factory=dict)
    seed: int | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    parent: str | None = Field(default=None, description="path of the checkpoint this one was made from")
    lineage: list[dict[str, Any]] = Field(
        default_factory=list, description="ancestors, oldest first: {stage, path, sha256}"
    )
    duration_s: float | None = None
    summary: str | None = Field(
        default=None, description="one line a person reads first (the pipeline table shows it): what the stage made or measured"
    )

    def write(self, directory: str | Path) -> Path:
        path = Path(directory) / MANIFEST_NAME
        atomic_write_json(path, self.model_dump(mode="json"))
        return path


def input_ref(role: str, path: str | Path) -> InputRef:
    """Hash ``path`` (file or directory) and return an input record for it."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: input not found")
    return InputRef(role=role, path=str(p.resolve()), sha256=sha256_path(p))


def read_manifest(directory: str | Path) -> ArtifactManifest:
    """Read ``slmforge.json`` from an artifact directory (clear error if absent or bad)."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise UserError(f"{directory}: no {MANIFEST_NAME} here; is this an slmforge artifact directory?")
    return load_model(ArtifactManifest, path)


def lineage_of(parent_dir: str | Path | None) -> list[dict[str, Any]]:
    """The parent's lineage plus the parent itself, for a child manifest."""
    if parent_dir is None:
        return []
    parent = Path(parent_dir)
    path = parent / MANIFEST_NAME
    chain: list[dict[str, Any]] = []
    if path.is_file():
        m = read_manifest(parent)
        chain = list(m.lineage)
        chain.append({"stage": m.stage, "path": str(parent.resolve()), "sha256": sha256_path(parent)})
    return chain


# ---------------------------------------------------------------------------
# export.json: what the export stage wrote (read by `bundle`, `bench`, `pipeline`)

EXPORT_MANIFEST_NAME = "export.json"


class ExportedArtifact(BaseModel):
    """One compiled model file or folder in an export directory."""

    model_config = ConfigDict(extra="allow")
    format: Literal["gguf", "onnx"]
    quant: str = Field(description="e.g. F16, Q8_0, Q4_K_M for GGUF; fp32, int8, int4 for ONNX")
    path: str = Field(description="relative to the export directory")
    size_bytes: int
    sha256: str
    bits_per_weight: float | None = None
    est_memory_bytes: int | None = None
    est_decode_tok_s: float | None = None
    ppl_source: float | None = None
    ppl_exported: float | None = None
    ppl_ratio: float | None = None
    kl_mean: float | None = None
    top1_agreement: float | None = None
    gate: Literal["pass", "fail", "skipped"] = "skipped"
    reason: str | None = Field(default=None, description="why this quant was chosen, or why the gate failed")


class EmbedderInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    path: str = Field(description="folder relative to the export/bundle directory")
    name: str = "all-MiniLM-L6-v2"
    dim: int = 384
    max_tokens: int = 256
    pooling: Literal["mean", "cls"] = "mean"
    normalize: bool = True
    quant: str = "int8"
    bm25_weight: float | None = Field(
        default=None, ge=0, allow_inf_nan=False,
        description="BM25 fusion weight 'train retriever' chose on validation questions; None: the index default")


class ExportManifest(BaseModel):
    model_config = ConfigDict(extra="allow")
    schema_version: int = SCHEMA_VERSION
    kind: Literal["export"] = "export"
    created: str = Field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    tool: str = f"slmforge {__version__}"
    profile: str
    source: InputRef
    lineage: list[dict[str, Any]] = Field(default_factory=list)
    chat_template: str | None = None
    bos_token: str | None = None
    eos_token: str | None = None
    artifacts: list[ExportedArtifact] = Field(default_factory=list)
    embedder: EmbedderInfo | None = None
    tool_versions: dict[str, str] = Field(default_factory=dict)
    duration_s: float | None = None
    summary: str | None = Field(default=None, description="one line: the files chosen per profile and their gate")


# ---------------------------------------------------------------------------
# manifest.json: a bundle's signed file list (read by the runtime on open)

BUNDLE_MANIFEST_NAME = "manifest.json"
BUNDLE_FORMAT_VERSION = 1
SUPPORTED_BUNDLE_FORMATS = (BUNDLE_FORMAT_VERSION,)  # the format versions this slmforge can open


class BundleFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str
    size: int
    sha256: str


class BundleManifest(BaseModel):
    model_config = ConfigDict(extra="allow")
    format_version: int = BUNDLE_FORMAT_VERSION
    created: str = Field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    tool: str = f"slmforge {__version__}"
    files: list[BundleFile]
    model: dict[str, Any] = Field(description="{format, quant, path, ...} of the model artifact")
    embedder: EmbedderInfo
    chat_template: str | None = None
    system_prompt: str
    generation: dict[str, Any] = Field(default_factory=dict, description="temperature, top_p, max_tokens, stop, n_ctx")
    profile: str
    lineage: list[dict[str, Any]] = Field(default_factory=list)
    index: dict[str, Any] = Field(default_factory=dict, description="chunks, documents, version, updated")
    summary: str | None = Field(default=None, description="one line: the model's quant and what the index holds")
