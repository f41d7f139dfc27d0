"""A bounded queue in front of one model instance.

``workers`` generations run at a time (1 unless the model decodes several sequences in one
batch: ``serve --parallel N``); up to ``queue`` more may wait. Beyond that a request is refused at once with a Retry-After estimate
instead of waiting forever, and while the server drains for shutdown every new request
is refused.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class Overloaded(Exception):
    """The queue is full (HTTP 429) or the server is draining (HTTP 503)."""

    def __init__(self, status: int, retry_after_s: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s


class GenerationGate:
    """Admission control plus the worker threads that run a model's jobs."""

    def __init__(self, queue: int, name: str = "model", workers: int = 1) -> None:
        if queue < 0:
            raise ValueError("queue must be >= 0")
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.workers = workers
        self.limit = queue + workers  # the running ones plus the waiting ones
        self.name = name
        self.inflight = 0
        self.draining = False
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"slmforge-{name}")
        self._mean_s = 1.0  # running estimate of one job's duration, for Retry-After

    def admit(self) -> None:
        """Take a slot or raise ``Overloaded``; the caller must ``release`` after the job ends."""
        with self._lock:
            if self.draining:
                raise Overloaded(503, 5, "the server is shutting down; retry on another instance or later")
            if self.inflight >= self.limit:
                wait = max(1, math.ceil(self._mean_s * self.inflight / self.workers))
                raise Overloaded(429, wait, f"the {self.name} queue is full ({self.limit - self.workers} waiting); "
                                            f"retry after {wait} s")
            self.inflight += 1

    def release(self, duration_s: float | None = None) -> None:
        with self._lock:
            self.inflight = max(0, self.inflight - 1)
            if duration_s is not None:
                self._mean_s = 0.8 * self._mean_s + 0.2 * duration_s

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on the model's thread (the caller already holds a slot)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Start ``fn`` on the model's thread without waiting (used by streaming)."""
        return self._executor.submit(fn, *args)

    def stats(self) -> dict[str, Any]:
        return {"inflight": self.inflight, "limit": self.limit, "workers": self.workers, "draining": self.draining,
                "mean_job_s": round(self._mean_s, 3)}

    def shutdown(self) -> None:
        self.draining = True
        self._executor.shutdown(wait=True, cancel_futures=True)
