"""`slmforge run` embeds its question in a child process: same vectors, errors as one line, no onnxruntime here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from slmforge.runtime.answer.embed_child import embed_in_child
from slmforge.runtime.bundle.reader import open_bundle
from slmforge.runtime.index.embedder import Embedder

from slmforge.errors import UserError
from tests.serve_helpers import tiny_bundle_path


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bundle_path(tmp_path_factory)


def test_child_embeds_exactly_as_this_process_does(tiny_bundle: Path):
    embedder_dir = open_bundle(tiny_bundle).embedder_dir
    texts = ["How do I copy a file?", "What is a lambda?"]
    assert np.array_equal(embed_in_child(embedder_dir, texts, threads=1), Embedder(embedder_dir, threads=1).embed(texts))


def test_a_broken_embedder_is_one_line(tmp_path: Path):
    with pytest.raises(UserError, match="embedder"):
        embed_in_child(tmp_path, ["question"], threads=1)


def test_one_shot_answer_never_maps_onnxruntime(tiny_bundle: Path):
    code = f"""
import sys
from slmforge.runtime.bundle.reader import open_bundle
from slmforge.runtime.answer.engine import Engine
with Engine(open_bundle({str(tiny_bundle)!r}), threads=1, one_shot=True) as engine:
    answer = engine.answer("How do I copy a file?", k=2, max_tokens=4)
assert answer.citations, answer
print(sorted(m for m in sys.modules if m.split(".")[0] in ("onnxruntime", "fastapi", "uvicorn")))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.strip() == "[]", out.stdout
