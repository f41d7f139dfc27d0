"""Embed a few texts in a short-lived child process, so the caller never maps onnxruntime.

``slmforge run`` answers one question: the embedder (onnxruntime, its session, ~45 MB resident plus
~30 MB of libraries) is needed only before the model loads. Run in a forked child that exits before
the model's pages come in, it never adds to the process's peak (issue #18 point 4). Where ``fork``
does not exist the texts are embedded in this process.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import numpy as np

from slmforge.errors import UserError


def _child(conn: Any, embedder_dir: str, threads: int | None, texts: list[str]) -> None:
    try:
        from slmforge.runtime.index.embedder import Embedder

        conn.send(("ok", Embedder(Path(embedder_dir), threads=threads).embed(texts)))
    except UserError as exc:
        conn.send(("user-error", str(exc)))
    except Exception as exc:  # noqa: BLE001 - anything else crosses back as one line, not a lost child
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def embed_in_child(embedder_dir: Path, texts: list[str], threads: int | None = None) -> np.ndarray:
    """``Embedder(embedder_dir).embed(texts)``, computed in a forked child that exits before this returns."""
    if "fork" not in multiprocessing.get_all_start_methods():
        from slmforge.runtime.index.embedder import Embedder

        return Embedder(embedder_dir, threads=threads).embed(texts)
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, str(embedder_dir), threads, texts), daemon=True)
    proc.start()
    child.close()
    try:
        kind, value = parent.recv()
    except EOFError:
        proc.join()
        raise UserError(f"{embedder_dir}: the embedder process died (exit code {proc.exitcode}); "
                        "run again, or check the embedder folder") from None
    finally:
        parent.close()
    proc.join()
    if kind == "ok":
        return value
    if kind == "user-error":
        raise UserError(value)
    raise RuntimeError(f"embedding in a child process failed: {value}")
