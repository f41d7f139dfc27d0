"""Export's Q8_0 against its float32 source with and without BOS before the held-out text (issue #20).

Gemma is trained with BOS first; the gate built its windows without it, and the adapted Gemma 3 270M's
Q8_0 failed (perplexity ratio 1.081 on the recipe's 447 held-out tokens) while its F32 export matched
transformers (max |Δlogit| 0.023, ``export_logits``). Per checkpoint/GGUF pair, one window of the
held-out stream (each text followed by EOS, cut at ``--tokens``), once as it comes and once with BOS
first: transformers' and llama.cpp's logits at every position, perplexity of each, their ratio (also
without the first 3 positions), max |Δlogit| and the positions whose NLL moved most.

    python -m slmforge.bench.dev.gate_bos --pair CKPT=FILE.gguf [--pair ...] --heldout heldout.jsonl --out x.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from slmforge.heldout import load_heldout_texts
from slmforge.perplexity import token_stream, token_windows, window_nll


def measure(checkpoint: Path, gguf: Path, texts: list[str], tokens: int) -> dict[str, Any]:
    import torch
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    llm = Llama(model_path=str(gguf), n_ctx=1024, logits_all=True, n_threads=1, verbose=False)
    out: dict[str, Any] = {"checkpoint": str(checkpoint), "gguf": str(gguf)}
    try:
        for bos in (False, True):
            ids = token_stream(lambda t: tok(t, add_special_tokens=False)["input_ids"], texts, tok.eos_token_id, tokens)
            window = token_windows(([tok.bos_token_id] if bos else []) + ids, tokens)[0]
            with torch.no_grad():
                hf = model(torch.tensor([window])).logits[0].float().numpy()
            llm.reset()
            llm.eval(window)
            cpp = np.array(llm.scores[: len(window)])
            a, b = window_nll(hf, window), window_nll(cpp, window)
            d = b - a
            top = np.argsort(-np.abs(d))[:6]
            out["with_bos" if bos else "without_bos"] = {
                "predicted": len(d), "ppl_source": round(float(np.exp(a.mean())), 3),
                "ppl_exported": round(float(np.exp(b.mean())), 3), "ppl_ratio": round(float(np.exp(d.mean())), 4),
                "ppl_ratio_from_position_3": round(float(np.exp(d[3:].mean())), 4),
                "max_abs_dlogit": round(float(np.abs(hf - cpp).max()), 3),
                "largest_nll_moves": [{"position": int(i), "dnll": round(float(d[i]), 2), "nll_source": round(float(a[i]), 2)}
                                      for i in top]}
    finally:
        llm.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", action="append", required=True, help="CHECKPOINT=GGUF (repeatable)")
    parser.add_argument("--heldout", type=Path, required=True)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    texts = load_heldout_texts(args.heldout)
    rows = []
    for pair in args.pair:
        ckpt, gguf = pair.split("=", 1)
        rows.append(measure(Path(ckpt), Path(gguf), texts, args.tokens))
        print(json.dumps(rows[-1]), flush=True)
    args.out.write_text(json.dumps({"heldout": str(args.heldout), "tokens": args.tokens, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
