"""The bounded queue in front of the model: admission, refusal with Retry-After, draining."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from slmforge.runtime.server_gate import GenerationGate, Overloaded


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


def test_jobs_run_one_at_a_time_on_one_thread():
    gate = GenerationGate(queue=4)
    running, peak, threads = [0], [0], set()
    lock = threading.Lock()

    def job(i: int) -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            threads.add(threading.get_ident())
        time.sleep(0.02)
        with lock:
            running[0] -= 1
        return i

    async def main() -> list[int]:
        for _ in range(5):
            gate.admit()
        try:
            return await asyncio.gather(*(gate.run(job, i) for i in range(5)))
        finally:
            for _ in range(5):
                gate.release(0.02)

    assert asyncio.run(main()) == [0, 1, 2, 3, 4]
    assert peak[0] == 1 and len(threads) == 1 and gate.inflight == 0
    gate.shutdown()
