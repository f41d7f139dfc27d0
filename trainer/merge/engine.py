"""The merge engine: check compatibility, then stream tensor by tensor into a new checkpoint.

Nothing is loaded before every input has been checked (architecture, tensor names and
shapes, vocabulary). Then each output tensor is read from every input, merged and written
before the next one is read, so peak memory is a few tensors, not three models.
"""

from __future__ import annotations

import json
import resource
import shutil
import tempfile
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from slmforge.trainer.merge.config import MergeConfig, layer_position, load_merge_config, resolve
from slmforge.trainer.merge.methods import TensorInputs
from slmforge.trainer.merge.safetensors_stream import (
    DTYPES,
    StreamingWriter,
    TensorInfo,
    checkpoint_tensors,
    read_tensor,
)
from tqdm import tqdm

from slmforge.chatml import CHATML_TEMPLATE
from slmforge.errors import UserError
from slmforge.fileio import atomic_dir, atomic_write_json, atomic_write_text
from slmforge.manifest import ArtifactManifest, input_ref, lineage_of

EMBED = "model.embed_tokens.weight"
HEAD = "lm_head.weight"
VOCAB_AXIS_TENSORS = (EMBED, HEAD)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


@dataclass
class Checkpoint:
    """One merge input: its folder, config and tensor index (tied head resolved)."""

    ref: str  # as written in the recipe
    path: Path
    config: dict[str, Any]
    tensors: dict[str, TensorInfo]
    tied: bool = field(init=False)

    def __post_init__(self) -> None:
        self.tied = HEAD not in self.tensors and EMBED in self.tensors

    def info(self, name: str) -> TensorInfo:
        if name == HEAD and self.tied:
            return self.tensors[EMBED]
        return self.tensors[name]

    @property
    def architecture(self) -> str:
        archs = self.config.get("architectures") or [self.config.get("model_type", "?")]
        return str(archs[0])


@dataclass
class MergeResult:
    checkpoint: Path
    metrics: dict[str, Any]


# ----------------------------------------------------------------------------- inputs


def resolve_model_path(ref: str, config_dir: Path) -> tuple[Path, Path | None]:
    """``path`` or ``path+adapter`` → (model folder, adapter folder or None); relative to cwd, then the recipe."""
    model, _, adapter = ref.partition("+")

    def find(p: str, what: str) -> Path:
        for candidate in (Path(p).expanduser(), config_dir / p):
            if candidate.exists():
                return candidate.resolve()
        raise UserError(f"{what} '{p}' not found (looked in {Path.cwd()} and {config_dir}); slmforge merges local "
                        "checkpoints only, give a folder path")

    return find(model, "model"), (find(adapter, "LoRA adapter") if adapter else None)


def apply_adapter(model_dir: Path, adapter_dir: Path, out_dir: Path) -> Path:
    """Fold a LoRA adapter into its base (PEFT merge_and_unload) and save a plain checkpoint."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if not (adapter_dir / "adapter_config.json").is_file():
        raise UserError(f"{adapter_dir}: no adapter_config.json; after '+' name a PEFT LoRA adapter folder")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto")
    merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    merged.save_pretrained(out_dir)
    for name in TOKENIZER_FILES + ("generation_config.json",):
        if (model_dir / name).is_file() and not (out_dir / name).exists():
            shutil.copy(model_dir / name, out_dir / name)
    return out_dir


def open_checkpoint(ref: str, path: Path) -> Checkpoint:
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise UserError(f"{path}: no config.json; is '{ref}' an HF checkpoint folder?")
    return Checkpoint(ref, path, json.loads(cfg_path.read_text()), checkpoint_tensors(path))


def read_vocab(path: Path) -> dict[str, int] | None:
    from tokenizers import Tokenizer

    file = path / "tokenizer.json"
    if not file.is_file():
        return None
    return Tokenizer.from_file(str(file)).get_vocab(with_added_tokens=True)


# ---------------------------------------------------------------------- compatibility


def check_compatible(inputs: list[Checkpoint], reference: Checkpoint, remap_vocab: bool) -> None:
    """Refuse a merge that cannot work, naming the first mismatch, before any tensor is read."""
    for other in inputs:
        if other is reference:
            continue
        if other.architecture != reference.architecture:
            raise UserError(f"cannot merge: {reference.ref} is {reference.architecture} but {other.ref} is "
                            f"{other.architecture}; models must share the architecture")
        names_ref = set(reference.tensors) | ({HEAD} if reference.tied else set())
        names_other = set(other.tensors) | ({HEAD} if other.tied else set())
        for name in sorted(names_ref ^ names_other, key=_tensor_order_key):
            has, lacks = (reference, other) if name in names_ref else (other, reference)
            raise UserError(f"cannot merge: tensor {name} is in {has.ref} but not in {lacks.ref} "
                            f"({has.config.get('num_hidden_layers')} vs {lacks.config.get('num_hidden_layers')} "
                            "layers?); models must share the architecture and size")
        for name in sorted(names_ref, key=_tensor_order_key):
            a, b = reference.info(name).shape, other.info(name).shape
            if remap_vocab and name in VOCAB_AXIS_TENSORS:
                a, b = a[1:], b[1:]
            if a != b:
                raise UserError(f"cannot merge: tensor {name} has shape {list(reference.info(name).shape)} in "
                                f"{reference.ref} but {list(other.info(name).shape)} in {other.ref}; models must "
                                "share the architecture and size")


def check_vocabularies(inputs: list[Checkpoint], vocabs: list[dict[str, int] | None]) -> None:
    """Same token → id everywhere, or the user must name a tokenizer source to re-map embeddings."""
    ref_vocab, ref = vocabs[0], inputs[0]
    for ckpt, vocab in zip(inputs[1:], vocabs[1:]):
        if vocab == ref_vocab:
            continue
        if ref_vocab is None or vocab is None:
            missing = ref if ref_vocab is None else ckpt
            raise UserError(f"cannot compare vocabularies: {missing.ref} has no tokenizer.json; set "
                            "tokenizer_source to the model whose tokenizer the merge should keep")
        for token, idx in sorted(ref_vocab.items(), key=lambda kv: kv[1]):
            if vocab.get(token) != idx:
                raise UserError(f"cannot merge: vocabularies differ (token {token!r} is id {idx} in {ref.ref} but "
                                f"{vocab.get(token)} in {ckpt.ref}); set tokenizer_source: base (or a model) to "
                                "re-map the embeddings onto one tokenizer")
        raise UserError(f"cannot merge: {ckpt.ref} has {len(vocab) - len(ref_vocab)} tokens more than {ref.ref}; "
                        "set tokenizer_source to re-map the embeddings onto one tokenizer")


def _tensor_order_key(name: str) -> tuple[int, int, str]:
    """Embeddings first, then layers in numeric order, then the rest (as a model is read)."""
    if name == EMBED:
        return (0, 0, name)
    parts = name.split(".")
    if "layers" in parts:
        i = parts.index("layers")
        if i + 1 < len(parts) and parts[i + 1].isdigit():
            return (1, int(parts[i + 1]), name)
    return (2, 0, name)


def vocab_row_map(source_vocab: dict[str, int], vocab: dict[str, int], rows_out: int, rows_in: int) -> torch.Tensor:
    """For each output row, the input's row holding the same token, or -1 where it has none."""
    index = torch.full((rows_out,), -1, dtype=torch.long)
    for token, out_id in source_vocab.items():
        in_id = vocab.get(token)
        if in_id is not None and out_id < rows_out and in_id < rows_in:
            index[out_id] = in_id
    covered = set(source_vocab.values())
    for row in range(rows_out):  # padding rows past the vocabulary keep their position
        if row not in covered and row < rows_in:
            index[row] = row
    return index


# ------------------------------------------------------------------------------ merge


def merge_from_config(config_path: str | Path, out: str | Path, seed: int = 0) -> MergeResult:
    """Run the recipe at ``config_path`` and write the merged checkpoint to ``out``."""
    config_path = Path(config_path)
    cfg = load_merge_config(config_path)
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix=".lora-merge-", dir=out.resolve().parent) as scratch:
        paths: dict[str, Path] = {}
        adapters: dict[str, tuple[Path, Path]] = {}
        for ref in cfg.input_models():
            model_dir, adapter_dir = resolve_model_path(ref, config_path.parent)
            paths[ref] = model_dir
            if adapter_dir is not None:
                adapters[ref] = (model_dir, adapter_dir)
                paths[ref] = apply_adapter(model_dir, adapter_dir, Path(scratch) / f"m{len(adapters)}")
        return merge_checkpoints(cfg, paths, out, seed=seed, adapters=adapters, config_path=config_path)


def merge_checkpoints(cfg: MergeConfig, paths: dict[str, Path], out: str | Path, seed: int = 0,
                      adapters: dict[str, tuple[Path, Path]] | None = None,
                      config_path: Path | None = None) -> MergeResult:
    """Merge the checkpoints in ``paths`` (recipe name → folder; adapters already folded in)."""
    started = time.time()
    method = cfg.method
    refs = cfg.input_models()
    inputs = [open_checkpoint(ref, paths[ref]) for ref in refs]
    for c in inputs:
        if c.path.resolve() == Path(out).resolve():
            raise UserError(f"--out {out}: is also an input of the merge ({c.ref}); choose another output folder")
    base_index = refs.index(cfg.base_model) if cfg.base_model else None
    reference = inputs[base_index] if base_index is not None else inputs[0]

    tok_ref = _tokenizer_source(cfg)
    donor = inputs[refs.index(tok_ref)] if tok_ref else reference
    vocabs = [read_vocab(c.path) for c in inputs]
    remap = bool(tok_ref) and any(v != vocabs[refs.index(donor.ref)] for v in vocabs)
    check_compatible(inputs, donor if remap else reference, remap_vocab=remap)
    if not tok_ref:
        check_vocabularies(inputs, vocabs)

    all_tied = all(c.tied for c in inputs)
    names = sorted((n for n in donor.tensors if not (n == HEAD and all_tied)), key=_tensor_order_key)
    if HEAD not in names and not all_tied:
        names.append(HEAD)
    num_layers = int(reference.config.get("num_hidden_layers", 1))
    compute_dtype = getattr(torch, cfg.dtype) if cfg.dtype else None
    out_dtype = getattr(torch, cfg.out_dtype) if cfg.out_dtype else compute_dtype
    row_maps: dict[int, torch.Tensor] = {}
    if remap:
        donor_vocab = vocabs[refs.index(donor.ref)] or {}
        rows_out = donor.info(EMBED).shape[0]
        for i, c in enumerate(inputs):
            row_maps[i] = vocab_row_map(donor_vocab, vocabs[i] or {}, rows_out, c.info(EMBED).shape[0])

    specs = []
    for name in names:
        info = donor.info(name)
        specs.append((name, out_dtype or DTYPES[info.dtype], info.shape))

    out = Path(out)
    with atomic_dir(out) as tmp:
        writer = StreamingWriter(tmp / "model.safetensors", specs)
        for name, dtype, shape in tqdm(specs, desc=f"merge ({method.name})", unit="tensor", dynamic_ncols=True):
            tensors = []
            for i, c in enumerate(inputs):
                t = read_tensor(c.info(name))
                if compute_dtype is not None and t.is_floating_point():
                    t = t.to(compute_dtype)
                if name in VOCAB_AXIS_TENSORS and i in row_maps:
                    t = _remap_rows(t, row_maps[i], read_tensor(donor.info(name)))
                tensors.append(t)
            merged = merge_tensor(cfg, refs, base_index, name, tensors, num_layers, seed)
            writer.write(name, merged.to(dtype))
            del tensors, merged
        writer.close()
        _write_config(cfg, reference, donor, all_tied, tmp, out_dtype)
        _write_tokenizer(cfg, inputs, donor, tmp)
        metrics = {
            "tensors": len(specs),
            "parameters": sum(int(torch.tensor(s).prod()) for _, _, s in specs),
            "vocab_remapped": remap,
            "tied_embeddings": all_tied,
            "seconds": round(time.time() - started, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
        _write_manifest(cfg, refs, inputs, base_index, adapters or {}, seed, metrics, tmp, config_path)
    return MergeResult(out.resolve(), metrics)


def merge_tensor(cfg: MergeConfig, refs: list[str], base_index: int | None, name: str, tensors: list[torch.Tensor],
                 num_layers: int, seed: int) -> torch.Tensor:
    """Resolve this tensor's parameters and apply the method."""
    method = cfg.method
    t = layer_position(name, num_layers)
    top = cfg.parameters or {}
    shared = {p.name: resolve(p, [top], name, t, "parameters") for p in method.params if p.scope == "shared"}
    per_input = []
    for i, ref in enumerate(refs):
        wanted = [p for p in method.params if p.scope == "input" or (p.scope == "non_base" and i != base_index)]
        sources = [cfg.model_parameters(ref), top]
        per_input.append({p.name: resolve(p, sources, name, t, f"model {ref}") for p in wanted})
    generator = None
    if method.randomized:
        generator = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63))
    if not tensors[0].is_floating_point():  # integer buffers are copied from the reference, never averaged
        return tensors[base_index if base_index is not None else 0]
    return method.fn(TensorInputs(tensors, base_index, shared, per_input, generator))


def _remap_rows(t: torch.Tensor, row_map: torch.Tensor, donor_rows: torch.Tensor) -> torch.Tensor:
    out = donor_rows.to(t.dtype).clone()
    have = row_map >= 0
    out[have] = t[row_map[have]]
    return out


def _tokenizer_source(cfg: MergeConfig) -> str | None:
    src = cfg.tokenizer_from
    if src is None:
        return None
    if src == "base":
        if not cfg.base_model:
            raise UserError("tokenizer_source: base needs base_model")
        return cfg.base_model
    if src == "union":
        raise UserError("tokenizer_source: union is not supported; name base or one of the models")
    if src not in cfg.input_models():
        raise UserError(f"tokenizer_source '{src}' is not one of the merged models; name base or one of the models")
    return src


# ----------------------------------------------------------------------------- output


def _write_config(cfg: MergeConfig, reference: Checkpoint, donor: Checkpoint, all_tied: bool, tmp: Path,
                  out_dtype: torch.dtype | None) -> None:
    config = dict(reference.config)
    config["tie_word_embeddings"] = all_tied
    if EMBED in donor.tensors:
        config["vocab_size"] = donor.info(EMBED).shape[0]
    if out_dtype is not None:
        config["dtype"] = str(out_dtype).removeprefix("torch.")
    atomic_write_json(tmp / "config.json", config)
    gen = reference.path / "generation_config.json"
    if gen.is_file():
        shutil.copy(gen, tmp / "generation_config.json")


def _template_of(path: Path) -> str | None:
    file = path / "chat_template.jinja"
    if file.is_file():
        return file.read_text()
    tok_cfg = path / "tokenizer_config.json"
    if tok_cfg.is_file():
        value = json.loads(tok_cfg.read_text()).get("chat_template")
        return value if isinstance(value, str) else None
    return None


def choose_chat_template(setting: str | None, inputs: list[Checkpoint], donor: Checkpoint) -> str | None:
    """None: the tokenizer donor's; 'auto': the most common among inputs; 'chatml'; a file; or literal Jinja."""
    if setting is None:
        return _template_of(donor.path)
    if setting == "auto":
        found = [t.strip() for t in (_template_of(c.path) for c in inputs) if t]
        return Counter(found).most_common(1)[0][0] if found else None
    if setting == "chatml":
        return CHATML_TEMPLATE
    if "{" in setting:
        return setting
    if Path(setting).is_file():
        return Path(setting).read_text()
    raise UserError(f"chat_template '{setting}': use auto, chatml, a .jinja file path or a Jinja template string")


def _write_tokenizer(cfg: MergeConfig, inputs: list[Checkpoint], donor: Checkpoint, tmp: Path) -> None:
    for name in TOKENIZER_FILES:
        if (donor.path / name).is_file():
            shutil.copy(donor.path / name, tmp / name)
    template = choose_chat_template(cfg.chat_template, inputs, donor)
    if template is not None:
        atomic_write_text(tmp / "chat_template.jinja", template)
        tok_cfg = tmp / "tokenizer_config.json"
        if tok_cfg.is_file():  # one source of truth: the .jinja file
            data = json.loads(tok_cfg.read_text())
            if data.pop("chat_template", None) is not None:
                atomic_write_json(tok_cfg, data)


def _write_manifest(cfg: MergeConfig, refs: list[str], inputs: list[Checkpoint], base_index: int | None,
                    adapters: dict[str, tuple[Path, Path]], seed: int, metrics: dict[str, Any], tmp: Path,
                    config_path: Path | None) -> None:
    records = []
    lineage: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for i, (ref, ckpt) in enumerate(zip(refs, inputs)):
        role = "base" if i == base_index else "model"
        source = adapters[ref][0] if ref in adapters else ckpt.path
        records.append(input_ref(role, source))
        if ref in adapters:
            records.append(input_ref("adapter", adapters[ref][1]))
        if i == (base_index or 0):
            parent = str(source.resolve())
        for entry in lineage_of(source):
            key = (entry.get("path", ""), entry.get("sha256", ""))
            if key not in seen:
                seen.add(key)
                lineage.append(entry)
    if config_path is not None:
        records.append(input_ref("recipe", config_path))
    ArtifactManifest(
        kind="checkpoint",
        stage="merge",
        inputs=records,
        params=cfg.model_dump(mode="json", exclude_none=True),
        seed=seed,
        metrics=metrics,
        summary=(f"{cfg.merge_method} of {len(refs)} models: {metrics['tensors']} tensors, "
                 f"{metrics['parameters'] / 1e6:.1f}M params" + (", vocabulary re-mapped" if metrics["vocab_remapped"] else "")),
        parent=parent,
        lineage=lineage,
        duration_s=metrics["seconds"],
    ).write(tmp)
