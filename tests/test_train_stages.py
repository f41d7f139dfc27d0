"""Each training stage on the tiny model: packing, loss masks, outputs, manifests, lineage."""

from __future__ import annotations

import contextlib
import functools
import json
import operator
from pathlib import Path

import pytest
import torch
from slmforge.trainer.train.common import TrainOptions, work_dir_for

from tests.conftest import run_cli

DOC = ("Lists are mutable sequences; tuples are immutable. How do I copy a file? Use shutil.copy(). "
       "Exceptions are raised with raise and handled with try and except clauses. ")
QA = [("How do I copy a file?", "Use shutil.copy()."), ("What is a module?", "A file of Python definitions."),
      ("Are tuples mutable?", "No, tuples are immutable."), ("How do I raise an error?", "Use raise."),
      ("What is a list?", "A mutable sequence."), ("How do I read lines?", "Iterate over the file object.")]


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    (root / "ds").mkdir()
    jsonl(root / "ds" / "train.jsonl", [{"text": DOC * (i + 1), "source": "a.rst", "doc_id": str(i)} for i in range(4)])
    jsonl(root / "ds" / "heldout.jsonl", [{"text": DOC, "source": "b.rst", "doc_id": "9"}])
    chat = jsonl(root / "qa.jsonl", [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
                                     for q, a in QA])
    alpaca = jsonl(root / "alpaca.jsonl", [{"instruction": q, "input": "", "output": a} for q, a in QA])
    prefs = jsonl(root / "prefs.jsonl", [{"prompt": q, "chosen": a, "rejected": QA[(i + 1) % len(QA)][1]}
                                         for i, (q, a) in enumerate(QA)])
    kto = jsonl(root / "kto.jsonl", [{"prompt": q, "completion": c, "label": lab}
                                     for i, (q, a) in enumerate(QA)
                                     for c, lab in ((a, True), (QA[(i + 1) % len(QA)][1], False))])
    return {"ds": root / "ds", "qa": chat, "alpaca": alpaca, "prefs": prefs, "kto": kto}


def opts(model: Path, data: Path, out: Path, **kw) -> TrainOptions:
    base = {"max_steps": 2, "batch_size": 2, "seq_len": 32, "save_every": 0, "eval_tokens": 256, "lr": 1e-3}
    extra = kw.pop("extra", {})
    return TrainOptions(model=model, data=data, out=out, **{**base, **kw}, extra=extra)


def weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path / "model.safetensors")


def manifest(path: Path) -> dict:
    return json.loads((path / "slmforge.json").read_text())


def changed(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return any(not torch.equal(wa[k], wb[k]) for k in wa)


# --------------------------------------------------------------------------- packing and masks

def test_cpt_blocks_are_full_and_cover_the_stream_in_order(tiny_checkpoint):
    from slmforge.trainer.train.pretrain import pack_blocks
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_checkpoint)
    blocks = pack_blocks(tok, [DOC, DOC * 2], seq_len=16)
    stream = tok(DOC, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert all(len(b) == 16 for b in blocks)
    assert functools.reduce(operator.iadd, blocks, [])[: len(stream)] == stream


def test_sft_learns_only_assistant_tokens_and_the_closing_eos(tiny_checkpoint):
    from slmforge.trainer.train.sft import IGNORE, tokenize_conversation
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_checkpoint)
    msgs = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Again?"}, {"role": "assistant", "content": "Yes."}]
    ids, labels = tokenize_conversation(tok, msgs)
    assert tok.decode(ids) == tok.apply_chat_template(msgs, tokenize=False)
    learned = [i for i, lab in zip(ids, labels) if lab != IGNORE]
    assert tok.decode(learned) == "Hello.<|im_end|>Yes.<|im_end|>"
    assert [lab for lab in labels if lab != IGNORE] == learned


def test_packed_examples_do_not_attend_to_each_other(tiny_checkpoint):
    from slmforge.trainer.train.common import load_model_and_tokenizer
    from slmforge.trainer.train.sft import PackedCollator, pack_examples

    model = load_model_and_tokenizer(tiny_checkpoint)[0].eval()
    assert model.config.use_cache is False  # with a KV cache transformers would ignore the packing
    a, b, c = list(range(5, 17)), list(range(20, 27)), list(range(30, 50))
    rows = pack_examples([(a, a), (b, b), (c, c)], row_len=24)
    assert sorted(len(r["input_ids"]) for r in rows) == [19, 20]  # c alone; a and b share a row
    row = next(r for r in rows if len(r["input_ids"]) == 19)
    assert row["position_ids"] == list(range(12)) + list(range(7))
    batch = PackedCollator(pad_id=0)(rows)
    assert batch["input_ids"].shape == (2, 20) and (batch["labels"][batch["input_ids"] == 0] == -100).all()
    with torch.no_grad():
        packed = model(input_ids=torch.tensor([row["input_ids"]]), position_ids=torch.tensor([row["position_ids"]])).logits
        alone = [model(input_ids=torch.tensor([x])).logits for x in (a, b)]
    assert torch.allclose(packed, torch.cat(alone, dim=1), atol=1e-5)


def packed_batch() -> dict[str, torch.Tensor]:
    """Two packed SFT-like rows (3 examples + a padding 'example'), labels on the second half of each."""
    from slmforge.trainer.train.sft import PackedCollator, pack_examples

    examples = []
    for n, first in ((14, 5), (9, 40), (20, 60)):
        ids = list(range(first, first + n))
        examples.append((ids, [-100] * (n // 2) + ids[n // 2:]))
    return PackedCollator(pad_id=0)(pack_examples(examples, row_len=24))


def loss_and_grads(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad()
    out = model(**batch)
    out.loss.backward()
    return out, [p.grad.clone() for p in model.parameters()]


def test_packed_attention_gives_transformers_numbers_per_example(tiny_checkpoint):
    from slmforge.trainer.train.common import load_model_and_tokenizer
    from slmforge.trainer.train.packed_attention import NAME, packed_attention

    model = load_model_and_tokenizer(tiny_checkpoint)[0]
    full = {k: v for k, v in packed_batch().items() if k in ("input_ids", "labels", "position_ids")}
    assert (full["position_ids"] == 0).sum() >= 4  # several examples per row: the mask path is exercised
    reference, ref_grads = loss_and_grads(model, full)  # transformers' block-diagonal mask (sdpa)
    with packed_attention(model) as used:
        assert used and model.config._attn_implementation == NAME
        ours, grads = loss_and_grads(model, full)
    assert model.config._attn_implementation == "sdpa"  # restored: eval, generation and saving see the usual one
    assert torch.allclose(ours.logits, reference.logits, atol=1e-5)
    assert abs(ours.loss.item() - reference.loss.item()) < 1e-6
    assert all(torch.allclose(g, r, atol=1e-6) for g, r in zip(grads, ref_grads))


def test_sft_batches_project_only_trained_positions_onto_the_vocabulary(tiny_checkpoint):
    from slmforge.trainer.train.common import load_model_and_tokenizer
    from slmforge.trainer.train.packed_attention import packed_attention

    model = load_model_and_tokenizer(tiny_checkpoint)[0]
    batch = packed_batch()
    keep = batch["logits_to_keep"]
    assert keep.dtype == torch.bool and keep.shape == batch["input_ids"].shape
    assert int(keep.sum()) == len(batch["shift_labels"]) == int((batch["labels"] != -100).sum())
    full = {k: v for k, v in batch.items() if k in ("input_ids", "labels", "position_ids")}
    reference, ref_grads = loss_and_grads(model, full)
    with packed_attention(model):
        ours, grads = loss_and_grads(model, batch)
    assert ours.logits.shape == (int(keep.sum()), model.config.vocab_size)
    assert abs(ours.loss.item() - reference.loss.item()) < 1e-5
    assert all(torch.allclose(g, r, atol=1e-6) for g, r in zip(grads, ref_grads))


def test_one_row_per_step_trains_what_seq_len_rows_train_without_their_padding(tiny_checkpoint):
    """step_layout's budget row: same loss and gradients as the same examples in padded seq_len rows."""
    from slmforge.trainer.train.common import load_model_and_tokenizer
    from slmforge.trainer.train.packed_attention import packed_attention
    from slmforge.trainer.train.sft import PackedCollator, pack_examples, step_layout

    assert step_layout(24, 3, per_example_attention=True) == (72, 1)
    assert step_layout(24, 3, per_example_attention=False) == (24, 3)
    examples = [(list(range(f, f + n)), [-100] * (n // 2) + list(range(f + n // 2, f + n)))
                for f, n in ((5, 14), (40, 9), (60, 20), (90, 11), (120, 17))]
    narrow = PackedCollator(pad_id=0)(pack_examples(examples, row_len=24))
    wide = PackedCollator(pad_id=0)(pack_examples(examples, row_len=72))
    assert narrow["input_ids"].shape == (4, 23) and (narrow["input_ids"] == 0).sum() == 4 * 23 - 71
    assert wide["input_ids"].shape == (1, 71)  # every position a real token
    model = load_model_and_tokenizer(tiny_checkpoint)[0]
    with packed_attention(model):
        reference, ref_grads = loss_and_grads(model, narrow)
        ours, grads = loss_and_grads(model, wide)
    assert abs(ours.loss.item() - reference.loss.item()) < 1e-5
    assert all(torch.allclose(g, r, atol=1e-6) for g, r in zip(grads, ref_grads))


def test_packed_attention_leaves_padded_batches_to_the_padding_mask(tiny_checkpoint):
    from slmforge.trainer.train.common import load_model_and_tokenizer
    from slmforge.trainer.train.packed_attention import packed_attention

    model = load_model_and_tokenizer(tiny_checkpoint)[0].eval()
    ids = torch.tensor([[0, 0, 0, 5, 6, 7, 8, 9], [10, 11, 12, 13, 14, 15, 16, 17]])
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1], [1] * 8])
    with torch.no_grad():
        reference = model(input_ids=ids, attention_mask=mask).logits
        with packed_attention(model) as used:
            assert used
            ours = model(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(ours[mask.bool()], reference[mask.bool()], atol=1e-5)


def test_an_examples_last_token_predicts_nothing_even_before_a_trained_first_token():
    from slmforge.trainer.train.sft import PackedCollator, pack_examples

    a, b = list(range(5, 12)), list(range(20, 26))
    rows = pack_examples([(a, [-100] * 3 + a[3:]), (b, b)], row_len=16)  # b is trained from its first token on
    batch = PackedCollator(pad_id=0)(rows)
    assert len(rows) == 1 and batch["shift_labels"].tolist() == a[3:] + b[1:]
    assert not PackedCollator(pad_id=0, trained_logits_only=False)(rows).keys() & {"logits_to_keep", "shift_labels"}


def test_a_trainer_step_on_trained_logits_only_equals_the_full_logits_step(tiny_checkpoint, tmp_path):
    """Through the HF Trainer and a LoRA wrapper: the loss scaling (num_items_in_batch) and the weights after a step."""
    from slmforge.trainer.train.common import load_model_and_tokenizer, wrap_lora
    from slmforge.trainer.train.packed_attention import packed_attention
    from slmforge.trainer.train.sft import PackedCollator, build_trainer, pack_examples

    examples = [(list(range(f, f + n)), [-100] * (n // 2) + list(range(f + n // 2, f + n)))
                for f, n in ((5, 14), (40, 9), (60, 20), (90, 11))]
    rows = pack_examples(examples, row_len=24)
    after = {}
    for side in ("full", "trained-only"):
        torch.manual_seed(0)
        model, tok = load_model_and_tokenizer(tiny_checkpoint)
        model = wrap_lora(model, opts(tiny_checkpoint, tiny_checkpoint, tmp_path / side))
        trainer = build_trainer(model, tok, rows, opts(tiny_checkpoint, tiny_checkpoint, tmp_path / side,
                                                       max_steps=1, batch_size=len(rows), save_every=0),
                                tmp_path / side)
        trainer.data_collator = PackedCollator(tok.pad_token_id, trained_logits_only=side == "trained-only")
        trainer.args.optim = "sgd"  # Adam's first step divides by |gradient|, which blows float noise up to ~lr
        before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        with packed_attention(trainer.model) if side == "trained-only" else contextlib.nullcontext():
            loss = trainer.train().training_loss
        after[side] = (loss, {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
        assert any(not torch.equal(before[n], w) for n, w in after[side][1].items())  # the step did train
    assert abs(after["full"][0] - after["trained-only"][0]) < 1e-5
    worst = max(float((after["full"][1][n] - w).abs().max()) for n, w in after["trained-only"][1].items())
    assert worst < 1e-6, worst


def test_cpt_documents_in_a_block_do_not_attend_to_each_other(tiny_checkpoint):
    from slmforge.trainer.train.common import load_model_and_tokenizer
    from slmforge.trainer.train.packed_attention import packed_attention
    from slmforge.trainer.train.pretrain import BlockCollator

    model, tok = load_model_and_tokenizer(tiny_checkpoint)
    eos = tok.eos_token_id
    a, b = list(range(5, 15)), list(range(30, 44))
    batch = BlockCollator(eos)([{"input_ids": a + [eos] + b}])
    assert batch["position_ids"][0].tolist() == list(range(11)) + list(range(14))
    assert batch["labels"][0, 11] == -100 and (batch["labels"][0, 1:11] == batch["input_ids"][0, 1:11]).all()
    with torch.no_grad(), packed_attention(model.eval()):
        block = model(**batch).logits
    with torch.no_grad():
        alone = [model(input_ids=torch.tensor([x])).logits for x in (a + [eos], b)]
    assert torch.allclose(block, torch.cat(alone, dim=1), atol=1e-5)


# --------------------------------------------------------------------------- stages end to end

def test_pretrain_lora_merges_and_records_ppl_and_lineage(tiny_checkpoint, data, tmp_path):
    from slmforge.trainer.train.pretrain import train_pretrain
    from transformers import AutoModelForCausalLM

    out = tmp_path / "cpt"
    metrics = train_pretrain(opts(tiny_checkpoint, data["ds"], out))
    m = manifest(out)
    assert m["stage"] == "pretrain" and m["params"]["adapter"] == "lora-merged" and m["seed"] == 0
    assert [i["role"] for i in m["inputs"]] == ["base", "data", "data"] and all(len(i["sha256"]) == 64 for i in m["inputs"])
    assert m["lineage"][-1]["stage"] == "tiny" and m["parent"] == str(tiny_checkpoint.resolve())
    assert metrics["steps"] == 2 and metrics["padding_tokens"] == 0 and metrics["tokens_seen"] == 2 * 2 * 32
    assert metrics["heldout_ppl_before"] > 1 and metrics["heldout_ppl_after"] > 1
    assert not (out / "adapter_config.json").exists() and changed(out, tiny_checkpoint)
    assert json.loads((out / "config.json").read_text())["use_cache"] is True
    assert not work_dir_for(out).exists()
    AutoModelForCausalLM.from_pretrained(out)  # a plain HF checkpoint again


def test_full_finetune_changes_every_trained_tensor(tiny_checkpoint, data, tmp_path):
    from slmforge.trainer.train.pretrain import train_pretrain

    out = tmp_path / "full"
    train_pretrain(opts(tiny_checkpoint, data["ds"], out, full=True, eval_tokens=0))
    assert manifest(out)["params"]["adapter"] == "full"
    base, new = weights(tiny_checkpoint), weights(out)
    assert all(not torch.equal(base[k], new[k]) for k in base if "norm" not in k)


@pytest.mark.parametrize("fmt", ["qa", "alpaca"])
def test_sft_on_each_format(tiny_checkpoint, data, tmp_path, fmt):
    from slmforge.trainer.train.sft import train_sft

    out = tmp_path / "sft"
    metrics = train_sft(opts(tiny_checkpoint, data[fmt], out, seq_len=64, keep_adapter=(fmt == "alpaca")))
    assert metrics["format"] == ("messages" if fmt == "qa" else "alpaca")
    assert metrics["examples"] == len(QA) and metrics["heldout_examples"] == 1
    assert metrics["heldout_answer_loss_before"] > 0 and metrics["heldout_answer_loss_after"] > 0
    assert manifest(out)["stage"] == "sft"
    if fmt == "alpaca":  # --keep-adapter: a PEFT adapter that points at its base
        cfg = json.loads((out / "adapter_config.json").read_text())
        assert cfg["base_model_name_or_path"] == str(tiny_checkpoint.resolve())
        assert manifest(out)["params"]["adapter"] == "lora-kept"
    else:
        assert changed(out, tiny_checkpoint)


def test_sft_eval_examples_caps_the_heldout_answer_loss(tiny_checkpoint, tmp_path):
    """--eval-examples measures fewer held-out answers; the held-out split (so the training set) is unchanged."""
    from slmforge.trainer.train.sft import train_sft

    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"{q} (variant {i})", "input": "", "output": a}) + "\n"
                            for i in range(6) for q, a in QA))  # 36 examples: 3 held out
    full = train_sft(opts(tiny_checkpoint, data, tmp_path / "all", seq_len=128, max_steps=1, eval_tokens=0))
    capped = train_sft(opts(tiny_checkpoint, data, tmp_path / "one", seq_len=128, max_steps=1, eval_tokens=0,
                            extra={"eval_examples": 1}))
    assert full["examples"] == 36 and full["heldout_examples"] == 3 and capped["heldout_examples"] == 1
    assert capped["packed_rows"] == full["packed_rows"] and capped["assistant_tokens"] == full["assistant_tokens"]
    # the tiny model takes attention per example, so a step is one unpadded row of batch_size × seq_len at most
    assert full["rows_per_step"] == 1 and full["packing_fill"] > 0.8


@pytest.mark.parametrize("method,key", [("dpo", "prefs"), ("ipo", "prefs"), ("kto", "kto"), ("orpo", "prefs")])
def test_align_methods_train_and_measure_the_margin(tiny_checkpoint, data, tmp_path, method, key):
    from slmforge.trainer.train.align import train_align

    out = tmp_path / method
    extra = {"method": method, "beta": 0.1, "loss_type": None, "heldout_fraction": 0.34}
    metrics = train_align(opts(tiny_checkpoint, data[key], out, seq_len=64, extra=extra))
    m = manifest(out)
    assert m["stage"] == f"align-{method}" and m["params"]["beta"] == 0.1
    assert metrics["loss_type"] == {"dpo": "sigmoid", "ipo": "ipo", "kto": "kto", "orpo": None}[method]
    assert metrics["heldout_pairs"] == 2 and metrics["steps"] == 2
    assert metrics["heldout_margin_before"] != metrics["heldout_margin_after"] and changed(out, tiny_checkpoint)
    assert metrics["heldout_reward_accuracy_after"] in (0.0, 0.5, 1.0)  # share of the 2 held-out pairs


def test_reward_accuracy_counts_pairs_whose_implicit_reward_prefers_chosen():
    from slmforge.trainer.train.align import margin_metrics

    # (chosen, rejected) log-probs before and after: pair 1 moved toward chosen, pair 2 away; raw margins stay < 0
    m = margin_metrics([(-50.0, -10.0), (-40.0, -12.0)], [(-48.0, -11.0), (-41.0, -11.0)], beta=0.1)
    assert m["heldout_accuracy_before"] == m["heldout_accuracy_after"] == 0.0
    assert m["heldout_reward_accuracy_after"] == 0.5 and m["heldout_reward_margin_after"] == pytest.approx(0.1 * ((2 + 1) + (-1 - 1)) / 2)


def test_two_ranks_under_torchrun_equal_one_process_with_their_combined_batch(tiny_checkpoint, data, tmp_path):
    """What `accelerate launch` runs on a multi-GPU machine, on CPU: torchrun, 2 ranks, DDP over gloo.

    2 ranks × batch 2 must train exactly like 1 process × batch 4 (the same 4 blocks per step, gradients
    averaged), only rank 0 writes the output, and only it reports. If the ranks trained alone (no process
    group), the weights would equal a batch-2 run instead."""
    import shutil
    import subprocess
    import sys

    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun comes with torch"
    common = ["train", "pretrain", "--model", str(tiny_checkpoint), "--data", str(data["ds"]), "--max-steps", "3",
              "--seq-len", "32", "--seed", "0", "--lr", "1e-3", "--save-every", "0"]
    ddp = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29561", "-m", "slmforge.cli", *common,
                          "--batch-size", "2", "--out", str(tmp_path / "ddp")],
                         capture_output=True, text=True, timeout=600, check=False)
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    assert ddp.stdout.count("wrote ") == 1
    for batch in (4, 2):
        single = run_cli(*common, "--batch-size", str(batch), "--out", str(tmp_path / f"single{batch}"))
        assert single.returncode == 0, single.stderr[-2000:]
    ddp_w, four, two = weights(tmp_path / "ddp"), weights(tmp_path / "single4"), weights(tmp_path / "single2")
    assert max((ddp_w[k] - four[k]).abs().max().item() for k in ddp_w) < 1e-6
    assert max((ddp_w[k] - two[k]).abs().max().item() for k in ddp_w) > 1e-4
