"""Quantization through llama.cpp, bits per weight read back, and refusals of bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from slmforge.export.gguf_writer import write_gguf
from slmforge.export.quantize import bit_class, check_quant, inspect_gguf, quantize_gguf

from slmforge.errors import UserError


@pytest.fixture(scope="module")
def f16(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_gguf(tiny_checkpoint, tmp_path_factory.mktemp("q") / "model-F16.gguf", progress=False).path


def test_q8_0_and_q4_0_report_real_bits_per_weight(f16: Path, tmp_path: Path):
    source = inspect_gguf(f16)
    assert 15.9 < source.bits_per_weight < 16.5  # F16 matrices plus a few F32 norms
    q8 = quantize_gguf(f16, tmp_path / "model-Q8_0.gguf", "q8_0", threads=1)
    q4 = quantize_gguf(f16, tmp_path / "model-Q4_0.gguf", "Q4_0", threads=1)
    assert q8.tensor_types.get("Q8_0", 0) > 0 and q4.tensor_types.get("Q4_0", 0) > 0
    assert 8.4 < q8.bits_per_weight < 9.0
    assert q4.bits_per_weight < q8.bits_per_weight < source.bits_per_weight
    assert q8.size_bytes == (tmp_path / "model-Q8_0.gguf").stat().st_size
    assert q8.parameters == source.parameters


def test_k_quant_label_differs_from_content_on_narrow_rows(f16: Path, tmp_path: Path):
    """64-wide rows cannot hold 256-wide K-quant blocks: llama.cpp falls back, and we say so."""
    result = quantize_gguf(f16, tmp_path / "model-Q4_K_M.gguf", "Q4_K_M", threads=1)
    assert "Q4_K" not in result.tensor_types
    assert result.bits_per_weight > 4.89


def test_unknown_quant_is_refused():
    with pytest.raises(UserError, match="unknown GGUF quant 'Q9_X'"):
        check_quant("Q9_X")


def test_truncated_gguf_is_refused_without_output(f16: Path, tmp_path: Path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(f16.read_bytes()[:5000])
    with pytest.raises(UserError, match="not a readable GGUF"):
        quantize_gguf(broken, tmp_path / "out.gguf", "Q8_0", threads=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.gguf"]


def test_garbage_file_is_refused(tmp_path: Path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all" * 10)
    with pytest.raises(UserError, match="not a readable GGUF"):
        inspect_gguf(junk)


@pytest.mark.parametrize(("quant", "klass"), [("Q8_0", "8bit"), ("F16", "8bit"), ("int8", "8bit"),
                                              ("Q6_K", "mid"), ("Q5_K_M", "mid"),
                                              ("Q4_K_M", "low"), ("Q2_K", "low"), ("int4", "low")])
def test_bit_class(quant: str, klass: str):
    assert bit_class(quant) == klass
