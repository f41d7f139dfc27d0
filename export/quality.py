"""Quality gate: is the exported artifact still the model it was made from?

Both sides see the same token ids (the source's HF tokenizer on held-out domain text), so the
comparison measures the weights and the runtime, not tokenization. Reported like llama.cpp's
perplexity tool: perplexity of each, their ratio, mean KL divergence of the next-token
distributions (source || exported) and top-1 agreement. The gate bound comes from the profile.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from slmforge.errors import UserError
from slmforge.profiles import QualityBounds

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text")


@dataclass
class Reference:
    """Token windows and the source model's next-token log-probabilities on them."""

    windows: list[list[int]]
    logprobs: list[np.ndarray]  # float16, (len(window) - 1, vocab)
    ppl: float


@dataclass
class QualityReport:
    ppl_source: float
    ppl_exported: float
    ppl_ratio: float
    kl_mean: float
    top1_agreement: float
    tokens: int

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 6) if isinstance(v, float) else v for k, v in asdict(self).items()}


# ---------------------------------------------------------------------------- held-out text


def load_heldout_texts(path: str | Path) -> list[str]:
    """Texts from a dataset dir (heldout.jsonl), a .jsonl file with "text", or text files/folders."""
    path = Path(path)
    if path.is_dir() and (path / "heldout.jsonl").is_file():
        path = path / "heldout.jsonl"
    if path.is_file() and path.suffix == ".jsonl":
        texts = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                texts.append(json.loads(line)["text"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise UserError(f"{path}:{number}: expected a JSON object with a \"text\" field") from None
        return texts
    if path.is_file():
        return [path.read_text(encoding="utf-8", errors="replace")]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
        if files:
            return [p.read_text(encoding="utf-8", errors="replace") for p in files]
    raise UserError(f"{path}: no held-out text found (give a dataset folder, a .jsonl with \"text\", "
                    f"or text files {', '.join(TEXT_SUFFIXES)})")


def token_windows(checkpoint: Path, texts: Iterable[str], window: int, max_tokens: int) -> list[list[int]]:
    """The source tokenizer's ids for the texts, cut into windows of ``window`` tokens."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    stream: list[int] = []
    for text in texts:
        stream.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if len(stream) >= max_tokens:
            break
    stream = stream[:max_tokens]
    windows = [stream[i:i + window] for i in range(0, len(stream), window)]
    windows = [w for w in windows if len(w) >= 2]
    if not windows:
        raise UserError("held-out text is too short to measure perplexity (need at least 2 tokens)")
    return windows


# ---------------------------------------------------------------------------- log-probabilities


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float32)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _perplexity(logprobs: list[np.ndarray], windows: list[list[int]]) -> float:
    nll = [-lp[np.arange(len(w) - 1), w[1:]].astype(np.float64) for lp, w in zip(logprobs, windows)]
    return float(np.exp(np.concatenate(nll).mean()))


def source_reference(checkpoint: Path, windows: list[list[int]], progress: bool = True) -> Reference:
    """Next-token log-probabilities of the HF checkpoint itself (float32, transformers)."""
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    model.eval()
    logprobs = []
    with torch.no_grad():
        for window in tqdm(windows, desc="source logits", unit="window", disable=not progress):
            logits = model(torch.tensor([window])).logits[0, :-1].numpy()
            logprobs.append(_log_softmax(logits).astype(np.float16))
    return Reference(windows, logprobs, _perplexity(logprobs, windows))


def gguf_logits(path: Path, windows: list[list[int]], threads: int | None = None,
                progress: bool = True) -> Iterable[np.ndarray]:
    """Logits of every position through llama.cpp (llama-cpp-python, logits_all)."""
    from slmforge.runtime.llama_probe import ensure_llama_cpp_runs
    from tqdm import tqdm

    ensure_llama_cpp_runs(path)  # the quality gate is the export's first decode: a crash is one line
    from llama_cpp import Llama

    size = max(len(w) for w in windows)
    try:
        llm = Llama(model_path=str(path), n_ctx=size, n_batch=size, n_ubatch=size, logits_all=True,
                    n_threads=threads, verbose=False)
    except ValueError as exc:
        raise UserError(f"{path}: llama.cpp cannot load this GGUF ({exc})") from None
    try:
        for window in tqdm(windows, desc=f"{path.name} logits", unit="window", disable=not progress):
            llm.reset()
            llm.eval(window)
            yield np.array(llm.scores[: len(window) - 1], dtype=np.float32)
    finally:
        llm.close()


def onnx_logits(folder: Path, windows: list[list[int]], progress: bool = True) -> Iterable[np.ndarray]:
    """Logits of every position through onnxruntime-genai (one prefill per window)."""
    import onnxruntime_genai as og
    from tqdm import tqdm

    try:
        model = og.Model(str(folder))
    except Exception as exc:  # noqa: BLE001 - og raises RuntimeError/OrtException subclasses on damaged folders
        raise UserError(f"{folder}: onnxruntime-genai cannot load this model ({exc}); re-export it") from None
    for window in tqdm(windows, desc=f"{folder.name} logits", unit="window", disable=not progress):
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(window) + 1, do_sample=False)
        generator = og.Generator(model, params)
        generator.append_tokens(np.array(window, dtype=np.int32))
        yield np.asarray(generator.get_output("logits"), dtype=np.float32)[0, : len(window) - 1]
        del generator


# ---------------------------------------------------------------------------- comparison and gate


def compare(reference: Reference, exported: Iterable[np.ndarray]) -> QualityReport:
    """Perplexity ratio, mean KL(source || exported) and top-1 agreement over all positions."""
    kls, agree, logprobs = [], [], []
    for logits, ref_lp in zip(exported, reference.logprobs):  # exported first: lets it finish its loop
        ref = ref_lp.astype(np.float32)
        got = _log_softmax(logits)
        if got.shape != ref.shape:
            raise UserError(f"exported model returned logits of shape {got.shape}, source {ref.shape}; "
                            "the vocabularies differ, so the export is not the same model")
        kls.append((np.exp(ref) * (ref - got)).sum(axis=-1))
        agree.append(ref.argmax(-1) == got.argmax(-1))
        logprobs.append(got)
    getattr(exported, "close", lambda: None)()  # let a generator release its runtime now
    ppl = _perplexity(logprobs, reference.windows)
    return QualityReport(
        ppl_source=reference.ppl,
        ppl_exported=ppl,
        ppl_ratio=ppl / reference.ppl,
        kl_mean=float(np.concatenate(kls).mean()),
        top1_agreement=float(np.concatenate(agree).mean()),
        tokens=int(sum(len(w) - 1 for w in reference.windows)),
    )


def gate_bound(quant: str, bounds: QualityBounds) -> float:
    """The profile's largest accepted perplexity ratio for this quantization's bit class."""
    from slmforge.export.quantize import bit_class

    return {"8bit": bounds.max_ppl_ratio_8bit, "mid": bounds.max_ppl_ratio_mid_bit,
            "low": bounds.max_ppl_ratio_low_bit}[bit_class(quant)]


def evaluate(reference: Reference, logits: Callable[[], Iterable[np.ndarray]], quant: str,
             bounds: QualityBounds) -> tuple[QualityReport, bool, float]:
    """Measure one artifact and apply the gate: (report, passed, bound)."""
    report = compare(reference, logits())
    bound = gate_bound(quant, bounds)
    return report, report.ppl_ratio <= bound, bound
