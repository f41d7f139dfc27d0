"""One way to open SQLite with sqlite-vec loaded, on any Python.

The stdlib ``sqlite3`` of some Pythons (this one, macOS system Python) is built
without ``enable_load_extension``; there we fall back to ``pysqlite3`` (the
pysqlite3-binary wheel), which is API-compatible.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType
from typing import Any

from slmforge.errors import UserError


def sqlite_module() -> ModuleType:
    """The DB-API module to use: stdlib sqlite3 if it can load extensions, else pysqlite3."""
    import sqlite3

    if hasattr(sqlite3.Connection, "enable_load_extension"):
        return sqlite3
    try:
        from pysqlite3 import dbapi2
    except ImportError:
        raise UserError(
            "this Python's sqlite3 cannot load extensions (sqlite-vec needs that); "
            "install pysqlite3-binary (pip install pysqlite3-binary) or use a Python built with extension loading"
        ) from None
    return dbapi2


def _may_write(path: Path) -> bool:
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)


def rollback_journal(path: Path) -> None:
    """Let SQLite roll back a hot journal that a killed writer left next to ``path``, if we may write.

    A read-only connection cannot roll a hot journal back (SQLite says "attempt to write a readonly
    database"); a read-write connection does it on its first read, exactly as the next writer
    would. A journal of a writer that is still running is not hot, and this read just waits for it.
    """
    journal = Path(f"{path}-journal")
    if not (journal.is_file() and journal.stat().st_size > 0):
        return
    if not _may_write(path):
        return  # the read-only open reports it; hot_journal_advice() says what to do
    conn = sqlite_module().connect(str(path), timeout=30.0)
    try:
        conn.execute("PRAGMA schema_version").fetchone()
    finally:
        conn.close()


def hot_journal_advice(path: Path, rewrite: str) -> str | None:
    """What to tell the user when a read fails because a killed writer left ``path``-journal (else None)."""
    journal = Path(f"{path}-journal")
    if not (journal.is_file() and journal.stat().st_size > 0):
        return None
    return (f"{path}: an interrupted write left {journal.name} and this folder is read-only, so SQLite cannot "
            f"roll it back; {rewrite} where the folder is writable (or make it writable) to recover it")


def connect(path: str | os.PathLike[str], readonly: bool = False, timeout: float = 30.0) -> Any:
    """Open ``path`` with sqlite-vec loaded; returns a sqlite3-compatible Connection.

    A read-only open first lets SQLite roll back a hot journal (see ``rollback_journal``).
    """
    import sqlite_vec

    db = sqlite_module()
    if readonly:
        rollback_journal(Path(path))
        conn = db.connect(f"file:{Path(path)}?mode=ro", uri=True, timeout=timeout, check_same_thread=False)
    else:
        conn = db.connect(str(path), timeout=timeout, check_same_thread=False)
    try:
        conn.enable_load_extension(True)
        sqlite_vec.load(conn)
        conn.enable_load_extension(False)
    except Exception as exc:  # noqa: BLE001 - any load failure is an environment problem
        conn.close()
        raise UserError(f"could not load the sqlite-vec extension into SQLite ({exc}); reinstall sqlite-vec") from None
    return conn


def database_error() -> type[Exception]:
    """The DatabaseError class of the module ``connect`` uses (for except clauses)."""
    return sqlite_module().DatabaseError
