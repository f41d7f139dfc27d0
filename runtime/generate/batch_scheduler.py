"""Continuous batching over one llama.cpp context: several sequences decoded in one ``llama_decode``.

Why: one sequence at a time leaves a CPU that could advance several answers per weight pass idle
while everyone else waits in the queue. As llama.cpp's own server does (``--parallel``), one
context holds ``parallel`` sequences (``n_seq_max``, one KV stream each); a scheduler thread owns
it. Each step builds one batch: the next token of every generating sequence, then prompt tokens of
sequences still reading their prompt (chunked to the batch size), and decodes it in one call. Each
sequence samples from its own row with its own llama.cpp sampler chain (built as llama-cpp-python's
``Llama.generate`` builds it, so a greedy answer is the same token for token as decoding it alone).
A finished, cancelled or failed sequence frees its slot and removes its KV cells at once.

The kept prefix (``keep_prefix``: system prompt and template head, the same text the lone backend keeps)
lives in one more sequence, ``parallel``, prefilled once. An admitted sequence whose prompt starts with
it gets a copy of its KV cells (``llama_memory_seq_cp``) and decodes only the rest. Each sequence has its
own KV stream (``kv_unified`` off), and in this llama.cpp a copy between streams copies the whole source
stream's buffer at the next decode (``llama_kv_cache::seq_cp``: only whole ranges, ``p0 = p1 = -1``; the
destination's cells are reset first), so the copy never carries another user's cells: the prefix stream
holds the prefix only. Cells past the shared tokens are then removed (``seq_rm``) when the prompt diverges
from the prefix inside it.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

END = object()  # the end marker a job's token queue receives after its last token

# llama-cpp-python's Llama defaults, which the single-sequence path samples with
REPEAT_WINDOW = 64


@dataclass(frozen=True)
class Sampling:
    """What a request asks of the sampler (the single path's ``Llama.generate`` arguments)."""

    temperature: float = 0.0
    top_p: float = 1.0
    repeat_penalty: float = 1.0
    seed: int | None = None


@dataclass
class Job:
    """One sequence's request: its prompt, budget and sampling; tokens come back on ``tokens``."""

    prompt: list[int]
    max_tokens: int
    sampling: Sampling
    tokens: queue.Queue[Any] = field(default_factory=queue.Queue)
    finish_reason: Literal["stop", "length"] = "length"
    error: BaseException | None = None
    prefill_ms: float | None = None
    reused: int = 0  # prompt tokens copied from the kept prefix instead of decoded
    cancelled: threading.Event = field(default_factory=threading.Event)

    def stream(self) -> Iterator[int]:
        """Token ids as the scheduler samples them; raises the scheduler's error if the job failed."""
        while True:
            item = self.tokens.get()
            if item is END:
                if self.error is not None:
                    raise self.error
                return
            yield item

    def cancel(self) -> None:
        """Stop generating (client gone): the scheduler frees the slot on its next step."""
        self.cancelled.set()


@dataclass
class _Slot:
    seq: int
    job: Job
    sampler: Any
    fed: int = 0  # prompt tokens already in the KV cache
    pos: int = 0  # next position of this sequence
    generated: int = 0
    next_token: int | None = None  # sampled, not yet decoded
    prefill_started: float | None = None


def shared_length(a: list[int], b: list[int]) -> int:
    """How many leading tokens ``a`` and ``b`` have in common."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def batched_context(llm: Any, sequences: int, n_ctx_per_seq: int, threads: int, n_batch: int = 512) -> Any:
    """A second llama.cpp context over ``llm``'s loaded weights holding ``sequences`` sequences of
    ``n_ctx_per_seq`` positions, each in its own KV stream, with ``llm``'s numerics (flash attention, cache type)."""
    import llama_cpp

    params = llama_cpp.llama_context_params.from_buffer_copy(llm.context_params)  # same numerics as one sequence
    params.n_ctx = sequences * n_ctx_per_seq
    params.n_batch = params.n_ubatch = n_batch
    params.n_seq_max = sequences
    params.n_threads = params.n_threads_batch = threads
    params.kv_unified = False  # one KV stream per sequence: attention never scans other users' cells
    ctx = llama_cpp.llama_init_from_model(llm._model.model, params)
    if not ctx:
        raise RuntimeError(f"llama.cpp could not make a context for {sequences} sequences of {n_ctx_per_seq}")
    return ctx


class BatchScheduler:
    """Owns a llama.cpp context with ``parallel`` sequences (and one for the kept prefix) over a loaded model."""

    def __init__(self, llm: Any, parallel: int, n_ctx_per_seq: int, threads: int, n_batch: int = 512) -> None:
        import llama_cpp

        if parallel < 1:
            raise ValueError("parallel must be >= 1")
        self._lib = llama_cpp
        self.parallel = parallel
        self.n_ctx_per_seq = n_ctx_per_seq
        self.n_batch = max(n_batch, parallel)
        self._model = llm._model.model  # the weights the single context already mapped; no second load
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self._n_vocab = int(llama_cpp.llama_vocab_n_tokens(self._vocab))
        self.prefix_seq = parallel  # the kept prefix's sequence (and KV stream), after the answers' ones
        self._ctx = batched_context(llm, parallel + 1, n_ctx_per_seq, threads, self.n_batch)
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._pending: deque[Job] = deque()
        self._slots: dict[int, _Slot] = {}
        self._wake = threading.Condition()
        self._closed = False
        self._prefix: list[int] = []  # tokens in the prefix sequence's KV cells
        self._prefix_wanted: list[int] | None = None
        self._prefix_done = threading.Event()
        self.reused_tokens = 0  # prompt tokens copied from the kept prefix (for the status figures)
        self.steps = 0
        self.decoded_tokens = 0  # generated tokens decoded in batched steps (for the status figures)
        self.busy_s = 0.0
        self.prompt_tokens = 0  # prompt tokens decoded (the kept prefix's copies not counted)
        self.decode_only_tokens = 0  # generated tokens decoded in steps that held no prompt tokens ...
        self.decode_only_s = 0.0  # ... and the time those steps took: the batched decode rate alone
        self._thread = threading.Thread(target=self._run, name="slmforge-batch", daemon=True)
        self._thread.start()

    # -- the callers' side ------------------------------------------------------------------------

    def submit(self, prompt: list[int], max_tokens: int, sampling: Sampling) -> Job:
        """Queue a sequence; it joins a slot as soon as one is free."""
        if len(prompt) + max_tokens > self.n_ctx_per_seq:
            raise ValueError(f"{len(prompt)} prompt + {max_tokens} new tokens exceed {self.n_ctx_per_seq}")
        job = Job(prompt=list(prompt), max_tokens=max_tokens, sampling=sampling)
        with self._wake:
            if self._closed:
                raise RuntimeError("the batch scheduler is closed")
            self._pending.append(job)
            self._wake.notify()
        return job

    def keep_prefix(self, tokens: list[int]) -> int:
        """Prefill ``tokens`` once into the prefix sequence; later prompts that start with them copy its cells.
        Waits until it is in the cache (a server calls this at start, before the first request)."""
        tokens = list(tokens)[: self.n_ctx_per_seq - 1]
        with self._wake:
            if self._closed:
                raise RuntimeError("the batch scheduler is closed")
            self._prefix_done.clear()
            self._prefix_wanted = tokens
            self._wake.notify()
        self._prefix_done.wait()
        return len(self._prefix)

    def stats(self) -> dict[str, Any]:
        with self._wake:
            return {"parallel": self.parallel, "active": len(self._slots), "waiting": len(self._pending),
                    "kept_prefix": len(self._prefix), "reused_tokens": self.reused_tokens,
                    "steps": self.steps, "decoded_tokens": self.decoded_tokens, "busy_s": round(self.busy_s, 3),
                    "decode_tok_s": round(self.decoded_tokens / self.busy_s, 2) if self.busy_s else None,
                    "prompt_tokens": self.prompt_tokens, "decode_only_tokens": self.decode_only_tokens,
                    "decode_only_s": round(self.decode_only_s, 3)}

    def close(self) -> None:
        with self._wake:
            if self._closed:
                return
            self._closed = True
            self._wake.notify()
        self._thread.join()
        lib = self._lib
        lib.llama_batch_free(self._batch)
        lib.llama_free(self._ctx)
        self._ctx = None

    # -- the scheduler thread -----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._closed and not self._pending and not self._slots and self._prefix_wanted is None:
                    self._wake.wait()
                if self._closed:
                    break
                wanted, self._prefix_wanted = self._prefix_wanted, None
            if wanted is not None:
                self._prefill_prefix(wanted)
            with self._wake:
                self._admit()
            self._drop_cancelled()
            if self._slots:
                self._step()
        self._prefix_done.set()  # nobody waits for a prefix of a closed scheduler
        for slot in list(self._slots.values()):
            self._finish(slot, error=RuntimeError("the server stopped before this answer ended"))
        with self._wake:
            while self._pending:
                job = self._pending.popleft()
                job.error = RuntimeError("the server stopped before this answer started")
                job.tokens.put(END)

    def _admit(self) -> None:
        """Move waiting jobs into free sequence ids (called with the lock held)."""
        free = [s for s in range(self.parallel) if s not in self._slots]
        while free and self._pending:
            job = self._pending.popleft()
            if job.cancelled.is_set():
                job.tokens.put(END)
                continue
            seq = free.pop(0)
            slot = _Slot(seq=seq, job=job, sampler=self._sampler(job.sampling))
            self._reuse_prefix(slot)
            self._slots[seq] = slot

    def _prefill_prefix(self, tokens: list[int]) -> None:
        """Decode ``tokens`` into the prefix sequence (no logits), in batches of ``n_batch``."""
        lib, batch = self._lib, self._batch
        lib.llama_memory_seq_rm(self._memory, self.prefix_seq, -1, -1)
        self._prefix = []
        for start in range(0, len(tokens), self.n_batch):
            part = tokens[start:start + self.n_batch]
            for i, token in enumerate(part):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, start + i, 1
                batch.seq_id[i][0] = self.prefix_seq
                batch.logits[i] = False
            batch.n_tokens = len(part)
            if lib.llama_decode(self._ctx, batch) != 0:  # no kept prefix then: every prompt is decoded whole
                lib.llama_memory_seq_rm(self._memory, self.prefix_seq, -1, -1)
                break
        else:
            self._prefix = list(tokens)
        self._prefix_done.set()

    def _reuse_prefix(self, slot: _Slot) -> None:
        """Give ``slot`` the kept prefix's cells for the tokens its prompt shares with it (at least one
        prompt token is left to decode: its logits give the first answer token)."""
        shared = min(shared_length(slot.job.prompt, self._prefix), len(slot.job.prompt) - 1)
        if shared <= 0:
            return
        lib = self._lib
        lib.llama_memory_seq_cp(self._memory, self.prefix_seq, slot.seq, -1, -1)  # whole stream (see above)
        if shared < len(self._prefix):
            lib.llama_memory_seq_rm(self._memory, slot.seq, shared, -1)
        slot.fed = slot.pos = shared
        slot.job.reused = shared
        self.reused_tokens += shared

    def _drop_cancelled(self) -> None:
        for slot in [s for s in self._slots.values() if s.job.cancelled.is_set()]:
            self._finish(slot)

    def _step(self) -> None:
        """One ``llama_decode``: every generating sequence's next token, then prompt chunks of the others."""
        batch, lib = self._batch, self._lib
        n = 0
        outputs: list[tuple[int, _Slot]] = []

        def add(token: int, pos: int, seq: int, logits: bool) -> None:
            nonlocal n
            batch.token[n], batch.pos[n], batch.n_seq_id[n] = token, pos, 1
            batch.seq_id[n][0] = seq
            batch.logits[n] = logits
            n += 1

        generating = [s for s in self._slots.values() if s.next_token is not None]
        for slot in generating:
            add(slot.next_token, slot.pos, slot.seq, True)
            outputs.append((n - 1, slot))
        for slot in self._slots.values():
            if slot.next_token is not None or slot.fed >= len(slot.job.prompt) or n >= self.n_batch:
                continue
            if slot.prefill_started is None:
                slot.prefill_started = time.perf_counter()
            take = min(len(slot.job.prompt) - slot.fed, self.n_batch - n)
            for i in range(take):
                last = slot.fed + i == len(slot.job.prompt) - 1
                add(slot.job.prompt[slot.fed + i], slot.fed + i, slot.seq, last)
                if last:
                    outputs.append((n - 1, slot))
            slot.fed += take
            slot.pos = slot.fed
        batch.n_tokens = n
        started = time.perf_counter()
        status = lib.llama_decode(self._ctx, batch)
        if status != 0:  # no room in the KV cache or a failed compute: these answers cannot go on
            error = RuntimeError(f"llama.cpp could not decode a batch of {n} tokens (status {status})")
            for slot in list(self._slots.values()):
                self._finish(slot, error=error)
            return
        elapsed = time.perf_counter() - started
        self.prompt_tokens += n - len(generating)
        if generating:
            self.steps += 1
            self.decoded_tokens += len(generating)
            self.busy_s += elapsed
            if n == len(generating):
                self.decode_only_tokens += n
                self.decode_only_s += elapsed
        for index, slot in outputs:
            if slot.next_token is not None:
                slot.pos += 1
            token = lib.llama_sampler_sample(slot.sampler, self._ctx, index)
            if slot.prefill_started is not None and slot.job.prefill_ms is None:
                slot.job.prefill_ms = round((time.perf_counter() - slot.prefill_started) * 1000, 2)
            if lib.llama_vocab_is_eog(self._vocab, token):
                slot.job.finish_reason = "stop"
                self._finish(slot)
                continue
            slot.job.tokens.put(token)
            slot.generated += 1
            if slot.generated >= slot.job.max_tokens or slot.pos + 1 >= self.n_ctx_per_seq:
                slot.job.finish_reason = "length"
                self._finish(slot)
            else:
                slot.next_token = token

    def _finish(self, slot: _Slot, error: BaseException | None = None) -> None:
        """Free the slot, its KV cells and its sampler; end the job's token stream."""
        self._lib.llama_memory_seq_rm(self._memory, slot.seq, -1, -1)
        self._lib.llama_sampler_free(slot.sampler)
        with self._wake:
            self._slots.pop(slot.seq, None)
        slot.job.error = error
        slot.job.tokens.put(END)

    def _sampler(self, s: Sampling) -> Any:
        """The chain ``Llama.generate`` builds for the single path: penalties, then greedy or
        top-k → typical → top-p → min-p → temperature → seeded draw."""
        lib = self._lib
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        top_k = 0 if s.temperature > 0 else 1  # the single path's settings (backend_llamacpp)
        stages = [lib.llama_sampler_init_penalties(self._n_vocab, REPEAT_WINDOW, s.repeat_penalty, 0.0, 0.0)]
        if s.temperature == 0.0:
            stages.append(lib.llama_sampler_init_greedy())
        else:
            seed = lib.LLAMA_DEFAULT_SEED if s.seed is None else s.seed & 0xFFFFFFFF
            stages += [lib.llama_sampler_init_top_k(top_k), lib.llama_sampler_init_typical(1.0, 1),
                       lib.llama_sampler_init_top_p(s.top_p, 1), lib.llama_sampler_init_min_p(0.0, 1),
                       lib.llama_sampler_init_temp(s.temperature), lib.llama_sampler_init_dist(seed)]
        for stage in stages:
            lib.llama_sampler_chain_add(chain, stage)
        return chain

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

