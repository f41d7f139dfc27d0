"""Thumbs up/down on answers, kept on the device, exported as the next training cycle's data.

A rating stores the question and answer it rates (the user chose to rate that exchange,
so its text is kept even when request text logging is off). Export writes exactly what
``slmforge train align`` reads: KTO ``{"prompt", "completion", "label"}`` (the binary signal a
field device can collect) or DPO ``{"prompt", "chosen", "rejected"}`` pairs, made from a
corrected answer vs. the rated-down one, or from up- and down-rated answers to the same question.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from slmforge.runtime.answer.cache import normalize_question
from slmforge.runtime.telemetry.store import TelemetryStore

from slmforge.errors import UserError
from slmforge.fileio import atomic_write_text

_GOOD = {"good", "up", "+1", "1", "true", "yes", "thumbs_up", "positive"}
_BAD = {"bad", "down", "-1", "0", "false", "no", "thumbs_down", "negative"}


def parse_rating(value: Any) -> bool:
    """True for a thumbs up, False for a thumbs down; anything else is a user error."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _GOOD:
        return True
    if text in _BAD:
        return False
    raise UserError(f"rating {value!r} is not a thumbs up or down; use \"good\" or \"bad\" (also up/down, 1/-1)")


def record_feedback(store: TelemetryStore, request_id: str, good: bool, prompt: str, completion: str,
                    correction: str | None = None, comment: str | None = None) -> int:
    """Store one rating with the exchange it rates."""
    if not prompt or not completion:
        raise UserError(f"feedback for {request_id}: the question and the answer are both needed to learn from it")
    return store.record_feedback({
        "gen_ai.response.id": request_id, "label": int(good), "prompt": prompt, "completion": completion,
        "correction": correction or None, "comment": comment or None,
    })


def kto_records(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One example per rating; a correction adds a desirable example. Duplicates are dropped."""
    seen: set[tuple[str, str, bool]] = set()
    out: list[dict[str, Any]] = []
    for row in rows:
        examples = [(row["completion"], bool(row["label"]))]
        if row.get("correction"):
            examples.append((row["correction"], True))
        for completion, label in examples:
            key = (row["prompt"], completion, label)
            if key not in seen:
                seen.add(key)
                out.append({"prompt": row["prompt"], "completion": completion, "label": label})
    return out


def dpo_records(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pairs: a correction over the answer it corrects; a liked over a disliked answer to the same question."""
    pairs: list[dict[str, Any]] = []
    seen: set[tuple[str, str, str]] = set()

    def add(prompt: str, chosen: str, rejected: str) -> None:
        if chosen != rejected and (prompt, chosen, rejected) not in seen:
            seen.add((prompt, chosen, rejected))
            pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})

    by_question: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for row in rows:
        if row.get("correction"):
            add(row["prompt"], row["correction"], row["completion"])
        group = by_question.setdefault(normalize_question(row["prompt"]), {"good": [], "bad": []})
        group["good" if row["label"] else "bad"].append(row)
    for group in by_question.values():
        for good in group["good"]:
            for bad in group["bad"]:
                add(bad["prompt"], good["completion"], bad["completion"])
    return pairs


def export_feedback(store: TelemetryStore, fmt: str, out: str | os.PathLike[str]) -> dict[str, Any]:
    """Write the feedback as KTO or DPO JSONL to ``out`` (atomically); returns counts."""
    rows = [r for r in store.feedback() if r.get("prompt") and r.get("completion")]
    if not rows:
        raise UserError(f"{store.path}: no feedback recorded yet; rate answers with POST /v1/feedback or /good, /bad in chat")
    if fmt == "kto":
        records = kto_records(rows)
    elif fmt == "dpo":
        records = dpo_records(rows)
        if not records:
            raise UserError(
                f"{store.path}: {len(rows)} ratings but no preference pairs; DPO needs a corrected answer or both a "
                "liked and a disliked answer to the same question. Export --format kto instead")
    else:
        raise UserError(f"unknown feedback format {fmt!r}; use kto or dpo")
    atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    good = sum(1 for r in rows if r["label"])
    return {"out": str(Path(out)), "format": fmt, "ratings": len(rows), "good": good, "bad": len(rows) - good,
            "records": len(records)}


def rate_from_chat(bundle_source: str | os.PathLike[str], last: tuple[str, str] | None, command: str) -> str:
    """Handle ``/good`` or ``/bad [a better answer]`` typed in ``slmforge chat``; returns the line to show."""
    import uuid

    from slmforge.runtime.telemetry.store import telemetry_path

    word, _, correction = command.strip().partition(" ")
    if last is None:
        return "nothing to rate yet: ask a question first"
    store = TelemetryStore(telemetry_path(bundle_source))
    try:
        record_feedback(store, f"chat-{uuid.uuid4().hex[:24]}", word == "/good", last[0], last[1],
                        correction=correction.strip() or None)
    finally:
        store.close()
    kind = "thumbs up" if word == "/good" else "thumbs down" + (" with a correction" if correction.strip() else "")
    return f"recorded {kind} in {store.path} (export with: slmforge feedback export BUNDLE --format kto)"
