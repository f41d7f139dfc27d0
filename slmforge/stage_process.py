"""Run one pipeline stage (`slmforge <verb> ...`) in its own process, without paying torch's import each time.

Every stage still gets a fresh process — a crash kills only it, and the memory a training stage
used goes back to the OS when it ends — but on Unix the process is forked from a warm server
(multiprocessing's forkserver) that imported torch, transformers and peft once. Starting a
training verb from a cold interpreter costs about 6 s on 2 cores; a pipeline runs nine such
stages. Where forkserver does not exist (Windows) the stage is a plain `python -m slmforge.cli`.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

# Heavy modules more than one stage imports; the server imports them once, before its first fork.
PRELOAD = ["slmforge.stage_preload"]

_context: multiprocessing.context.BaseContext | None = None


def _forkserver() -> multiprocessing.context.BaseContext | None:
    global _context
    if _context is None and "forkserver" in multiprocessing.get_all_start_methods():
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def run_stage(argv: list[str], log_path: Path, stdout_path: Path | None = None) -> int:
    """Run ``slmforge ARGV`` with stderr (and stdout unless ``stdout_path``) appended to ``log_path``;
    return its exit code. The caller owns ``log_path`` and may tail it while this blocks."""
    context = _forkserver()
    if context is None:
        return _run_cold(argv, log_path, stdout_path)
    proc = context.Process(target=_stage_main, args=(argv, str(log_path), str(stdout_path) if stdout_path else None),
                           name=f"slmforge {argv[0] if argv else ''}")
    proc.start()
    try:
        proc.join()
    except BaseException:  # Ctrl-C or SIGTERM of the pipeline: its stage must not go on training alone
        stop(proc)
        raise
    return proc.exitcode if proc.exitcode is not None else 1


def stop(proc: multiprocessing.process.BaseProcess, grace_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``: a stage writes atomically, so nothing half-done stays."""
    proc.terminate()
    proc.join(grace_s)
    if proc.is_alive():
        proc.kill()
        proc.join()


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit in the main thread, so ``run_stage`` stops the running stage first
    (by default SIGTERM ends Python at once and the forked stage, not in its process group, runs on)."""
    import signal

    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def _run_cold(argv: list[str], log_path: Path, stdout_path: Path | None) -> int:
    with open(log_path, "a", encoding="utf-8") as log, \
            open(stdout_path or os.devnull, "w", encoding="utf-8") as out:
        return subprocess.run([sys.executable, "-m", "slmforge.cli", *argv], stdout=out if stdout_path else log,
                              stderr=log if stdout_path else subprocess.STDOUT, check=False).returncode


def _stage_main(argv: list[str], log_path: str, stdout_path: str | None) -> None:
    """In the forked child: point fds 1 and 2 at the stage's files, then run the CLI as `slmforge` would."""
    log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    out_fd = os.open(stdout_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644) if stdout_path else log_fd
    os.dup2(out_fd, 1)
    os.dup2(log_fd, 2)
    sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
    sys.argv = ["slmforge", *argv]
    from slmforge.cli import main

    try:
        main(argv)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
