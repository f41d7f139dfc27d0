"""Preference data without hand labels.

chosen = the document's own answer; rejected = what the current model says to the same
question (greedy, so the pair shows exactly the behaviour alignment should move away
from), or — without a model — another question's answer. The same material is also
written in KTO's unpaired form (desirable / undesirable completions).
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from slmforge.errors import UserError
from slmforge.fileio import atomic_write_json, atomic_write_text, sibling
from slmforge.hf_tokens import bos_id
from slmforge.manifest import ArtifactManifest, input_ref, lineage_of


def qa_items(path: str | Path) -> list[tuple[str, str]]:
    """(question, answer) per record of an SFT file (messages or alpaca), line numbers in errors."""
    from slmforge.trainer.data.datasets import load_records, to_messages

    fmt, records = load_records(path, "sft")
    items = []
    for record in records:
        messages = to_messages(fmt, record)
        users = [m["content"] for m in messages[:-1] if m["role"] == "user"]
        if users and messages[-1]["content"].strip():
            items.append((users[-1].strip(), messages[-1]["content"].strip()))
    if not items:
        raise UserError(f"{path}: no user question with an assistant answer; build it with 'slmforge data qa'")
    return items


def pick(items: list[Any], limit: int | None, seed: int) -> list[Any]:
    """A seeded sample of ``limit`` items, kept in file order (all items when no limit)."""
    if not limit or limit >= len(items):
        return list(items)
    chosen = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in chosen]


def mismatched_answers(answers: list[str], seed: int) -> list[str]:
    """For each answer, a different item's answer (a seeded derangement; needs two distinct answers)."""
    if len(set(answers)) < 2:
        raise UserError("--rejected mismatched needs at least two different answers in --qa")
    order = list(range(len(answers)))
    rng = random.Random(seed)
    rng.shuffle(order)
    # rotate the shuffled order by one: every item gets another's answer
    out = [""] * len(answers)
    for pos, idx in enumerate(order):
        out[idx] = answers[order[(pos + 1) % len(order)]]
    for i, text in enumerate(out):  # identical answer texts in different items: pick one that differs
        if text == answers[i]:
            out[i] = next(a for a in answers if a != answers[i])
    return out


def _prompt_text(tokenizer: Any, question: str) -> str:
    """The question as the model is prompted at run time: its chat turn, BOS first when it wants one."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                             add_generation_prompt=True)
    else:
        text = f"Question: {question}\nAnswer:"
    if bos_id(tokenizer) is not None and not text.startswith(tokenizer.bos_token):
        text = tokenizer.bos_token + text  # tokenized with add_special_tokens=False: the marker becomes BOS
    return text


def idle_cores() -> int:
    """Cores not already busy (by the 1-minute load average), at least one.

    Torch's threads spin-wait for each other: on a machine that is already loaded, asking
    for every core made greedy generation ~50x slower here than one thread did.
    """
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):  # not available on Windows
        return cores
    return max(1, min(cores, cores - round(load)))


def model_answers(model_dir: str | Path, questions: list[str], max_new_tokens: int, batch_size: int,
                  seed: int, threads: int | None = None) -> tuple[list[str], dict[str, Any]]:
    """The model's greedy answers to ``questions`` (batched, longest prompts first); returns (answers, timing)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise UserError(f"--model {path}: not a Hugging Face checkpoint (no config.json); "
                        "pass a folder from 'slmforge base import' or 'slmforge train'")
    torch.manual_seed(seed)
    threads = threads or idle_cores()
    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    prompts = [_prompt_text(tokenizer, q) for q in questions]
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    answers: list[str] = [""] * len(prompts)
    new_tokens = 0
    start = time.perf_counter()
    with torch.inference_mode(), tqdm(total=len(prompts), desc="rejected answers", unit="q") as bar:
        for b in range(0, len(order), batch_size):
            batch = order[b:b + batch_size]
            enc = tokenizer([prompts[i] for i in batch], return_tensors="pt", padding=True, add_special_tokens=False)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None,
                                 top_k=None, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            generated = out[:, enc["input_ids"].shape[1]:]
            for i, row in zip(batch, generated):
                keep = row[row != tokenizer.pad_token_id] if tokenizer.pad_token_id is not None else row
                new_tokens += int(keep.numel())
                answers[i] = tokenizer.decode(keep, skip_special_tokens=True).strip()
            bar.update(len(batch))
            bar.set_postfix(tok_s=f"{new_tokens / max(time.perf_counter() - start, 1e-9):.0f}")
    seconds = time.perf_counter() - start
    return answers, {"generation_s": round(seconds, 2), "generated_tokens": new_tokens, "threads": threads,
                     "tokens_per_s": round(new_tokens / max(seconds, 1e-9), 1)}


def build_pairs(items: list[tuple[str, str]], rejected: list[str], fallback: list[str]) -> tuple[list[dict], int]:
    """Preference records; where ``rejected`` is empty or equals the answer, use ``fallback`` (counted)."""
    records, fallbacks = [], 0
    for (question, answer), bad, other in zip(items, rejected, fallback):
        if not bad.strip() or bad.strip() == answer.strip():
            bad, fallbacks = other, fallbacks + 1
        records.append({"prompt": question, "chosen": answer, "rejected": bad})
    return records, fallbacks


def to_kto(pairs: list[dict]) -> list[dict]:
    """KTO's unpaired form: the true answer is desirable, the rejected one undesirable."""
    out = []
    for p in pairs:
        out.append({"prompt": p["prompt"], "completion": p["chosen"], "label": True})
        out.append({"prompt": p["prompt"], "completion": p["rejected"], "label": False})
    return out


def _jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def run_pairs(qa: str | Path, out: str | Path, model: str | Path | None = None, kto_out: str | Path | None = None,
              rejected: str = "model", max_new_tokens: int = 96, limit: int | None = None, seed: int = 0,
              batch_size: int = 8, threads: int | None = None) -> dict[str, Any]:
    """Build preference pairs (and optionally KTO data) from a QA file; write them with a manifest."""
    start = time.perf_counter()
    for flag, path in (("--out", out), ("--kto-out", kto_out)):
        if path is not None and Path(path).is_dir():
            raise UserError(f"{flag} {path}: is a folder; name the JSONL file to write")
    if rejected == "model" and model is None:
        raise UserError("--rejected model needs --model DIR (the checkpoint whose answers to reject); "
                        "or use --rejected mismatched")
    items = pick(qa_items(qa), limit, seed)
    fallback = mismatched_answers([a for _, a in items], seed) if len(items) > 1 else [""] * len(items)
    timing: dict[str, Any] = {}
    if rejected == "model":
        bad, timing = model_answers(model, [q for q, _ in items], max_new_tokens, batch_size, seed, threads)
    else:
        bad = fallback
    pairs, fallbacks = build_pairs(items, bad, fallback)
    dropped = [p for p in pairs if not p["rejected"].strip()]
    pairs = [p for p in pairs if p["rejected"].strip()]
    if not pairs:
        raise UserError(f"{qa}: no usable pairs (a single QA item gives no mismatched fallback); add more questions")
    out = Path(out)
    atomic_write_text(out, _jsonl(pairs))
    if kto_out is not None:
        atomic_write_text(kto_out, _jsonl(to_kto(pairs)))
    inputs = [input_ref("qa", qa)] + ([input_ref("model", model)] if model is not None and rejected == "model" else [])
    stats = {"pairs": len(pairs), "kto_examples": 2 * len(pairs) if kto_out is not None else 0,
             "rejected_source": rejected, "fallback_to_mismatched": fallbacks, "dropped": len(dropped),
             "mean_chosen_chars": round(sum(len(p["chosen"]) for p in pairs) / len(pairs), 1),
             "mean_rejected_chars": round(sum(len(p["rejected"]) for p in pairs) / len(pairs), 1), **timing}
    manifest = ArtifactManifest(kind="dataset", stage="pairs", inputs=inputs, seed=seed,
                                params={"rejected": rejected, "max_new_tokens": max_new_tokens, "limit": limit,
                                        "batch_size": batch_size, "kto_out": str(kto_out) if kto_out else None},
                                metrics=stats, summary=f"{len(pairs)} preference pairs", parent=str(Path(model).resolve()) if model and rejected == "model" else None,
                                lineage=lineage_of(model) if model and rejected == "model" else [],
                                duration_s=round(time.perf_counter() - start, 3))
    atomic_write_json(sibling(out, ".slmforge.json"), manifest.model_dump(mode="json"))
    return stats
