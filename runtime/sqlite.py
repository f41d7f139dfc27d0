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


def connect(path: str | os.PathLike[str], readonly: bool = False, timeout: float = 30.0) -> Any:
    """Open ``path`` with sqlite-vec loaded; returns a sqlite3-compatible Connection."""
    import sqlite_vec

    db = sqlite_module()
    if readonly:
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
