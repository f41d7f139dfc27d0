"""User-facing errors: one clear line and an exit code, never a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input or environment that they can fix.

    The CLI prints ``error: <message>`` on one line and exits with ``code``.
    Write messages as: what went wrong, where, what to do.
    """

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


class QualityGateFailed(UserError):
    """An artifact was produced but failed its quality gate (exit 3)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code=3)
