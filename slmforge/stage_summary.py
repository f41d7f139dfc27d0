"""The line the pipeline table shows for a stage: the one-line ``summary`` its verb wrote.

Each verb says what it made in its own manifest (``summary`` in slmforge.json, export.json,
a bundle's manifest.json, eval.json), so the pipeline knows no stage's output format. Verbs whose
output is not a manifest (bench results, the answer of ``run --json``) keep the function that
words their line in their own module; the pipeline names it, and imports it only after the stage ran.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from pathlib import Path

from slmforge.fileio import sibling
from slmforge.manifest import MANIFEST_NAME

SummaryReader = Callable[[Path], "str | None"]


def manifest_summary(name: str = MANIFEST_NAME) -> SummaryReader:
    """Reads ``summary`` from the manifest ``name`` inside a folder output, or from ``<stem>.slmforge.json``
    beside a file output (``qa.jsonl`` → ``qa.slmforge.json``); None from a manifest written without one."""
    def read(output: Path) -> str | None:
        path = output / name if output.is_dir() else sibling(output, ".slmforge.json")
        manifest = json.loads(path.read_text(encoding="utf-8"))
        return manifest.get("summary")

    return read


def verb_summary(target: str) -> SummaryReader:
    """Reads a stage's line with ``module:function`` of the verb's own code, given the stage's output."""
    def read(output: Path) -> str | None:
        module_name, attr = target.split(":")
        return getattr(importlib.import_module(module_name), attr)(output)

    return read


def output_path(output: Path) -> str:
    """A report's line: where to open it."""
    return str(output / "report.md")
