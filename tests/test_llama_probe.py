"""A llama.cpp build that crashes on this CPU is one line, not a SIGSEGV of the user's process; stages
remove the partial folders a killed run left (issue 19, case 4)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from slmforge.runtime.bundle.build import build_bundle
from slmforge.runtime.generate import llama_probe

from slmforge.errors import UserError
from slmforge.fileio import atomic_dir
from tests.conftest import run_cli
from tests.runtime_fixtures import build_tiny_embedder, make_export_dir, real_gguf, small_corpus


@pytest.fixture(scope="module")
def real_bundle(tmp_path_factory: pytest.TempPathFactory, corpus_dir: Path) -> Path:
    """A bundle around the real SmolLM2 GGUF (the probe decodes with it) and a tiny embedder."""
    tmp = tmp_path_factory.mktemp("probe")
    emb = build_tiny_embedder(tmp / "embedder", [corpus_dir])
    export = make_export_dir(tmp / "export", real_gguf(), emb)
    return build_bundle(export, [small_corpus(corpus_dir, tmp / "docs")], tmp / "b", progress=False).path


def test_a_backend_that_crashes_is_one_line_and_exit_2(real_bundle: Path, tmp_path: Path):
    proc = run_cli("run", str(real_bundle), "How do I copy a file?",
                   env={"SLMFORGE_CACHE": str(tmp_path / "cache"), llama_probe.CRASH_FOR_TEST_ENV: "SIGSEGV"})
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: llama.cpp crashed on this CPU (SIGSEGV, "), lines
    assert 'rebuild it with: CMAKE_ARGS="-DGGML_NATIVE=OFF' in lines[0]
    assert "pip install --force-reinstall --no-cache-dir llama-cpp-python" in lines[0]
    assert not list((tmp_path / "cache").glob("probes/*"))  # a crash is never cached as a good build


def test_the_probe_runs_once_per_build_and_cpu(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("SLMFORGE_CACHE", str(tmp_path / "cache"))
    children = []
    real_run = subprocess.run

    def counting(argv, **kw):
        children.append(argv)
        return real_run(argv, **kw)

    monkeypatch.setattr(llama_probe.subprocess, "run", counting)
    gguf = real_gguf()
    llama_probe.ensure_llama_cpp_runs(gguf)
    llama_probe.ensure_llama_cpp_runs(gguf)
    assert len(children) == 1 and len(list((tmp_path / "cache" / "probes").iterdir())) == 1
    monkeypatch.setattr(llama_probe, "cpu_model", lambda: "Another CPU")  # the same build on another CPU
    llama_probe.ensure_llama_cpp_runs(gguf)
    assert len(children) == 2


def test_a_file_llama_cpp_cannot_load_is_no_verdict_on_the_build(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("SLMFORGE_CACHE", str(tmp_path / "cache"))
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + bytes(100))
    llama_probe.ensure_llama_cpp_runs(junk)  # no error here: the caller's own load names the bad file
    assert not (tmp_path / "cache" / "probes").exists()


def test_the_crash_message_names_signal_and_cpu(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("SLMFORGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(llama_probe.CRASH_FOR_TEST_ENV, "SIGILL")
    monkeypatch.setattr(llama_probe, "cpu_model", lambda: "Intel Xeon with AMX")
    with pytest.raises(UserError, match=r"crashed on this CPU \(SIGILL, Intel Xeon with AMX\)") as err:
        llama_probe.ensure_llama_cpp_runs(real_gguf())
    assert err.value.code == 2


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_atomic_dir_removes_partials_of_killed_runs_only(tmp_path: Path):
    out = tmp_path / "model"
    killed = tmp_path / f"model.partial-{_dead_pid()}-abcd1234"
    legacy = tmp_path / "model.partial-x1y2z3w4"  # made before partial names carried a pid
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as running:
        alive = tmp_path / f"model.partial-{running.pid}-efgh5678"
        for folder in (killed, legacy, alive):
            folder.mkdir()
            (folder / "weights.bin").write_bytes(bytes(1024))
        unrelated = tmp_path / "model2.partial-1-x"
        unrelated.mkdir()
        with atomic_dir(out) as tmp:
            (tmp / "done").write_text("ok")
        running.kill()
    assert (out / "done").is_file()
    assert not killed.exists() and not legacy.exists()
    assert alive.exists() and unrelated.exists()  # a run still going, another output


def test_a_stage_cleans_up_after_a_killed_run(tmp_path: Path, corpus_dir: Path):
    """`bundle` killed mid-write leaves `<out>.partial-<pid>-*`; its next run removes it."""
    emb = build_tiny_embedder(tmp_path / "embedder", [corpus_dir])
    export = make_export_dir(tmp_path / "export", real_gguf(), emb)
    docs = small_corpus(corpus_dir, tmp_path / "docs")
    out = tmp_path / "b"
    code = ("import os, signal, sys\n"
            "from pathlib import Path\n"
            "import slmforge.runtime.index.sync as indexing\n"
            "from slmforge.runtime.bundle.build import build_bundle\n"
            "def die(*a, **k): os.kill(os.getpid(), signal.SIGKILL)\n"
            "import slmforge.runtime.bundle.build as bb\n"
            "bb.sync_documents = die\n"
            "build_bundle(Path(sys.argv[1]), [Path(sys.argv[2])], Path(sys.argv[3]), progress=False)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(export), str(docs), str(out)], check=False,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert proc.returncode < 0
    leftovers = list(tmp_path.glob("b.partial-*"))
    assert len(leftovers) == 1 and any(leftovers[0].rglob("*.gguf"))  # a model-sized folder stays behind
    build_bundle(export, [docs], out, progress=False)
    assert (out / "manifest.json").is_file() and not list(tmp_path.glob("b.partial-*"))
