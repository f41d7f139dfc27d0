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
from typing import Any

from slmforge.fileio import sibling
from slmforge.manifest import MANIFEST_NAME

SummaryReader = Callable[[Path], "str | None"]


def manifest_summary(name: str = MANIFEST_NAME,
                     fallback: Callable[[dict[str, Any]], str | None] | None = None) -> SummaryReader:
    """Reads ``summary`` from the manifest ``name`` inside a folder output, or from ``<stem>.slmforge.json``
    beside a file output (``qa.jsonl`` → ``qa.slmforge.json``); ``fallback`` words it from the manifest
    when the verb wrote none."""
    def read(output: Path) -> str | None:
        path = output / name if output.is_dir() else sibling(output, ".slmforge.json")
        manifest = json.loads(path.read_text(encoding="utf-8"))
        return manifest.get("summary") or (fallback(manifest) if fallback else None)

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


# Training verbs write their own summary; a manifest written before they did (an older run) gets its
# line worded here from its metrics, in the one metric vocabulary of docs/training.md.

def ppl_line(manifest: dict[str, Any]) -> str | None:
    metrics = manifest.get("metrics", {})
    before, after = metrics.get("heldout_ppl_before"), metrics.get("heldout_ppl_after")
    if before and after:
        return f"held-out ppl {before:.2f} → {after:.2f}"
    if after:
        return f"held-out ppl {after:.2f}"
    return None


def sft_line(manifest: dict[str, Any]) -> str | None:
    metrics = manifest.get("metrics", {})
    parts = [ppl_line(manifest)]
    before, after = metrics.get("heldout_answer_loss_before"), metrics.get("heldout_answer_loss_after")
    if before is not None and after is not None:
        parts.append(f"answer loss {before:.3f} → {after:.3f}")
    return ", ".join(p for p in parts if p) or None


def align_line(manifest: dict[str, Any]) -> str | None:
    metrics = manifest.get("metrics", {})
    before, after = metrics.get("heldout_margin_before"), metrics.get("heldout_margin_after")
    if before is None or after is None:
        return None
    reward = metrics.get("heldout_reward_accuracy_after")
    return (f"{metrics.get('method', '')} held-out margin {before:.2f} → {after:.2f}, "
            f"accuracy {metrics.get('heldout_accuracy_before', 0):.2f} → {metrics.get('heldout_accuracy_after', 0):.2f}"
            + (f", reward accuracy {reward:.2f}" if reward is not None else "")).strip()
