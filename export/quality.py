"""Quality gate: is the exported artifact still the model it was made from?

Both sides see the same token ids (the source's HF tokenizer on held-out domain text), so the
comparison measures the weights and the runtime, not tokenization. Reported like llama.cpp's
perplexity tool: perplexity of each, their ratio, mean KL divergence of the next-token
distributions (source || exported) and top-1 agreement. The gate bound comes from the profile: the
perplexity ratio and the mean KL (ln of the same bound, ``kl_bound``) must both be within it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from slmforge.errors import UserError
from slmforge.hf_tokens import bos_id, text_ids
from slmforge.perplexity import perplexity, token_stream
from slmforge.perplexity import token_windows as cut_windows
from slmforge.profiles import QualityBounds


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


# ---------------------------------------------------------------------------- token windows


def token_windows(checkpoint: Path, texts: Iterable[str], window: int, max_tokens: int) -> list[list[int]]:
    """The source tokenizer's ids for the texts (each starting with BOS when the model wants one and followed
    by EOS, as the trainer and ``bench run`` measure), cut into windows of ``window`` tokens that each start
    with BOS for such a model."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)

    return cut_windows(token_stream(lambda text: text_ids(tokenizer, text), texts, tokenizer.eos_token_id, max_tokens),
                       window, bos_id(tokenizer))


# ---------------------------------------------------------------------------- log-probabilities


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float32)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _perplexity(logprobs: list[np.ndarray], windows: list[list[int]]) -> float:
    return perplexity(-lp[np.arange(len(w) - 1), w[1:]] for lp, w in zip(logprobs, windows))


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


def artifact_logits(path: Path, windows: list[list[int]], threads: int | None = None,
                    progress: bool = True) -> Iterable[np.ndarray]:
    """Logits of every position of each window, through the runtime backend that will run the artifact
    (a GGUF file: llama.cpp; an ONNX folder: onnxruntime-genai)."""
    from slmforge.runtime.generate.backend import load_backend
    from tqdm import tqdm

    backend = load_backend(path, n_ctx=max(len(w) for w in windows), threads=threads)
    try:
        for window in tqdm(windows, desc=f"{path.name} logits", unit="window", disable=not progress):
            yield backend.logits(window)[: len(window) - 1]
    finally:
        backend.close()


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


def kl_bound(ppl_bound: float) -> float:
    """The KL allowance of a perplexity-ratio bound: ln(bound) nats per token.

    A quantization that loses ``ln(bound)`` nats of the source's own next-token distribution per token would,
    on text the source predicts well, raise perplexity by that bound; the ratio alone misses it when the
    source is poorly calibrated on the held-out text (Gemma 3 270M Q3_K_M: ratio 0.9165 with KL 0.388,
    i.e. x1.47 in the same units, and top-1 agreement 0.695), so the gate holds both to the same allowance."""
    return math.log(ppl_bound)


def judge(report: QualityReport, quant: str, bounds: QualityBounds, owner: str = "") -> tuple[bool, str]:
    """The gate on a measured report: (passed, one line saying why); ``owner`` names whose bounds they are."""
    from slmforge.export.quantize import bit_class

    bound = gate_bound(quant, bounds)
    kl_max = kl_bound(bound)
    ppl_ok, kl_ok = report.ppl_ratio <= bound, report.kl_mean <= kl_max
    verdict = (f"perplexity ratio {report.ppl_ratio:.4f} {'<=' if ppl_ok else '>'} {bound} and mean KL "
               f"{report.kl_mean:.4f} {'<=' if kl_ok else '>'} {kl_max:.4f} (ln {bound}) "
               f"(bounds for {bit_class(quant)} quants{' of ' + owner if owner else ''})")
    return ppl_ok and kl_ok, verdict


def evaluate(reference: Reference, logits: Callable[[], Iterable[np.ndarray]], quant: str,
             bounds: QualityBounds, owner: str = "") -> tuple[QualityReport, bool, str]:
    """Measure one artifact and apply the gate: (report, passed, verdict)."""
    report = compare(reference, logits())
    passed, verdict = judge(report, quant, bounds, owner)
    return report, passed, verdict
