"""`slmforge export --profile P` for every shipped profile (and host): what each device gets.

Runs the real CLI once per profile (as a user would), then prints one table: profile, quant,
size, est. memory, est. decode, perplexity ratio, gate — or the one-line refusal.

    python -m slmforge.bench.dev.export_profiles --model CKPT --out /tmp/exports --eval-tokens 1024
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from slmforge.output import format_table
from slmforge.profiles import profile_paths

HEADERS = ["profile", "exit", "quant", "size MB", "bits/w", "est. mem MB", "app mem MB", "est. tok/s", "ppl ratio",
           "gate", "or why not"]


def export_one(model: Path, profile: str, out: Path, extra: list[str]) -> tuple[int, dict | None, str]:
    done = subprocess.run([sys.executable, "-m", "slmforge.cli", "export", "--model", str(model), "--profile", profile,
                           "--out", str(out / profile), "--no-embedder", "--json", *extra],
                          capture_output=True, text=True, check=False)
    manifest = json.loads(done.stdout) if done.stdout.strip().startswith("{") else None
    error = next((line for line in reversed(done.stderr.splitlines()) if line.startswith("error:")), "")
    return done.returncode, manifest, error


def rows_for(profile: str, code: int, manifest: dict | None, error: str) -> list[list]:
    from slmforge.profiles import load_profile

    app = load_profile(profile).app_memory_gb * 1e3 if profile != "host" else None
    if not manifest:
        return [[profile, code, "", "", "", "", app, "", "", "", error]]
    return [[profile, code, a["quant"], round(a["size_bytes"] / 1e6, 1), a["bits_per_weight"],
             round(a["est_memory_bytes"] / 1e6), app, a["est_decode_tok_s"], a["ppl_ratio"], a["gate"], ""]
            for a in manifest["artifacts"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--profiles", nargs="*", default=[*profile_paths(), "host"])
    parser.add_argument("--eval-tokens", default="1024")
    parser.add_argument("--threads", help="llama.cpp threads (1 keeps a core free on a shared machine)")
    args = parser.parse_args()
    extra = ["--eval-tokens", args.eval_tokens] + (["--threads", args.threads] if args.threads else [])
    table = []
    for profile in args.profiles:
        code, manifest, error = export_one(args.model, profile, args.out, extra)
        table += rows_for(profile, code, manifest, error)
        print(format_table(HEADERS, table[-1:]).splitlines()[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "profiles.json").write_text(json.dumps([dict(zip(HEADERS, r)) for r in table], indent=2) + "\n")
    print(format_table(HEADERS, table))


if __name__ == "__main__":
    main()
