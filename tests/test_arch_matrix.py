"""The architecture matrix: every family in slmforge/architectures.py, from a tiny random
transformers checkpoint through base import and our GGUF writer into llama.cpp, must give the
logits transformers gives.

Tolerance: the GGUF is written in F32 and llama.cpp runs with an F32 KV cache, so what is left is
float32 summation order and llama.cpp's GELU, which it reads from an F16 table. Measured on these
models (logit std ~1.2): at most 1e-5 for Llama, Mistral, Qwen2, Qwen3 and Phi-3, 2.9e-3 for Gemma 3
(GELU); we allow 5e-3. A lost Gemma norm shift or a missing rotary permutation moves them by more than 6.
F16 weights (checked on Gemma 3) measured at most 1.4e-2 over all families; we allow 3e-2.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from slmforge.export.gguf_writer import write_gguf

from slmforge.architectures import ARCHITECTURES, for_config, for_gguf, supported_names
from slmforge.errors import UserError
from tests.tiny_checkpoint import TINY_SHAPES, build_tiny_arch_checkpoint

F32_TOLERANCE = 5e-3
F16_TOLERANCE = 3e-2

TEXTS = [
    "Exceptions are raised with raise and handled with try and except clauses.",
    # longer than Gemma 3's tiny sliding window (16 tokens), so local and global layers differ
    ("A module is a file containing Python definitions and statements. Lists are mutable sequences; "
    "tuples are immutable. Dictionaries map keys to values. How do I copy a file?"),
    "<|im_start|>user\nHow do I read a text file line by line?<|im_end|>\n<|im_start|>assistant\n",
]


def _imported(hf_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Tiny checkpoint -> `base import` of its HF folder (what a user with that model does first)."""
    from slmforge.trainer.base.importer import import_base

    monkeypatch.setenv("SLMFORGE_CACHE", str(tmp_path / "cache"))
    source = build_tiny_arch_checkpoint(tmp_path / "hf", hf_name, seed=1)
    return import_base(source, out=tmp_path / "imported").checkpoint


def _logits(checkpoint: Path, gguf_path: Path, text: str) -> tuple[np.ndarray, np.ndarray]:
    """(transformers, llama.cpp) logits at every position of ``text``."""
    import torch
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids = AutoTokenizer.from_pretrained(checkpoint)(text, add_special_tokens=False)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    with torch.no_grad():
        reference = model(torch.tensor([ids])).logits[0].numpy()
    llm = Llama(model_path=str(gguf_path), n_ctx=128, n_batch=128, logits_all=True, n_threads=2, verbose=False,
                type_k=0, type_v=0)  # F32 KV cache (GGML_TYPE_F32): the default F16 cache rounds K and V
    try:
        llm.eval(ids)
        return reference, np.array(llm.scores[: len(ids)])
    finally:
        llm.close()


def test_every_table_entry_has_a_tiny_shape():
    """Adding a family to the table without a tiny shape would silently skip its matrix row."""
    assert sorted(TINY_SHAPES) == sorted(supported_names())


def test_lookup_by_hf_name_model_type_and_gguf_name():
    """One table answers export (HF config) and base import (a GGUF's general.architecture)."""
    assert for_config({"architectures": ["Gemma3ForCausalLM"]}).gguf_arch == "gemma3"
    assert for_config({"model_type": "qwen3"}).gguf_arch == "qwen3"  # a config without architectures
    assert for_config({"architectures": ["MambaForCausalLM"], "model_type": "llama"}) is None
    assert for_config(["not", "a", "config"]) is None
    assert for_gguf("mistral").gguf_arch == "llama" and for_gguf("phi3").gguf_arch == "phi3"
    assert for_gguf("mamba") is None and for_gguf(None) is None


@pytest.mark.parametrize("hf_name", supported_names())
def test_export_matches_transformers_in_llama_cpp(hf_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    checkpoint = _imported(hf_name, tmp_path, monkeypatch)
    result = write_gguf(checkpoint, tmp_path / "model-F32.gguf", "F32", progress=False)
    expected = next(a.gguf_arch for a in ARCHITECTURES if hf_name in a.hf_names)
    assert result.architecture == expected
    for text in TEXTS:
        reference, got = _logits(checkpoint, result.path, text)
        assert np.abs(got - reference).max() < F32_TOLERANCE, (hf_name, text[:30])
        assert (got.argmax(-1) == reference.argmax(-1)).all()


def test_gemma3_f16_within_half_precision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    checkpoint = _imported("Gemma3ForCausalLM", tmp_path, monkeypatch)
    result = write_gguf(checkpoint, tmp_path / "model-F16.gguf", "F16", progress=False)
    reference, got = _logits(checkpoint, result.path, TEXTS[1])
    assert np.abs(got - reference).max() < F16_TOLERANCE


def test_gemma3_metadata_says_what_llama_cpp_needs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The sliding window, the local layers' rope base and the shifted norms are in the file."""
    from gguf import GGUFReader

    checkpoint = build_tiny_arch_checkpoint(tmp_path / "hf", "Gemma3ForCausalLM")
    out = write_gguf(checkpoint, tmp_path / "g.gguf", "F32", progress=False).path
    reader = GGUFReader(str(out))
    assert reader.get_field("gemma3.attention.sliding_window").contents() == 16
    assert reader.get_field("gemma3.rope.freq_base_swa").contents() == 10000.0
    assert reader.get_field("gemma3.rope.freq_base").contents() == 1_000_000.0
    assert reader.get_field("gemma3.attention.sliding_window_pattern") is None  # 5 local + 1 global is llama.cpp's default
    from safetensors.numpy import load_file

    hf_norm = load_file(str(checkpoint / "model.safetensors"))["model.layers.0.input_layernorm.weight"]
    gguf_norm = next(t for t in reader.tensors if t.name == "blk.0.attn_norm.weight").data
    assert np.allclose(gguf_norm, hf_norm + 1.0)


def test_unusual_gemma3_layer_pattern_is_written_out(tmp_path: Path):
    """A layer pattern other than llama.cpp's default (5 local, 1 global) is written per layer, and
    llama.cpp then computes what transformers does."""
    from gguf import GGUFReader

    checkpoint = build_tiny_arch_checkpoint(tmp_path / "hf", "Gemma3ForCausalLM", seed=1,
                                            layer_types=["sliding_attention", "full_attention"] * 3)
    out = write_gguf(checkpoint, tmp_path / "g.gguf", "F32", progress=False).path
    pattern = GGUFReader(str(out)).get_field("gemma3.attention.sliding_window_pattern")
    assert [bool(pattern.parts[i][0]) for i in pattern.data] == [True, False] * 3
    reference, got = _logits(checkpoint, out, TEXTS[1])
    assert np.abs(got - reference).max() < F32_TOLERANCE


def test_gemma3_setting_llama_cpp_cannot_run_is_refused(tmp_path: Path):
    checkpoint = build_tiny_arch_checkpoint(tmp_path / "hf", "Gemma3ForCausalLM")
    config = json.loads((checkpoint / "config.json").read_text())
    config["query_pre_attn_scalar"] = 64
    (checkpoint / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="query_pre_attn_scalar"):
        write_gguf(checkpoint, tmp_path / "g.gguf", "F32", progress=False)
    assert not list(tmp_path.glob("*g.gguf*"))


def print_matrix_table() -> None:
    """The figures docs/architectures.md quotes: ``python -m tests.test_arch_matrix``."""
    import tempfile

    print("| HF architecture | GGUF arch | max abs diff F32 | max abs diff F16 | logit std |")
    print("|---|---|---|---|---|")
    for name in supported_names():
        with tempfile.TemporaryDirectory(prefix="arch-matrix-") as tmp:
            checkpoint = build_tiny_arch_checkpoint(Path(tmp) / "hf", name, seed=1)
            diffs, spread, arch = [], [], ""
            for out_type in ("F32", "F16"):
                result = write_gguf(checkpoint, Path(tmp) / f"m-{out_type}.gguf", out_type, progress=False)
                arch = result.architecture
                pairs = [_logits(checkpoint, result.path, text) for text in TEXTS]
                diffs.append(max(float(np.abs(got - ref).max()) for ref, got in pairs))
                spread.append(min(float(ref.std()) for ref, _ in pairs))
            print(f"| {name} | {arch} | {diffs[0]:.1e} | {diffs[1]:.1e} | {spread[0]:.2f} |", flush=True)


if __name__ == "__main__":
    print_matrix_table()
