"""Does a merge keep what its parents know? Held-out perplexity and FAQ-answer quality, merged vs parents.

Each checkpoint is scored the same way in one run: perplexity on the first ``--ppl-tokens``
held-out document tokens (512-token windows, transformers float32); the loss per token of the
reference answers to held-out FAQ questions (chat template, teacher-forced, assistant tokens
only: how likely the model finds the right answer); and token F1 of its greedy, closed-book
answers (no retrieval) against them. The verdict says whether the merge sits between its
parents or above both; for F1, whose per-question spread is large on a few questions, a paired
bootstrap gives the 95 % interval of merged − parent so a gap inside the noise reads as such.

    python -m slmforge.bench.dev.merge_quality --parent runs/x/cpt --parent runs/x/align --merged runs/x/merged \\
        --heldout runs/x/data --qa runs/x/qa/qa.heldout.jsonl [--out result.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from slmforge.bench.metrics import paired_bootstrap, token_f1
from slmforge.bench.quality import load_qa

from slmforge.errors import UserError


def score(checkpoint: Path, texts: list[str], qa: list[tuple[str, str]], ppl_tokens: int,
          max_new_tokens: int) -> dict[str, Any]:
    """Perplexity, reference-answer loss and answer F1 (mean and per question) of one HF checkpoint."""
    import torch
    from slmforge.trainer.train.perplexity import perplexity
    from slmforge.trainer.train.sft import assistant_loss, tokenize_conversation
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    ppl = perplexity(model, tokenizer, texts, seq_len=512, max_tokens=ppl_tokens)
    answer_loss = assistant_loss(model, [tokenize_conversation(tokenizer, [{"role": "user", "content": q},
                                                                           {"role": "assistant", "content": a}])
                                         for q, a in qa])
    f1s = []
    for question, reference in qa:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.eos_token_id)
        answer = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        f1s.append(token_f1(answer, reference))
    return {"path": str(checkpoint), "ppl": round(ppl, 4), "answer_loss": answer_loss,
            "qa_f1": round(sum(f1s) / max(1, len(f1s)), 4), "questions": len(f1s),
            "qa_f1_per_question": [round(f, 4) for f in f1s]}


def verdict(merged: float, parents: list[float], higher_is_better: bool) -> str:
    """'above both', 'between' or 'below both' (for perplexity lower is better)."""
    lo, hi = min(parents), max(parents)
    better = merged >= hi if higher_is_better else merged <= lo
    worse = merged < lo if higher_is_better else merged > hi
    return "above both" if better else ("below both" if worse else "between")


METRICS = {"ppl": False, "answer_loss": False, "qa_f1": True}  # name → higher is better


def judge(merged: dict[str, Any], parents: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Where the merge sits on each metric, and its per-question F1 against each parent (paired bootstrap)."""
    places = {name: verdict(merged[name], [p[name] for p in parents.values()], higher) for name, higher in METRICS.items()}
    noise = {path: paired_bootstrap(merged["qa_f1_per_question"], p["qa_f1_per_question"]) for path, p in parents.items()}
    return {**places, "qa_f1_vs_parents": noise}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parent", type=Path, action="append", required=True, help="a parent checkpoint (twice)")
    parser.add_argument("--merged", type=Path, action="append", required=True,
                        help="a merged checkpoint (repeat to compare several merges against the same parents)")
    parser.add_argument("--heldout", type=Path, required=True, help="dataset dir or .jsonl with held-out text")
    parser.add_argument("--qa", type=Path, required=True, help="held-out Q&A JSONL (messages or alpaca)")
    parser.add_argument("--ppl-tokens", type=int, default=2048)
    parser.add_argument("--qa-limit", type=int, default=17)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    from slmforge.fileio import atomic_write_json
    from slmforge.heldout import load_heldout_texts

    try:
        texts = load_heldout_texts(args.heldout)
        qa = load_qa(args.qa)[: args.qa_limit]
        rows = {str(p): score(p, texts, qa, args.ppl_tokens, args.max_new_tokens) for p in [*args.parent, *args.merged]}
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    verdicts = {str(m): judge(rows[str(m)], {str(p): rows[str(p)] for p in args.parent}) for m in args.merged}
    first = verdicts[str(args.merged[0])]
    result = {
        "models": rows,
        "ppl_verdict": first["ppl"],  # of the first --merged, as before several could be given
        "answer_loss_verdict": first["answer_loss"],
        "qa_f1_verdict": first["qa_f1"],
        "verdicts": verdicts,
        "settings": {"ppl_tokens": args.ppl_tokens, "qa_questions": len(qa), "max_new_tokens": args.max_new_tokens},
    }
    if args.out:
        atomic_write_json(args.out, result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
