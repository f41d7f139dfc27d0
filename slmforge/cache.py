"""The user cache ($SLMFORGE_CACHE or ~/.cache/slmforge): results that depend only on their inputs.

Entries are folders named after the sha256 of what made them, so a stale entry is never hit;
deleting the cache only costs time.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(kind: str) -> Path:
    """The folder for one kind of entry (``base``, ``embedder``…); not created here."""
    return Path(os.environ.get("SLMFORGE_CACHE", Path.home() / ".cache" / "slmforge")) / kind
