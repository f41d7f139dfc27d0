"""Export on the real SmolLM2-135M-Instruct (integration): the GGUF must be the same model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.integration

PROMPTS = ["How do I copy a file in Python?", "What is a tuple?", "How do I read a text file line by line?",
           "Explain Python's try and except.", "What does the pathlib module do?"]


@pytest.fixture(scope="module")
def real_f16(real_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from slmforge.export.gguf_writer import write_gguf

    return write_gguf(real_base, tmp_path_factory.mktemp("real") / "model-F16.gguf", progress=False).path


def _chat_ids(tokenizer, question: str) -> list[int]:
    return tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                         tokenize=True, return_dict=False)


def test_gguf_tokenizes_whole_corpus_like_hf(real_base: Path, real_f16: Path, corpus_dir: Path):
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(real_base)
    llm = Llama(model_path=str(real_f16), vocab_only=True, verbose=False)
    files = sorted(p for p in corpus_dir.rglob("*") if p.is_file())
    assert len(files) > 30
    compared = 0
    try:
        for file in files:
            text = file.read_text(encoding="utf-8")
            hf = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert llm.tokenize(text.encode("utf-8"), add_bos=False, special=True) == hf, file.name
            compared += len(hf)
    finally:
        llm.close()
    assert compared > 200_000


def test_greedy_chat_matches_transformers_and_stops_at_im_end(real_base: Path, real_f16: Path):
    import torch
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(real_base)
    model = AutoModelForCausalLM.from_pretrained(real_base, dtype=torch.float32)
    ids = _chat_ids(tokenizer, PROMPTS[0])
    with torch.no_grad():
        hf = model.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False)[0, len(ids):].tolist()
    llm = Llama(model_path=str(real_f16), n_ctx=1024, n_threads=2, verbose=False)
    try:
        im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        assert llm.token_eos() == im_end
        produced: list[int] = []
        for token in llm.generate(ids, temp=0.0, top_k=1, reset=True):
            if token == llm.token_eos() or len(produced) >= 400:
                break
            produced.append(token)
        assert produced[:32] == hf, (tokenizer.decode(produced[:32]), tokenizer.decode(hf))
        assert len(produced) < 400, "generation did not stop at <|im_end|>"
        reply = llm.create_chat_completion([{"role": "user", "content": "What is 2 + 2?"}], temperature=0.0,
                                           max_tokens=200)
        assert reply["choices"][0]["finish_reason"] == "stop"
        assert "<|im_end|>" not in reply["choices"][0]["message"]["content"]
    finally:
        llm.close()


@pytest.fixture(scope="module")
def onnx_builds(real_base: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """fp32 and int4 onnxruntime-genai folders of the real model."""
    from slmforge.export.onnx_genai import build_onnx

    tmp = tmp_path_factory.mktemp("onnx")
    return {precision: build_onnx(real_base, tmp / f"onnx-{precision}", precision) for precision in ("fp32", "int4")}


@pytest.fixture(scope="module")
def onnx_greedy(real_base: Path, onnx_builds: dict[str, Path]) -> dict[str, list[list[int]]]:
    """Greedy 16-token continuations of the chat prompts from the fp32 and int4 ONNX exports."""
    import onnxruntime_genai as og
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(real_base)
    results: dict[str, list[list[int]]] = {}
    for precision in ("fp32", "int4"):
        model = og.Model(str(onnx_builds[precision]))
        results[precision] = []
        for question in PROMPTS:
            ids = _chat_ids(tokenizer, question)
            params = og.GeneratorParams(model)
            params.set_search_options(max_length=len(ids) + 16, do_sample=False)
            generator = og.Generator(model, params)
            generator.append_tokens(np.array(ids, dtype=np.int32))
            while not generator.is_done():
                generator.generate_next_token()
            results[precision].append([int(t) for t in generator.get_sequence(0)][len(ids):])
    return results


def test_onnx_fp32_greedy_matches_transformers(real_base: Path, onnx_greedy: dict[str, list[list[int]]]):
    """The ONNX graph itself (before any quantization) is the same model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(real_base)
    model = AutoModelForCausalLM.from_pretrained(real_base, dtype=torch.float32)
    for question, onnx_tokens in zip(PROMPTS, onnx_greedy["fp32"]):
        ids = _chat_ids(tokenizer, question)
        with torch.no_grad():
            hf = model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False)[0, len(ids):].tolist()
        assert onnx_tokens == hf, question
    assert all(len(tokens) == 16 for tokens in onnx_greedy["int4"])  # int4 runs and generates


@pytest.mark.xfail(strict=True, reason="measured: builder's default int4 (RTN, block 32) diverges from fp32 at "
                   "tokens 0/4/13/3/5 of the 5 prompts; k_quant_mixed, block 16, fp32 activations and an fp32 "
                   "lm_head diverge too, and even int8 on one prompt (docs/export.md)")
def test_onnx_int4_greedy_matches_fp32_reference(onnx_greedy: dict[str, list[list[int]]]):
    assert onnx_greedy["int4"] == onnx_greedy["fp32"]


def test_onnx_backend_streams_the_reference_tokens_and_stops_at_eos(real_base: Path, onnx_builds: dict[str, Path],
                                                                     onnx_greedy: dict[str, list[list[int]]]):
    """The runtime's ONNX generation path (chat template, tokenizer, streaming, EOS) on the fp32 export:
    the same prompt ids as transformers' chat template, the same 16 greedy tokens as the raw generator
    loop, and a short answer that ends by itself at <|im_end|> without showing it."""
    from slmforge.runtime.generate.onnx_genai import OnnxGenaiBackend
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(real_base)
    backend = OnnxGenaiBackend(onnx_builds["fp32"], n_ctx=1024, threads=2)
    try:
        prompt = backend.render_chat([{"role": "user", "content": PROMPTS[0]}])
        assert backend.tokenize(prompt) == _chat_ids(tokenizer, PROMPTS[0])
        stream = backend.stream(prompt, max_tokens=16, temperature=0.0)
        deltas = list(stream)
        assert "".join(deltas) == tokenizer.decode(onnx_greedy["fp32"][0])
        assert stream.result.completion_tokens == 16 and stream.result.finish_reason == "length"
        short = backend.generate(backend.render_chat([{"role": "user", "content": "What is 2 + 2?"}]), max_tokens=200)
        assert short.finish_reason == "stop" and 0 < short.completion_tokens < 200
        assert "<|im_end|>" not in short.text
    finally:
        backend.close()


def test_backend_logits_agree_between_gguf_and_onnx(real_base: Path, real_f16: Path, onnx_builds: dict[str, Path],
                                                    corpus_dir: Path):
    """``Backend.logits`` of the two runtimes on the same ids: the same model (F16 GGUF vs fp32 ONNX), so the
    same next-token choices and the same held-out perplexity."""
    from slmforge.runtime.generate.backend import load_backend
    from transformers import AutoTokenizer

    from slmforge.perplexity import perplexity, window_nll

    tokenizer = AutoTokenizer.from_pretrained(real_base)
    text = (corpus_dir / "faq" / "design.rst").read_text(encoding="utf-8")[:4000]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:256]
    got = {}
    for name, path in (("gguf", real_f16), ("onnx", onnx_builds["fp32"])):
        backend = load_backend(path, n_ctx=512, threads=2)
        try:
            got[name] = backend.logits(ids)
        finally:
            backend.close()
    assert got["gguf"].shape == got["onnx"].shape == (len(ids), got["gguf"].shape[1])
    assert (got["gguf"].argmax(-1) == got["onnx"].argmax(-1)).mean() > 0.97
    ppl = {name: perplexity(window_nll(logits, ids)) for name, logits in got.items()}
    assert ppl["gguf"] == pytest.approx(ppl["onnx"], rel=0.01)


def test_pi_zero_refuses_the_full_model_and_a_larger_budget_fits(real_base: Path, tmp_path: Path):
    """The smallest shipped device: 300 MB must hold the model *and* the `serve` process (~225 MB measured
    with the int8 embedder), which the 135M model cannot; the refusal says why in one line and leaves nothing."""
    from slmforge.export.run import ExportOptions, run_export

    from slmforge.errors import UserError
    from slmforge.profiles import load_profile

    profile = load_profile("raspberry-pi-zero-2w")
    options = ExportOptions(formats=["gguf"], eval_tokens=512, embedder=False, progress=False)
    with pytest.raises(UserError) as refused:
        run_export(real_base, profile, tmp_path / "zero", options)
    message = str(refused.value)
    assert "fits profile 'raspberry-pi-zero-2w'" in message and "runtime process" in message and "\n" not in message
    assert not (tmp_path / "zero").exists() and not list(tmp_path.glob("*.partial*"))
    roomier = profile.model_copy(update={"app_memory_gb": 0.46})  # Q6_K (138 MB) fits: est. 453 MB
    manifest = run_export(real_base, roomier, tmp_path / "export", options)
    (art,) = manifest.artifacts
    assert art.est_memory_bytes <= roomier.app_memory_bytes and art.est_decode_tok_s >= roomier.target_decode_tok_s
    assert art.gate == "pass" and art.ppl_ratio <= roomier.quality_gate.max_ppl_ratio_8bit + 0.1
    assert art.bits_per_weight > 4  # bits read back from the file, not the label


def test_embedder_export_passes_its_gate_and_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """int8 MiniLM vs torch on the shipped docs; the second export is a copy of the cached, gated one."""
    import json

    from slmforge.export import embedder as embedder_export
    from slmforge.runtime.index.embedder import Embedder

    from slmforge.fileio import sha256_file

    monkeypatch.setenv("SLMFORGE_CACHE", str(tmp_path / "cache"))
    first = embedder_export.export_embedder(tmp_path / "a" / "embedder")
    check = json.loads((tmp_path / "a" / "embedder" / "embedder.json").read_text())["check"]
    assert check["chunks"] >= 100 and check["mean_cosine"] >= 0.99 and check["min_cosine"] >= 0.97, check

    def refuse(*_args, **_kwargs):
        raise AssertionError("re-exported although the cache holds this encoder's gated export")

    monkeypatch.setattr(embedder_export, "_load_torch_encoder", refuse)
    second = embedder_export.export_embedder(tmp_path / "b" / "vectors")
    assert second.path == "vectors" and second.model_dump(exclude={"path"}) == first.model_dump(exclude={"path"})
    a, b = tmp_path / "a" / "embedder", tmp_path / "b" / "vectors"
    assert sha256_file(b / "model.onnx") == sha256_file(a / "model.onnx")
    texts = ["How do I copy a file?", "shutil.copy2 keeps metadata"]
    assert np.allclose(Embedder(b).embed(texts), Embedder(a).embed(texts))
    with pytest.raises(AssertionError, match="re-exported"):  # another check folder is another gate: no cache
        embedder_export.export_embedder(tmp_path / "c" / "embedder", check_docs=tmp_path / "no-docs")
