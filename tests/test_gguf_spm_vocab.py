"""SentencePiece-style tokenizers (Gemma, Llama 2, Phi-3) written as llama.cpp's "llama" vocabulary:
llama.cpp must split text exactly as the checkpoint's tokenizer.json does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.tiny_checkpoint import _SEED_TEXT

CORPUS_SAMPLE = ["faq/programming.rst", "tutorial/controlflow.rst", "library/functions.rst"]
BYTES = [f"<0x{b:02X}>" for b in range(256)]


def _spm_checkpoint(out: Path, space_prefix: bool) -> Path:
    """A tiny random Gemma 3 with a byte-fallback BPE tokenizer over '▁' text (Llama 2 style when
    ``space_prefix``, Gemma style otherwise)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    steps = [normalizers.Prepend("▁")] if space_prefix else []
    tok.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    trainer = trainers.BpeTrainer(vocab_size=900, special_tokens=["<pad>", "<eos>", "<bos>", "<unk>", *BYTES],
                                  show_progress=False)
    tok.train_from_iterator(_SEED_TEXT.strip().splitlines() * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
                                   pad_token="<pad>", additional_special_tokens=["<start_of_turn>", "<end_of_turn>"])
    config = Gemma3TextConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16,
                              max_position_embeddings=512)
    torch.manual_seed(0)
    Gemma3ForCausalLM(config).save_pretrained(out)
    fast.save_pretrained(out)
    return out


@pytest.mark.parametrize("space_prefix", [False, True], ids=["gemma-style", "llama2-style"])
def test_spm_style_tokenization_equals_hf(space_prefix: bool, tmp_path: Path, corpus_dir: Path):
    from llama_cpp import Llama
    from slmforge.export.gguf_writer import write_gguf
    from transformers import AutoTokenizer

    checkpoint = _spm_checkpoint(tmp_path / "ckpt", space_prefix)
    gguf_path = write_gguf(checkpoint, tmp_path / "m.gguf", "F32", progress=False).path
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    texts = [(corpus_dir / rel).read_text(encoding="utf-8")[:20000] for rel in CORPUS_SAMPLE]
    texts += ["naïve café — 東京 🚀  tabs\tand\nnewlines  1234567 x=3.14e-10",  # byte fallback for unseen characters
              "<start_of_turn>user\nHow do I copy a file?<end_of_turn>\n"]
    llm = Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
    try:
        for text in texts:
            hf = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert llm.tokenize(text.encode("utf-8"), add_bos=False, special=True) == hf, text[:40]
    finally:
        llm.close()


def test_spm_scores_follow_the_merge_order(tmp_path: Path):
    """llama.cpp merges the pair whose token scores highest: earlier merges must score higher."""
    from gguf import GGUFReader
    from slmforge.export.gguf_writer import write_gguf

    checkpoint = _spm_checkpoint(tmp_path / "ckpt", space_prefix=False)
    reader = GGUFReader(str(write_gguf(checkpoint, tmp_path / "m.gguf", "F32", progress=False).path))
    tokens = reader.get_field("tokenizer.ggml.tokens").contents()
    scores = reader.get_field("tokenizer.ggml.scores").contents()
    merges = json.loads((checkpoint / "tokenizer.json").read_text())["model"]["merges"]
    firsts = [tokens.index("".join(m)) for m in merges[:50]]
    assert [scores[i] for i in firsts] == sorted((scores[i] for i in firsts), reverse=True)
    assert reader.get_field("tokenizer.ggml.model").contents() == "llama"
    assert reader.get_field("tokenizer.ggml.add_space_prefix").contents() is False
