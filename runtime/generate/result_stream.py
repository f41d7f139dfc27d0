"""The stream every level of the answer path hands back: text deltas, then one result.

Why one object: the result travels with the stream that produced it. Nothing is left on the
backend, the engine or the service for a caller to pick up afterwards, so two answers in flight
never read each other's result, and each level wraps the one below the same way (backend →
``GenerationResult``, engine and answering service → ``Answer``).
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import Generic, TypeVar

R = TypeVar("R")


class ResultStream(Generic[R]):
    """Iterate for text deltas; read ``result`` once the iteration has ended.

    Wraps a generator that yields the deltas and ``return``s the result. ``close()`` stops it
    early (the generator's ``finally`` blocks run, as with a plain generator)."""

    def __init__(self, deltas: Generator[str, None, R | None]) -> None:
        self._deltas = deltas
        self._result: R | None = None

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        try:
            return next(self._deltas)
        except StopIteration as end:
            self._result = end.value
            raise

    def close(self) -> None:
        self._deltas.close()

    @property
    def result(self) -> R:
        """What the stream produced; an error before it has ended (or when it was stopped without one)."""
        if self._result is None:
            raise RuntimeError("the stream has no result: read it to the end first (it may have been cancelled)")
        return self._result

    def drain(self) -> R:
        """Read the rest of the stream and return its result (for callers that want no deltas)."""
        for _ in self:
            pass
        return self.result
