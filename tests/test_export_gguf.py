"""GGUF writer on tiny models: llama.cpp must read back the same tokenizer and the same model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from slmforge.export.gguf_writer import detect_pre_tokenizer, rotary_permute, write_gguf

from slmforge.errors import UserError

CORPUS_SAMPLE = ["faq/programming.rst", "tutorial/controlflow.rst", "library/functions.rst"]


@pytest.fixture(scope="module")
def tiny_gguf(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gguf") / "model-F16.gguf"
    write_gguf(tiny_checkpoint, out, "F16", source_sha256="ab" * 32, progress=False)
    return out


def _llama(path: Path, n_ctx: int = 512):
    from llama_cpp import Llama

    return Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, n_threads=2, verbose=False)


def _both_logits(model, gguf_path: Path, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(transformers, llama.cpp) logits for every position of ``ids``."""
    import torch

    with torch.no_grad():
        reference = model(torch.tensor([ids])).logits[0].numpy()
    llm = _llama(gguf_path)
    try:
        llm.eval(ids)
        return reference, np.array(llm.scores[: len(ids)])
    finally:
        llm.close()


def test_tokenization_equals_hf_on_corpus(tiny_checkpoint: Path, tiny_gguf: Path, corpus_dir: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    llm = _llama(tiny_gguf)
    try:
        for rel in CORPUS_SAMPLE:
            text = (corpus_dir / rel).read_text(encoding="utf-8")[:20000]
            hf = tokenizer(text, add_special_tokens=False)["input_ids"]
            cpp = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
            assert cpp == hf, rel
        chat = tokenizer.apply_chat_template([{"role": "user", "content": "How do I copy a file?"}],
                                             add_generation_prompt=True, tokenize=False)
        assert llm.tokenize(chat.encode(), add_bos=False, special=True) == \
            tokenizer(chat, add_special_tokens=False)["input_ids"]
    finally:
        llm.close()


def test_logits_match_transformers(tiny_checkpoint: Path, tiny_gguf: Path):
    """Names, shapes, the Q/K rotary permutation and hyperparameters are all right only if
    llama.cpp computes the same next-token distribution as transformers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    ids = tokenizer("Exceptions are raised with raise and handled with try and except clauses. " * 4,
                    add_special_tokens=False)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32)
    reference, got = _both_logits(model, tiny_gguf, ids)
    assert np.abs(got - reference).max() < 5e-3
    assert (got.argmax(-1) == reference.argmax(-1)).all()


def test_backend_logits_match_transformers_and_feed_the_gate(tiny_checkpoint: Path, tiny_gguf: Path):
    """``Backend.logits`` is every position's next-token logits, the ones export's gate compares."""
    import torch
    from slmforge.export.quality import artifact_logits
    from slmforge.runtime.generate.backend import load_backend
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    ids = tokenizer("Lists are mutable sequences, tuples are not. " * 4, add_special_tokens=False)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32)
    with torch.no_grad():
        reference = model(torch.tensor([ids])).logits[0].numpy()
    backend = load_backend(tiny_gguf, n_ctx=len(ids), threads=2)
    try:
        got = backend.logits(ids)
        prefix = backend.logits(ids[:10])  # a second call starts afresh
    finally:
        backend.close()
    assert got.shape == reference.shape and got.dtype == np.float32
    assert np.abs(got - reference).max() < 5e-3
    assert np.abs(prefix - got[:10]).max() < 5e-3
    gate = list(artifact_logits(tiny_gguf, [ids], threads=2, progress=False))
    assert len(gate) == 1 and np.abs(gate[0] - got[:-1]).max() < 5e-3


def test_metadata_carries_special_tokens_template_and_source(tiny_checkpoint: Path, tiny_gguf: Path):
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    reader = GGUFReader(str(tiny_gguf))

    def field(key: str):
        return reader.get_field(key).contents()

    assert field("tokenizer.ggml.eos_token_id") == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert field("tokenizer.ggml.bos_token_id") == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert field("tokenizer.ggml.add_bos_token") is False
    assert field("tokenizer.ggml.pre") == "gpt-2"
    assert field("tokenizer.chat_template") == tokenizer.chat_template
    assert field("slmforge.source.sha256") == "ab" * 32
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_norm.weight"] == "F32" and types["blk.0.attn_q.weight"] == "F16"
    assert "output.weight" not in types  # tied embeddings are not duplicated


def test_qwen2_family_round_trips(tiny_checkpoint: Path, tmp_path: Path):
    """A second family (q/k/v biases, no rotary permutation) through the same writer."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(1)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:  # random non-zero biases, so a lost bias would show
            layer.self_attn.q_proj.bias.normal_(0, 0.5)
            layer.self_attn.k_proj.bias.normal_(0, 0.5)
    ckpt = tmp_path / "qwen"
    model.save_pretrained(ckpt)
    tokenizer.save_pretrained(ckpt)
    result = write_gguf(ckpt, tmp_path / "qwen.gguf", "F32", progress=False)
    assert result.architecture == "qwen2"
    ids = tokenizer("A module is a file containing Python definitions.", add_special_tokens=False)["input_ids"]
    reference, got = _both_logits(model, result.path, ids)
    assert np.abs(got - reference).max() < 1e-3


def test_rotary_permute_interleaves_halves():
    # one head of 4 rows: HF order [r0 r1 | r2 r3] (halves) -> llama.cpp pairs (r0, r2), (r1, r3)
    weight = np.arange(8, dtype=np.float32).reshape(4, 2)
    assert rotary_permute(weight, 1)[:, 0].tolist() == [0, 4, 2, 6]


@pytest.mark.parametrize(("pre", "expected"), [
    ({"type": "ByteLevel", "use_regex": True}, "gpt-2"),
    ({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                            {"type": "ByteLevel", "use_regex": True}]}, "smollm"),
])
def test_pre_tokenizer_detection(pre: dict, expected: str):
    assert detect_pre_tokenizer({"pre_tokenizer": pre}, Path("x")) == expected


def test_unknown_pre_tokenizer_is_refused():
    with pytest.raises(UserError, match="pre-tokenizer"):
        detect_pre_tokenizer({"pre_tokenizer": {"type": "Whitespace"}}, Path("x"))


def test_unknown_architecture_is_one_line_naming_the_supported_list_and_leaves_nothing(tiny_checkpoint: Path,
                                                                                       tmp_path: Path):
    from slmforge.architectures import supported_names
    from tests.conftest import run_cli

    bad = tmp_path / "bad"
    bad.mkdir()
    for item in tiny_checkpoint.iterdir():
        (bad / item.name).write_bytes(item.read_bytes())
    config = json.loads((bad / "config.json").read_text())
    config["architectures"] = ["MambaForCausalLM"]
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="not supported"):
        write_gguf(bad, tmp_path / "out.gguf", progress=False)
    assert list(tmp_path.glob("*.gguf*")) == [] and list(tmp_path.glob(".out.gguf*")) == []
    done = run_cli("export", "--model", str(bad), "--profile", "laptop-x86-16gb", "--format", "gguf",
                   "--out", str(tmp_path / "out"))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "MambaForCausalLM" in lines[0], done.stderr
    assert all(name in lines[0] for name in supported_names())
    done = run_cli("base", "import", str(bad), "--out", str(tmp_path / "imp"), env={"SLMFORGE_CACHE": str(tmp_path / "c")})
    assert done.returncode == 2 and "MambaForCausalLM" in done.stderr and "Gemma3ForCausalLM" in done.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "imp").exists()


def test_truncated_safetensors_is_one_clear_error(tiny_checkpoint: Path, tmp_path: Path):
    bad = tmp_path / "trunc"
    bad.mkdir()
    for item in tiny_checkpoint.iterdir():
        (bad / item.name).write_bytes(item.read_bytes())
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="safetensors"):
        write_gguf(bad, tmp_path / "out.gguf", progress=False)
    assert not any(p.name.startswith((".out.gguf", "out.gguf")) for p in tmp_path.iterdir())


def test_fast_header_reader_agrees_with_gguf_py(tiny_gguf: Path, tmp_path: Path):
    """slmforge/gguf_header.py skips arrays for speed; everything else must read as gguf-py reads it."""
    from gguf import GGUFReader

    from slmforge.gguf_header import ArrayInfo, read_gguf_header

    header, reader = read_gguf_header(tiny_gguf), GGUFReader(str(tiny_gguf))
    assert [(t.name, t.type_name, t.shape, t.n_elements, t.n_bytes) for t in header.tensors] == [
        (t.name, t.tensor_type.name, tuple(int(d) for d in t.shape), int(t.n_elements), int(t.n_bytes))
        for t in reader.tensors]
    keys = [k for k in reader.fields if not k.startswith("GGUF.")]
    assert keys == list(header.metadata)
    for key in keys:
        value = header.metadata[key]
        if isinstance(value, ArrayInfo):
            assert value.length == len(reader.fields[key].data), key
        else:
            assert value == pytest.approx(reader.get_field(key).contents()), key
    assert header.metadata["tokenizer.ggml.tokens"].element_type == "STRING"
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_gguf.read_bytes()[:-100])
    with pytest.raises(ValueError, match="past the end"):
        read_gguf_header(cut)
