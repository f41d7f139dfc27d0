"""Reuse what an earlier export of the same checkpoint already built and measured.

A pipeline exports one model for several profiles; most of them pick the same quantization,
and converting, quantizing and scoring it again gives the same bytes and the same figures.
An earlier export folder is trusted only for artifacts whose source checkpoint, held-out
text, window and token budget all match, and whose file still has the recorded sha256.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from slmforge.errors import UserError
from slmforge.fileio import sha256_path
from slmforge.manifest import EXPORT_MANIFEST_NAME, EmbedderInfo, ExportedArtifact, ExportManifest
from slmforge.schema import load_model


@dataclass
class PriorExport:
    """An earlier export folder and its manifest."""

    folder: Path
    manifest: ExportManifest

    @classmethod
    def open(cls, folder: Path) -> PriorExport:
        path = Path(folder) / EXPORT_MANIFEST_NAME
        if not path.is_file():
            raise UserError(f"{folder}: no {EXPORT_MANIFEST_NAME} here; --reuse takes an earlier export folder")
        return cls(Path(folder), load_model(ExportManifest, path))

    def matches(self, source_sha: str, heldout_key: dict) -> bool:
        """Same checkpoint and the same gate inputs: its figures are this export's figures."""
        held = self.manifest.heldout or {}
        return self.manifest.source.sha256 == source_sha and all(held.get(k) == v for k, v in heldout_key.items())

    def artifact(self, fmt: str, quant: str) -> ExportedArtifact | None:
        for art in self.manifest.artifacts:
            if art.format == fmt and art.quant.upper() == quant.upper() and art.gate != "skipped":
                return art
        return None

    def embedder(self) -> EmbedderInfo | None:
        info = self.manifest.embedder
        return info if info is not None and (self.folder / info.path).is_dir() else None


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard link when the file system allows (no extra disk), else copy; folders are copied."""
    if src.is_dir():
        shutil.copytree(src, dst)
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def take_artifact(prior: PriorExport, art: ExportedArtifact, dst: Path) -> bool:
    """Bring ``art`` into ``dst`` if its file is intact; False (nothing written) otherwise."""
    src = prior.folder / art.path
    if not src.exists() or sha256_path(src) != art.sha256:
        return False
    link_or_copy(src, dst)
    return True
