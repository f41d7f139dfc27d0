"""Profile fitting: KV cache from the config, memory and speed estimates, ladder choice."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from slmforge.export import fit, quality
from slmforge.export.run import Candidate, pick

from slmforge.errors import UserError
from slmforge.profiles import QualityBounds, load_profile

SMOLLM2 = {"num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "hidden_size": 576,
           "head_dim": 64}
# Gemma 3 270M: head_dim 256 is not hidden / heads (160), and the vocabulary is 5.3x SmolLM2's
GEMMA3_270M = {"num_hidden_layers": 18, "num_attention_heads": 4, "num_key_value_heads": 1, "hidden_size": 640,
               "head_dim": 256, "vocab_size": 262_144}


def test_kv_cache_from_config():
    # 30 layers x 3 kv heads x 64 dims x (K, V) x 2 bytes x 4096 positions
    assert fit.kv_cache_bytes(SMOLLM2, 4096, 2) == 30 * 3 * 64 * 2 * 2 * 4096 == 94_371_840
    no_gqa = {"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 64}
    assert fit.kv_cache_bytes(no_gqa, 10, 4) == 2 * 4 * 16 * 2 * 4 * 10


def test_gemma_kv_cache_uses_head_dim_and_overhead_grows_with_vocabulary():
    # 18 layers x 1 kv head x 256 dims x (K, V) x 2 bytes x 1024 positions = 18.9 MB
    assert fit.kv_cache_bytes(GEMMA3_270M, 1024, 2) == 18 * 1 * 256 * 2 * 2 * 1024 == 18_874_368
    gemma = fit.generator_overhead_bytes("gguf", GEMMA3_270M)
    smol = fit.generator_overhead_bytes("gguf", {**SMOLLM2, "vocab_size": 49_152})
    # measured (llama-cpp-python 0.3.36, RSS - file - KV): Gemma 48.0-49.0 MB, SmolLM2 24.3-25.5 MB
    assert 49.0e6 < gemma < 49.0e6 * 1.25 and 25.5e6 < smol < 25.5e6 * 1.3
    assert fit.generator_overhead_bytes("onnx", GEMMA3_270M) == fit.ORT_GENAI_OVERHEAD_BYTES


def test_estimate_memory_and_speed():
    pi = load_profile("raspberry-pi-zero-2w")
    est = fit.estimate("gguf", "Q8_0", 144_810_848, SMOLLM2, pi)
    # the Pi Zero 2 W's runtime: 1,024 positions in a q8_0 cache (34 bytes per 32 values), one stream
    kv = 30 * 3 * 64 * 2 * 1024 * 34 // 32
    assert est.kv_bytes == kv and est.kv_plan == "1024 q8_0"
    assert est.memory_bytes == 144_810_848 + kv + fit.LLAMACPP_OVERHEAD_BYTES + fit.RUNTIME_PROCESS_BYTES
    assert est.decode_tok_s == pytest.approx(pi.memory_bandwidth_gbs * 1e9 / (144_810_848 + kv), rel=1e-3)
    assert est.fits_memory == (est.memory_bytes <= pi.app_memory_bytes)
    assert "app memory" in est.why(pi) and "tok/s" in est.why(pi)


def test_fit_budgets_the_cache_the_runtime_allocates_on_each_profile():
    """The window, cache type and streams come from the runtime's own rules, so export and `serve` cannot drift."""
    from slmforge.runtime.answer.engine import fast_path_for
    from slmforge.runtime.generate.batched import profile_parallel

    zero, laptop, phone = (load_profile(n) for n in ("raspberry-pi-zero-2w", "laptop-x86-16gb", "android-midrange-8gb"))
    assert fit.runtime_memory("gguf", SMOLLM2, zero) == fit.RuntimeMemory(1024, "q8_0", 34 / 32, 1, 1)
    # laptop: max_context 8192 but the runtime's window is 1,024; serve --parallel 4 adds a batched context of 5 streams
    assert fast_path_for(laptop).max_n_ctx == 1024 and profile_parallel(laptop.name) == laptop.parallel == 4
    assert fit.runtime_memory("gguf", SMOLLM2, laptop) == fit.RuntimeMemory(1024, "f16", 2.0, 6, 2)
    est = fit.estimate("gguf", "Q8_0", 144_810_848, SMOLLM2, laptop)
    stream = fit.kv_cache_bytes(SMOLLM2, 1024, 2)
    assert est.kv_bytes == 6 * stream and est.overhead_bytes == 2 * fit.LLAMACPP_OVERHEAD_BYTES
    assert est.decode_tok_s == pytest.approx(laptop.memory_bandwidth_gbs * 1e9 / (144_810_848 + stream), rel=1e-3)
    assert fit.runtime_memory("gguf", SMOLLM2, phone).kv_streams == 1 + phone.parallel + 1
    # heads llama.cpp cannot quantize (16 dims) keep an f16 cache even where the profile asks for q8_0
    assert fit.runtime_memory("gguf", {**SMOLLM2, "head_dim": 16}, zero).kv_type == "f16"
    # onnxruntime-genai: float32 for the profile's whole max_context, one sequence
    assert fit.runtime_memory("onnx", SMOLLM2, laptop) == fit.RuntimeMemory(8192, "float32", 4, 1, 1)


def _picker(sizes: dict[str, int], profile_name: str, **changes):
    profile = load_profile(profile_name).model_copy(update=changes)
    built: list[str] = []

    def build(quant: str) -> Candidate:
        built.append(quant)
        return Candidate("gguf", quant, Path(quant), sizes[quant], None,
                         fit.estimate("gguf", quant, sizes[quant], SMOLLM2, profile))

    def nominal(quant: str) -> int:
        return sizes[quant] // 2  # optimistic guesses: the measured size must decide

    return profile, built, build, nominal


def test_pick_takes_best_quant_whose_measured_size_fits():
    sizes = {"Q8_0": 600_000_000, "Q6_K": 300_000_000, "Q4_K_M": 150_000_000, "Q2_K": 100_000_000}
    # 500 MB app memory: Q4_K_M's 150 MB + KV + generator + the runtime process (~465 MB) fit, Q6_K's do not
    profile, built, build, nominal = _picker(sizes, "raspberry-pi-zero-2w", app_memory_gb=0.5)
    discarded: list[str] = []
    chosen, rejected = pick(list(sizes), nominal, build, lambda c: discarded.append(c.quant), SMOLLM2, "gguf",
                            profile)
    assert chosen.quant == "Q4_K_M"
    assert discarded == ["Q6_K"] and len(rejected) == 2
    assert built == ["Q6_K", "Q4_K_M"]  # Q8_0 never built: even its nominal size cannot fit


def test_pick_refuses_in_one_line_when_nothing_fits():
    sizes = {"Q8_0": 4_000_000_000, "Q2_K": 1_000_000_000}
    profile, _, build, nominal = _picker(sizes, "raspberry-pi-zero-2w")
    with pytest.raises(UserError, match="no GGUF quantization of this model fits profile 'raspberry-pi-zero-2w'"):
        pick(list(sizes), nominal, build, lambda c: None, SMOLLM2, "gguf", profile)


def test_pick_refusal_names_the_shortfall_in_mb():
    # Gemma 3 270M on the Pi Zero 2 W (300 MB): even a 200 MB file + KV@1024 q8_0 10.0 + generator 58.7 + runtime
    # process 270.5 = 539 MB, 239 MB short
    profile = load_profile("raspberry-pi-zero-2w")
    sizes = {"Q8_0": 291_000_000, "Q2_K": 200_000_000}

    def build(quant: str) -> Candidate:
        return Candidate("gguf", quant, Path(quant), sizes[quant], None,
                         fit.estimate("gguf", quant, sizes[quant], GEMMA3_270M, profile))

    with pytest.raises(UserError) as err:
        pick(list(sizes), lambda q: sizes[q], build, lambda c: None, GEMMA3_270M, "gguf", profile)
    expected = fit.estimate("gguf", "Q2_K", 200_000_000, GEMMA3_270M, profile)
    short = (expected.memory_bytes - profile.app_memory_bytes) / 1e6
    # skipped on nominal size (never built): the shortfall is a lower bound and says so
    assert (f"the smallest, Q2_K at est. {expected.memory_bytes / 1e6:.0f} MB on its nominal size (a lower bound), "
            f"is at least {short:.0f} MB short of 300 MB") in str(err.value)
    assert "\n" not in str(err.value)


def test_refusal_reports_the_smallest_built_file_over_a_nominal_guess():
    # SmolLM2 on a Pi Zero 2 W with 370 MB: Q3_K_M skipped on its nominal 66 MB (really 93.5), Q2_K's nominal 44 MB
    # fits, built it is 88.2 MB and does not
    profile = load_profile("raspberry-pi-zero-2w").model_copy(update={"app_memory_gb": 0.37})
    nominal = {"Q3_K_M": 66_000_000, "Q2_K": 44_000_000}
    real = {"Q2_K": 88_200_000}

    def build(quant: str) -> Candidate:
        return Candidate("gguf", quant, Path(quant), real[quant], None,
                         fit.estimate("gguf", quant, real[quant], SMOLLM2, profile))

    with pytest.raises(UserError) as err:
        pick(["Q3_K_M", "Q2_K"], nominal.__getitem__, build, lambda c: None, SMOLLM2, "gguf", profile)
    built = fit.estimate("gguf", "Q2_K", 88_200_000, SMOLLM2, profile)
    assert (f"the smallest built, Q2_K (88 MB file) at est. {built.memory_bytes / 1e6:.0f} MB, is "
            f"{(built.memory_bytes - 370e6) / 1e6:.0f} MB short of 370 MB") in str(err.value)
    assert "\n" not in str(err.value)


def test_pick_refuses_too_slow_for_target():
    sizes = {"Q8_0": 150_000_000}
    profile, _, build, nominal = _picker(sizes, "raspberry-pi-zero-2w", target_decode_tok_s=50.0)
    with pytest.raises(UserError, match="< target 50"):
        pick(["Q8_0"], nominal, build, lambda c: None, SMOLLM2, "gguf", profile)


def test_quality_compare_and_gate():
    rng = np.random.default_rng(0)
    windows = [list(rng.integers(0, 50, 33))]
    logits = rng.normal(0, 3, (32, 50)).astype(np.float32)
    lp = quality._log_softmax(logits)
    reference = quality.Reference(windows, [lp.astype(np.float16)], quality._perplexity([lp], windows))
    same = quality.compare(reference, iter([logits]))
    assert same.ppl_ratio == pytest.approx(1.0, abs=1e-3)
    assert same.kl_mean == pytest.approx(0.0, abs=1e-3) and same.top1_agreement == 1.0
    bounds = QualityBounds()
    noisy, passed, verdict = quality.evaluate(reference, lambda: iter([logits + rng.normal(0, 3, logits.shape)]),
                                              "Q4_K_M", bounds)
    assert noisy.kl_mean > 0.1 and noisy.top1_agreement < 1.0
    assert not passed and f"> {np.log(bounds.max_ppl_ratio_low_bit):.4f} (ln 1.1)" in verdict


def test_gate_holds_kl_to_the_same_allowance_as_the_perplexity_ratio():
    """A ratio under 1 cannot pass a quant that moved the distribution (Gemma 3 270M's Q3_K_M did, before)."""
    bounds = QualityBounds()

    def report(ratio: float, kl: float) -> quality.QualityReport:
        return quality.QualityReport(ppl_source=15.0, ppl_exported=15.0 * ratio, ppl_ratio=ratio, kl_mean=kl,
                                     top1_agreement=0.9, tokens=512)

    assert quality.kl_bound(1.10) == pytest.approx(0.0953, abs=1e-4)
    # measured: Gemma 3 270M Q3_K_M (ratio 0.9165, KL 0.388) fails; its Q4_K_M (KL 0.077) and SmolLM2's (1.0308,
    # 0.049) pass; SmolLM2 Q8_0 (1.0069, 0.004) passes the 8-bit bounds (1.02, KL 0.0198)
    passed, verdict = quality.judge(report(0.9165, 0.388), "Q3_K_M", bounds, "profile 'phone'")
    assert not passed and verdict == ("perplexity ratio 0.9165 <= 1.1 and mean KL 0.3880 > 0.0953 (ln 1.1) "
                                      "(bounds for low quants of profile 'phone')")
    assert quality.judge(report(0.93, 0.077), "Q4_K_M", bounds)[0]
    assert quality.judge(report(1.0308, 0.049), "Q4_K_M", bounds)[0]
    assert quality.judge(report(1.0069, 0.004), "Q8_0", bounds)[0]
    assert not quality.judge(report(1.0069, 0.03), "Q8_0", bounds)[0]  # KL over ln 1.02
    assert not quality.judge(report(1.2, 0.01), "Q4_K_M", bounds)[0]  # the ratio still counts


def test_gate_windows_end_each_text_with_eos_like_the_trainer(tiny_checkpoint: Path):
    from transformers import AutoTokenizer

    from slmforge.perplexity import token_stream

    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    texts = ["How do I copy a file?", "Lists are mutable."]
    windows = quality.token_windows(tiny_checkpoint, texts, 1000, 1000)
    stream = [t for w in windows for t in w]
    assert stream.count(tokenizer.eos_token_id) == 2 and stream[-1] == tokenizer.eos_token_id
    assert stream == token_stream(lambda t: tokenizer(t, add_special_tokens=False)["input_ids"], texts,
                                  tokenizer.eos_token_id)


def test_footprint_policy_takes_the_smallest_quant_that_passes_the_gate():
    sizes = {"Q8_0": 291_000_000, "Q5_K_M": 240_000_000, "Q4_0": 230_000_000, "Q2_K": 200_000_000}
    ratios = {"Q8_0": 1.001, "Q5_K_M": 1.03, "Q4_0": 1.08, "Q2_K": 1.9}
    profile, built, build, nominal = _picker(sizes, "android-midrange-8gb", quant_policy="footprint")

    def passes(candidate: Candidate) -> bool:
        bound = quality.gate_bound(candidate.quant, profile.quality_gate)
        candidate.gate = {"passed": ratios[candidate.quant] <= bound,
                          "verdict": f"perplexity ratio {ratios[candidate.quant]} vs {bound}"}
        return candidate.gate["passed"]

    discarded: list[str] = []
    chosen, rejected = pick(list(sizes), nominal, build, lambda c: discarded.append(c.quant), SMOLLM2, "gguf",
                            profile, passes)
    assert chosen.quant == "Q4_0" and built == ["Q2_K", "Q4_0"] and discarded == ["Q2_K"]
    assert rejected == ["Q2_K: quality gate perplexity ratio 1.9 vs 1.1"]
    # the default policy on the same figures keeps the best that fits, without gating on the way
    chosen, _ = pick(list(sizes), nominal, _picker(sizes, "android-midrange-8gb")[2], lambda c: None, SMOLLM2,
                     "gguf", profile)
    assert chosen.quant == "Q8_0"


def test_footprint_policy_refuses_when_no_quant_passes_the_gate():
    sizes = {"Q8_0": 291_000_000, "Q2_K": 200_000_000}
    profile, _, build, nominal = _picker(sizes, "android-midrange-8gb", quant_policy="footprint")

    def fails(candidate: Candidate) -> bool:
        candidate.gate = {"passed": False, "verdict": "perplexity ratio 1.5 > bound"}
        return False

    with pytest.raises(UserError, match="both fits profile 'android-midrange-8gb' and passes its quality gate"):
        pick(list(sizes), nominal, build, lambda c: None, SMOLLM2, "gguf", profile, fails)


def test_gate_tops_a_short_heldout_split_up_from_the_next_source(tiny_checkpoint: Path, corpus_dir: Path, tmp_path: Path):
    """A 2-piece held-out split alone gives the gate a few hundred tokens; the documents named after it fill
    the gate's eval_tokens, and the reuse key names both sources (an export on the split alone is not reused)."""
    from slmforge.export.run import ExportOptions, heldout_texts

    split = tmp_path / "heldout.jsonl"
    split.write_text(json.dumps({"text": "How do I copy a file? Use shutil.copy()."}) + "\n")
    alone, alone_key = heldout_texts(ExportOptions(formats=["gguf"], heldout=[split], eval_tokens=512))
    both, key = heldout_texts(ExportOptions(formats=["gguf"], heldout=[split, corpus_dir / "faq"], eval_tokens=512))
    assert both[: len(alone)] == alone and len(both) > len(alone)
    assert sum(map(len, quality.token_windows(tiny_checkpoint, alone, 512, 512))) < 64
    assert sum(map(len, quality.token_windows(tiny_checkpoint, both, 512, 512))) == 512
    assert key["sha256"] != alone_key["sha256"] and str(corpus_dir / "faq") in key["path"]


def test_fit_sweep_reproduces_the_real_choices_and_names_where_they_part():
    """The nominal-size sweep of bench/dev/fit_sweep.py walks export's own fit: on SmolLM2-135M it must give
    what the real exports chose (docs/gemma.md), and from ~1B parameters the profiles must part."""
    from slmforge.bench.dev.fit_sweep import MODELS, choose, parameters

    from slmforge.profiles import load_profile

    assert parameters(MODELS["SmolLM2-135M"]) == pytest.approx(134_515_008, rel=0.005)  # the checkpoint's count
    names = ("jetson-orin-nano-8gb", "laptop-x86-16gb", "raspberry-pi-5-8gb", "android-midrange-8gb",
             "raspberry-pi-zero-2w")

    def picks(model: str) -> list[str | None]:
        return [choose(MODELS[model], parameters(MODELS[model]), load_profile(n))["choice"] for n in names]

    assert picks("SmolLM2-135M") == ["Q8_0", "Q8_0", "Q8_0", "Q4_K_M", None]
    assert picks("Gemma-3-270M") == ["Q8_0", "Q8_0", "Q8_0", "Q4_K_M", None]
    # a 1.2B model no longer reads fast enough at Q8_0 on the laptop (25 tok/s) or the Pi 5 (10 tok/s)
    assert picks("Llama-3.2-1B") == ["Q8_0", "Q6_K", "Q6_K", "Q4_K_M", None]
