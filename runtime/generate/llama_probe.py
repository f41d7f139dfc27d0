"""Try a llama.cpp build on this CPU once, in a child process, so a native crash becomes one line.

A llama.cpp build can hold code this CPU advertises but cannot run (AMX tiles on a Xeon under a
hypervisor that does not enable them): the first decode dies with SIGSEGV and takes the user's
process, and every export, run, serve and bench with it. Before the first load of a build on a
CPU, the model about to be loaded is loaded in a child process and decodes a few tokens; if the
child is killed by a signal, the caller gets a ``UserError`` that names the signal and the CPU and
says how to rebuild. A good result is cached per library build (path, size and mtime of every
llama.cpp shared library) and CPU (model name and flags) in the user cache, so
later loads pay one small file read.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
from pathlib import Path

from slmforge.cache import cache_dir
from slmforge.errors import UserError
from slmforge.fileio import atomic_write_json
from slmforge.profiles import cpu_flags, cpu_model

# The flags `make setup` builds with (Makefile LLAMA_CMAKE_ARGS): no -march=native, no AVX-512/AMX.
PORTABLE_CMAKE_ARGS = {
    "x86_64": "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF "
              "-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF",
}
DEFAULT_CMAKE_ARGS = "-DGGML_NATIVE=OFF"
PROBE_TIMEOUT_S = 300.0
# Test-only: the child kills itself with this signal (e.g. SIGSEGV) instead of loading the model.
CRASH_FOR_TEST_ENV = "SLMFORGE_LLAMA_PROBE_CRASH_FOR_TEST"
_PROBE_TEXT = "The probe checks that this build of llama.cpp can decode on this processor."


def rebuild_command() -> str:
    args = PORTABLE_CMAKE_ARGS.get(platform.machine().lower(), DEFAULT_CMAKE_ARGS)
    return f'CMAKE_ARGS="{args}" pip install --force-reinstall --no-cache-dir llama-cpp-python'


def build_fingerprint() -> dict[str, object] | None:
    """What identifies the installed llama.cpp build, without importing it (None: not installed)."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        return None
    package = Path(spec.origin).parent
    libraries = sorted(p for pattern in ("*.so*", "*.dylib", "*.dll") for folder in (package, package / "lib")
                       for p in folder.glob(pattern) if p.is_file())
    return {"package": str(package),
            "libraries": [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in libraries]}


def _probe_record(build: dict[str, object]) -> tuple[Path, dict[str, object]]:
    record = {"build": build, "cpu": cpu_model(), "machine": platform.machine(), "flags": sorted(cpu_flags())}
    key = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:20]
    return cache_dir("probes") / f"llama_cpp-{key}.json", record


def ensure_llama_cpp_runs(model_path: Path) -> None:
    """Raise a one-line UserError if llama.cpp crashes decoding ``model_path`` on this CPU (probed once).

    A child that fails without a signal (a file llama.cpp cannot load) is not a verdict on the
    build: the caller's own load reports that file's problem, and nothing is cached.
    """
    build = build_fingerprint()
    if build is None:
        return
    marker, record = _probe_record(build)
    if marker.is_file():
        return
    try:
        proc = subprocess.run([sys.executable, "-m", "slmforge.runtime.generate.llama_probe", str(model_path)],
                              capture_output=True, timeout=PROBE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return  # inconclusive (a very slow load): try again next time
    if proc.returncode < 0:
        raise UserError(f"llama.cpp crashed on this CPU ({_signal_name(-proc.returncode)}, {record['cpu']}); "
                        f"rebuild it with: {rebuild_command()}")
    if proc.returncode == 0:
        with contextlib.suppress(OSError):  # a cache that cannot be written only costs a probe next time
            atomic_write_json(marker, {**record, "model": str(model_path), "result": "ok"})


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _decode_once(model_path: str) -> None:
    """The child: load the model as the runtime does and decode a short batch and one more token."""
    crash = os.environ.get(CRASH_FOR_TEST_ENV)
    if crash:
        os.kill(os.getpid(), getattr(signal, crash))
    from llama_cpp import Llama

    llm = Llama(model_path=model_path, n_ctx=64, n_batch=64, verbose=False)
    tokens = llm.tokenize(_PROBE_TEXT.encode(), add_bos=True)[:32]
    llm.eval(tokens)  # a batch: the matrix-matrix kernels (where the AMX fault was)
    llm.eval([int(llm.sample(top_k=1))])  # one token: the matrix-vector kernels
    llm.close()


if __name__ == "__main__":
    _decode_once(sys.argv[1])
