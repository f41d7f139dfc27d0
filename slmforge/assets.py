"""Where the shipped example lives: one locator for the demo, export's default held-out text,
the embedder's check corpus, base import's tokenizer sample and the developer benches.

The examples are in the repository checkout (``examples/``), not in the wheel; ``$SLMFORGE_EXAMPLES``
points at another copy of that folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from slmforge.errors import UserError

EXAMPLE = "python-docs"  # the shipped example: an excerpt of the Python documentation and its recipes


def examples_root() -> Path:
    """The examples folder: ``$SLMFORGE_EXAMPLES``, else ``examples/`` of this checkout."""
    env = os.environ.get("SLMFORGE_EXAMPLES")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "examples"


def example_dir() -> Path:
    """The shipped example's folder (its recipes and ``docs/``)."""
    return examples_root() / EXAMPLE


def example_docs() -> Path:
    """The shipped example's documents (reST): default held-out text and check corpus."""
    return example_dir() / "docs"


def example_recipe(quick: bool = False) -> Path:
    """The shipped recipe ``slmforge demo`` runs; missing (an installed wheel, no checkout) is one line."""
    recipe = example_dir() / ("recipe-quick.yaml" if quick else "recipe.yaml")
    if not (example_dir() / "recipe.yaml").is_file():
        raise UserError(f"demo recipe not found under {examples_root()}; run the demo from a clone of the slmforge "
                        "repository or set SLMFORGE_EXAMPLES to its examples/ folder")
    return recipe
