"""BOS where the model wants it: training, held-out perplexity and export's gate put it where llama.cpp does.

A Gemma-style tokenizer adds BOS before a text (its post-processor, hence ``add_bos_token`` in the
GGUF, hence llama.cpp at run time); SFT, CPT and the gate build ids from pieces and must add it
themselves. A SmolLM2-style tokenizer adds none, and nothing changes for it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny_checkpoint import build_tiny_checkpoint

BOS = "<|endoftext|>"
MSGS = [{"role": "user", "content": "How do I copy a file?"}, {"role": "assistant", "content": "Use shutil.copy()."}]


def _wants_bos(checkpoint: Path) -> Path:
    """The tiny checkpoint with a tokenizer that puts BOS before every text, as Gemma's does."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(checkpoint)
    tok.bos_token = BOS
    bos = tok.convert_tokens_to_ids(BOS)
    tok._tokenizer.post_processor = TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos)])
    tok.save_pretrained(checkpoint)
    return checkpoint


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bos")
    return {"plain": build_tiny_checkpoint(root / "plain"), "bos": _wants_bos(build_tiny_checkpoint(root / "bos"))}


def _tok(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def test_bos_rule_follows_the_tokenizer(ckpts):
    from slmforge.hf_tokens import bos_id, text_ids

    plain, bos = _tok(ckpts["plain"]), _tok(ckpts["bos"])
    assert bos_id(plain) is None
    assert bos_id(bos) == bos.convert_tokens_to_ids(BOS)
    assert text_ids(plain, "a file") == plain("a file", add_special_tokens=False)["input_ids"]
    assert text_ids(bos, "a file") == [bos_id(bos), *bos("a file", add_special_tokens=False)["input_ids"]]


def test_sft_example_starts_with_bos_without_loss_when_the_model_wants_it(ckpts):
    from slmforge.trainer.train.sft import IGNORE, tokenize_conversation

    plain_ids, plain_labels = tokenize_conversation(_tok(ckpts["plain"]), MSGS)
    tok = _tok(ckpts["bos"])
    ids, labels = tokenize_conversation(tok, MSGS)
    assert ids[0] == tok.convert_tokens_to_ids(BOS) and labels[0] == IGNORE
    assert ids[1:] == plain_ids and labels[1:] == plain_labels  # the rest is unchanged
    assert plain_ids[0] != tok.convert_tokens_to_ids(BOS)  # a model that wants none gets none


def test_cpt_texts_and_perplexity_windows_start_with_bos(ckpts):
    from slmforge.export.quality import token_windows
    from slmforge.trainer.train.pretrain import pack_blocks

    tok = _tok(ckpts["bos"])
    bos = tok.convert_tokens_to_ids(BOS)
    stream = pack_blocks(tok, ["Lists are mutable.", "Tuples are not."], seq_len=1000)[0]
    starts = [0] + [i + 1 for i, t in enumerate(stream[:-1]) if t == tok.eos_token_id]
    assert [stream[i] for i in starts] == [bos, bos]
    windows = token_windows(ckpts["bos"], ["Lists are mutable.", "Tuples are not."], 1000, 1000)
    assert windows == [stream]  # the gate reads text the way CPT trains on it
    assert token_windows(ckpts["plain"], ["Lists are mutable."], 1000, 1000)[0][0] != bos


def test_the_exported_gguf_adds_bos_exactly_when_training_does(ckpts, tmp_path):
    """llama.cpp's prompt (``tokenize(add_bos=True)``, the runtime's call) begins as SFT's examples do."""
    from llama_cpp import Llama
    from slmforge.export.gguf_writer import write_gguf

    from slmforge.hf_tokens import bos_id

    for name, path in ckpts.items():
        gguf = write_gguf(path, tmp_path / f"{name}.gguf", "F32", progress=False).path
        llm = Llama(model_path=str(gguf), vocab_only=True, verbose=False)
        try:
            first = llm.tokenize(b"a file", add_bos=True, special=True)[0]
        finally:
            llm.close()
        want = bos_id(_tok(path))
        assert (first == want) if want is not None else (first == _tok(path)("a file")["input_ids"][0])


def test_pairs_prompt_the_model_with_bos_when_it_wants_one(ckpts):
    """DPO's rejected answers are generated from the prompt the runtime gives: BOS first for a model that wants it."""
    from slmforge.trainer.data.pairs import _prompt_text

    tok = _tok(ckpts["bos"])
    ids = tok(_prompt_text(tok, "How do I copy a file?"), add_special_tokens=False)["input_ids"]
    assert ids[0] == tok.convert_tokens_to_ids(BOS) and ids.count(ids[0]) == 1
    plain = _tok(ckpts["plain"])
    assert not _prompt_text(plain, "How do I copy a file?").startswith(BOS)


def test_every_perplexity_window_starts_with_bos_when_the_model_wants_it(ckpts):
    """A window cut mid-text is a prompt without BOS; Gemma's second gate window was (ppl 38 against 14.5)."""
    from slmforge.export.quality import token_windows

    from slmforge.hf_tokens import text_ids
    from slmforge.perplexity import token_stream

    texts = ["Lists are mutable sequences; tuples are immutable. " * 6] * 3
    tok = _tok(ckpts["bos"])
    bos = tok.convert_tokens_to_ids(BOS)
    windows = token_windows(ckpts["bos"], texts, 16, 200)
    assert len(windows) > 3 and all(w[0] == bos and len(w) <= 16 for w in windows)
    stream = token_stream(lambda t: text_ids(tok, t), texts, tok.eos_token_id, 200)
    # nothing dropped or reordered: only BOS added where a window began mid-text
    assert [t for w in windows for t in w if t != bos] == [t for t in stream if t != bos]
    assert all(w[0] != bos for w in token_windows(ckpts["plain"], texts, 16, 200))
