"""Which GGUF quant would each shipped profile take for models of other sizes? export's own fit rules on
nominal file sizes, no weights.

Why: issue #20 asks three profiles to choose three different (format, quant) for one model. The two real
models this machine has offline (SmolLM2-135M, Gemma 3 270M) are small enough that every profile but the
Pi Zero 2 W holds Q8_0 at its target speed, so the quality policy keeps Q8_0 and the phones' footprint policy
takes the smallest rung that passes the gate. This sweep runs the same walk (``export.run.pick`` with
``export.fit.estimate``: best-first for ``quant_policy: quality``, smallest-first for ``footprint``) over the
published configs of larger models, so the size at which the choices part is a number, not a guess.
Two stand-ins, said in the output: sizes are llama.cpp's nominal bits per weight (real files are larger
when rows are not a multiple of 256, as on SmolLM2-135M), and the quality gate is taken as measured on the
two real models (Q4_K_M and above passed on both; Q4_0, Q3_K_M and Q2_K failed on both).

    python -m slmforge.bench.dev.fit_sweep [--out bench/results/fit_sweep.json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from slmforge.export import fit
from slmforge.export.quantize import LADDER, NOMINAL_BPW
from slmforge.export.run import Candidate, pick

from slmforge.errors import UserError
from slmforge.fileio import atomic_write_json
from slmforge.output import format_table
from slmforge.profiles import DeviceProfile, list_profiles


def _config(hidden: int, layers: int, heads: int, kv_heads: int, mlp: int, vocab: int, head_dim: int | None = None) -> dict:
    """The config.json fields the fit reads (and the MLP width for the parameter count); tied embeddings."""
    config = {"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
              "num_key_value_heads": kv_heads, "intermediate_size": mlp, "vocab_size": vocab, "tie_word_embeddings": True}
    return config | ({"head_dim": head_dim} if head_dim else {})


# Published HF configs (config.json of each model card).
MODELS: dict[str, dict[str, Any]] = {
    "SmolLM2-135M": _config(576, 30, 9, 3, 1536, 49152),
    "Gemma-3-270M": _config(640, 18, 4, 1, 2048, 262144, head_dim=256),
    "SmolLM2-360M": _config(960, 32, 15, 5, 2560, 49152),
    "Qwen2.5-0.5B": _config(896, 24, 14, 2, 4864, 151936),
    "Llama-3.2-1B": _config(2048, 16, 32, 8, 8192, 128256),
    "Qwen2.5-1.5B": _config(1536, 28, 12, 2, 8960, 151936),
    "SmolLM2-1.7B": _config(2048, 24, 32, 32, 8192, 49152),
    "Llama-3.2-3B": _config(3072, 28, 24, 8, 8192, 128256),
}
# The gate's verdicts on both real models (docs/export.md, docs/gemma.md): these rungs failed, the others passed.
GATE_FAILED = frozenset({"Q4_0", "Q3_K_M", "Q2_K"})


def parameters(config: dict[str, Any]) -> int:
    """Weights of a decoder-only transformer from its config (norms left out: < 0.1 %)."""
    h, layers, inter, vocab = (config[k] for k in ("hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size"))
    head_dim = config.get("head_dim") or h // config["num_attention_heads"]
    attention = h * head_dim * (2 * config["num_attention_heads"] + 2 * config["num_key_value_heads"])
    embeddings = vocab * h * (1 if config.get("tie_word_embeddings") else 2)
    return embeddings + layers * (attention + 3 * h * inter)


def choose(config: dict[str, Any], params: int, profile: DeviceProfile) -> dict[str, Any]:
    """The rung export's own walk (``export.run.pick``) keeps on ``profile`` when every candidate is its nominal
    size, and why the others lost; a walk that finds nothing is ``choice: None`` with export's one line."""
    def nominal(quant: str) -> int:
        return fit.nominal_weights_bytes(params, NOMINAL_BPW[quant])

    def build(quant: str) -> Candidate:
        est = fit.estimate("gguf", quant, nominal(quant), config, profile, measured=False)
        return Candidate("gguf", quant, Path(f"nominal-{quant}.gguf"), nominal(quant), NOMINAL_BPW[quant], est,
                         gate={"verdict": "fail (as on the real models)"} if quant in GATE_FAILED else None)

    gate = (lambda c: c.quant not in GATE_FAILED) if profile.quant_policy == "footprint" else None
    try:
        chosen, rejected = pick(list(LADDER), nominal, build, lambda c: None, config, "gguf", profile, gate)
    except UserError as exc:
        return {"choice": None, "refusal": str(exc)}
    # a quality-policy walk gates only its choice: a rung that failed on the real models would exit 3 there
    return {"choice": chosen.quant, "memory_mb": round(chosen.estimate.memory_bytes / fit.MB),
            "decode_tok_s": chosen.estimate.decode_tok_s,
            "gate_expected": "fail" if chosen.quant in GATE_FAILED else "pass", "rejected": rejected}


def _cell(choice: dict[str, Any]) -> str:
    if not choice["choice"]:
        return "refused"
    return choice["choice"] + (" (gate fail)" if choice["gate_expected"] == "fail" else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/fit_sweep.json"))
    args = parser.parse_args(argv)
    shipped = list_profiles(include_host=False)
    rows, table = [], []
    for name, config in MODELS.items():
        params = parameters(config)
        choices = {p.name: choose(config, params, p) for p in shipped}
        distinct = sorted({c["choice"] for c in choices.values() if c.get("gate_expected") == "pass"}, key=LADDER.index)
        rows.append({"model": name, "parameters": params, "choices": choices, "distinct_choices": distinct})
        table.append((name, f"{params / 1e6:.0f}M", *(_cell(choices[p.name]) for p in shipped), len(distinct)))
    atomic_write_json(args.out, {"assumptions": {"sizes": "nominal bits per weight (quantize.NOMINAL_BPW)",
                                                 "gate_failed": sorted(GATE_FAILED)},
                                 "profiles": [p.name for p in shipped], "rows": rows})
    print(format_table(("model", "params", *(p.name for p in shipped), "distinct passing"), table))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
