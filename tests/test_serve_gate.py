"""The bounded queue in front of the model: admission, refusal with Retry-After, draining."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from slmforge.runtime.serve.gate import GenerationGate, Overloaded


def test_one_runs_queue_waits_rest_refused():
    gate = GenerationGate(queue=2)
    for _ in range(3):
        gate.admit()
    with pytest.raises(Overloaded) as refused:
        gate.admit()
    assert refused.value.status == 429 and refused.value.retry_after_s >= 1
    gate.release(0.5)
    gate.admit()  # a slot freed up
    gate.draining = True
    with pytest.raises(Overloaded) as draining:
        gate.admit()
    assert draining.value.status == 503


def _peak_concurrency(gate: GenerationGate, jobs: int) -> tuple[int, int]:
    """(most jobs running at once, threads that ran them) for ``jobs`` admitted jobs."""
    running, peak, threads = [0], [0], set()
    lock = threading.Lock()

    def job(i: int) -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            threads.add(threading.get_ident())
        time.sleep(0.2)  # long enough that every free worker has started one
        with lock:
            running[0] -= 1
        return i

    async def main() -> list[int]:
        for _ in range(jobs):
            gate.admit()
        try:
            return await asyncio.gather(*(gate.run(job, i) for i in range(jobs)))
        finally:
            for _ in range(jobs):
                gate.release(0.02)

    assert asyncio.run(main()) == list(range(jobs))
    assert gate.inflight == 0
    gate.shutdown()
    return peak[0], len(threads)


def test_jobs_run_one_at_a_time_on_one_thread():
    assert _peak_concurrency(GenerationGate(queue=4), 5) == (1, 1)


def test_parallel_workers_run_that_many_at_once_and_admit_queue_more():
    """``serve --parallel 3``: three jobs run at once (the batched backend decodes them together), the queue
    waits behind them, and only beyond both is a request refused."""
    gate = GenerationGate(queue=2, workers=3)
    for _ in range(5):
        gate.admit()
    with pytest.raises(Overloaded) as refused:
        gate.admit()
    assert "(2 waiting)" in str(refused.value)
    for _ in range(5):
        gate.release()
    peak, threads = _peak_concurrency(GenerationGate(queue=2, workers=3), 5)
    assert peak == 3 and threads == 3
