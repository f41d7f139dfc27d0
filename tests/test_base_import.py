"""`slmforge base import`: embedded SmolLM2 (integration) and bad sources (unit)."""

from __future__ import annotations

import json

import pytest

from slmforge.manifest import read_manifest
from tests.conftest import run_cli


def test_missing_source_is_one_line(tmp_path):
    proc = run_cli("base", "import", str(tmp_path / "nope.gguf"), env={"SLMFORGE_CACHE": str(tmp_path / "c")})
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "not found" in proc.stderr


def test_corrupt_gguf_is_one_line_and_leaves_nothing(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    cache = tmp_path / "cache"
    proc = run_cli("base", "import", str(bad), env={"SLMFORGE_CACHE": str(cache)})
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "broken.gguf" in proc.stderr
    leftovers = list(cache.rglob("*")) if cache.exists() else []
    assert not [p for p in leftovers if p.is_file()], leftovers


def test_wrong_file_type_is_refused(tmp_path):
    txt = tmp_path / "model.bin"
    txt.write_bytes(b"not a model")
    proc = run_cli("base", "import", str(txt), env={"SLMFORGE_CACHE": str(tmp_path / "c")})
    assert proc.returncode == 2 and ".gguf" in proc.stderr


def test_import_hf_folder_writes_checkpoint_and_manifest(tiny_checkpoint, tmp_path):
    out = tmp_path / "imported"
    proc = run_cli("base", "import", str(tiny_checkpoint), "--out", str(out), "--json",
                   env={"SLMFORGE_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["checkpoint"] == str(out) and report["cached"] is False
    manifest = read_manifest(out)
    assert manifest.stage == "base-import" and manifest.inputs[0].role == "source"
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    again = json.loads(run_cli("base", "import", str(tiny_checkpoint), "--json",
                               env={"SLMFORGE_CACHE": str(tmp_path / "cache")}).stdout)
    assert again["cached"] is True


@pytest.mark.integration
def test_embedded_import_matches_llama_cpp_and_stops(real_base):
    proc = run_cli("base", "import", "--verify", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["tokens_compared"] > 100_000
    assert report["mismatches"] == 0, report["first_mismatch"]
    assert report["stopped_at_eos"] is True
    assert not (real_base / "tokenizer.model").exists()
    cfg = json.loads((real_base / "tokenizer_config.json").read_text())
    assert cfg["add_bos_token"] is False
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(real_base)
    assert tok.eos_token == "<|im_end|>"
    assert "<|im_start|>assistant" in tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
