"""`slmforge data prepare | qa | pairs`: the data the training stages read."""

from __future__ import annotations

from pathlib import Path

import click

from slmforge.output import emit_json, format_table, json_option

_DOCS = click.argument("docs", nargs=-1, required=True, type=click.Path(path_type=Path))
_SEED = click.option("--seed", type=int, default=0, show_default=True, help="Seed of the held-out split / sampling.")
_NO_REDACT = click.option("--no-redact", is_flag=True, help="Redact nothing (same as --redact none).")


def _classes(ctx: click.Context, param: click.Parameter, value: str) -> frozenset[str]:
    from slmforge.trainer.data.pii import parse_classes

    return parse_classes(value)


_REDACT = click.option(
    "--redact", default="default", show_default=True, callback=_classes,
    help="PII classes to replace by placeholders, comma-separated: email, phone, ip, secret, card, iban, ssn, "
         "address; 'default' is all but ip (addresses in technical text are content), 'all' adds ip; "
         "e.g. --redact default,ip for server logs.")


@click.group()
def data() -> None:
    """Prepare documents; build SFT and preference data."""


@data.command(short_help="Documents → clean, deduplicated, redacted train/held-out text.")
@_DOCS
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Dataset directory to write.")
@click.option("--heldout-fraction", type=click.FloatRange(0, 0.5), default=0.1, show_default=True,
              help="Share of DOCUMENTS held out (whole documents, so held-out text is unseen).")
@_SEED
@click.option("--min-chars", type=click.IntRange(min=1), default=100, show_default=True,
              help="Drop pieces shorter than this after cleaning.")
@click.option("--max-chars", type=click.IntRange(min=200), default=2000, show_default=True,
              help="Largest piece: paragraphs are packed up to this many characters (~4 chars per token).")
@click.option("--near-dup-threshold", type=click.FloatRange(0.5, 1.0), default=0.8, show_default=True,
              help="MinHash Jaccard similarity at or above which a piece is a near-duplicate.")
@_REDACT
@_NO_REDACT
@json_option
def prepare(docs: tuple[Path, ...], out: Path, heldout_fraction: float, seed: int, min_chars: int, max_chars: int,
            near_dup_threshold: float, redact: frozenset[str], no_redact: bool, as_json: bool) -> None:
    """Clean, redact, deduplicate and split DOCS (files or folders of .txt .md .rst .html .jsonl).

    Writes OUT/train.jsonl and OUT/heldout.jsonl (one {"text", "source", "doc_id"} per line),
    OUT/stats.json, OUT/stats.png (piece lengths, what was removed) and OUT/slmforge.json. A .jsonl input holds one document per line
    ({"text": ...}, optional "id"). Any unreadable, non-UTF-8 or empty input stops the run
    with one line naming it, and nothing is written.
    """
    from slmforge.trainer.data.prepare import PrepareOptions
    from slmforge.trainer.data.prepare import prepare as run_prepare

    opts = PrepareOptions(heldout_fraction=heldout_fraction, seed=seed, min_chars=min_chars, max_chars=max_chars,
                          redact=frozenset() if no_redact else redact, near_dup_threshold=near_dup_threshold)
    stats = run_prepare(list(docs), out, opts)
    if as_json:
        emit_json(stats)
        return
    pii = ", ".join(f"{k} {v}" for k, v in stats["pii"].items())
    rows = [
        ("documents read", (f"{stats['documents']} from {stats['files_read']} files "
                           f"({len(stats['files_skipped'])} unsupported files skipped)")),
        ("pieces", f"{stats['pieces_total']} cut, {stats['pieces_kept']} kept"),
        ("near-empty dropped", stats["dropped_near_empty"]),
        ("boilerplate lines", stats["boilerplate_lines_removed"]),
        ("duplicates removed", f"{stats['exact_duplicates']} exact, {stats['near_duplicates']} near"),
        ("PII redacted", pii or "off"),
        ("train", f"{stats['train_pieces']} pieces, {stats['train_documents']} documents, {stats['train_chars']} chars"),
        ("held-out", (f"{stats['heldout_pieces']} pieces, {stats['heldout_documents']} documents "
                     f"({stats['split']})")),
    ]
    click.echo(format_table(("", "value"), rows))
    click.echo(f"wrote {out}")


@data.command(short_help="FAQ sections, QA JSONL and generated pairs → chat SFT examples (+ held-out questions).")
@_DOCS
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Train file (qa.jsonl); qa.heldout.jsonl and qa.slmforge.json are written next to it.")
@click.option("--heldout-fraction", type=click.FloatRange(0, 0.5), default=0.1, show_default=True,
              help="Share written to <out>.heldout.jsonl instead (unseen in training): of FAQ/file questions, and "
                   "of the documents generated pairs come from (whole documents).")
@_SEED
@click.option("--max-answer-chars", type=click.IntRange(min=0), default=1500, show_default=True,
              help="Keep whole paragraphs of an answer up to this length (0 = no limit).")
@click.option("--generate", type=click.Choice(["auto", "always", "never"]), default="auto", show_default=True,
              help="Generate pairs from headings, definitions and procedures: auto = from documents with no FAQ "
                   "pair, always = from every document, never = FAQ and QA files only.")
@click.option("--teacher", "teacher_gguf", type=click.Path(path_type=Path), default=None,
              help="A local GGUF chat model that also writes a question and answer per passage (greedy, parsed "
                   "strictly; the pairs' origin is 'teacher').")
@click.option("--teacher-limit", type=click.IntRange(min=1), default=100, show_default=True,
              help="Passages the teacher reads (seeded choice; each costs one generation).")
@_REDACT
@_NO_REDACT
@json_option
def qa(docs: tuple[Path, ...], out: Path, heldout_fraction: float, seed: int, max_answer_chars: int, generate: str,
       teacher_gguf: Path | None, teacher_limit: int, redact: frozenset[str], no_redact: bool, as_json: bool) -> None:
    """Build chat SFT examples from DOCS: FAQ sections, QA JSONL files and generated pairs.

    A section whose heading ends in '?' (reST heading, Markdown '## Question?', HTML <h2>)
    becomes a question, its body the answer; plain text may use 'Q:' / 'A:' lines. JSONL
    inputs may hold chat "messages", alpaca "instruction"/"input"/"output", or
    "question"/"answer" records. Documents without a FAQ also give generated pairs: headings
    as questions ("Reading and Writing Files" → "How do I read and write files?"), definitional
    sentences and API entries ("What does shutil.copy() do?"), and "To do X, …" procedures;
    answers are the first sentences or paragraph, not whole pages. Output lines:
    {"messages": [user, assistant], "source", "section", "origin"}. Duplicate and near-duplicate
    questions are dropped; FAQ questions are held out by pair, generated ones by whole document.
    Counts by origin and file, and samples to read, go to <out>.slmforge.json.
    """
    from slmforge.trainer.data.qa.build import GenerateOptions, build_qa

    stats = build_qa(list(docs), out, heldout_fraction=heldout_fraction, seed=seed,
                     max_answer_chars=max_answer_chars or None, redact_classes=frozenset() if no_redact else redact,
                     generate=GenerateOptions(mode=generate, teacher=teacher_gguf, teacher_limit=teacher_limit))
    if as_json:
        emit_json(stats)
        return
    rows = [(src, n, ", ".join(f"{o} {k}" for o, k in stats["origins_by_file"][src].items()))
            for src, n in stats["pairs_by_file"].items()]
    click.echo(format_table(("source", "pairs", "by origin"), rows))
    held = stats["heldout_by_origin"]
    click.echo(format_table(("origin", "pairs", "held-out"),
                            [(o, n, held.get(o, 0)) for o, n in stats["pairs_by_origin"].items()]))
    samples = [(o, s["question"], s["answer"][:70].replace("\n", " ") + ("…" if len(s["answer"]) > 70 else ""))
               for o, picked in stats["samples"].items() for s in picked[:2]]
    click.echo(format_table(("origin", "sample question", "answer"), samples))
    g = stats["generated"]
    if g["mode"] != "never":
        click.echo(f"generated ({g['mode']}): {g['kept']} kept of {g['found']} from {g['documents']} documents "
                   f"({g['duplicate_questions']} duplicate questions dropped), held out {g['split'].replace('_', ' ')}")
    click.echo(f"{stats['pairs']} pairs ({stats['duplicate_questions']} duplicate FAQ/file questions dropped): "
               f"{stats['train_pairs']} train → {stats['files']['train']}, "
               f"{stats['heldout_pairs']} held-out → {stats['files']['heldout']}; samples in {stats['files']['manifest']}")


@data.command(short_help="QA → preference pairs (chosen = document, rejected = model) and KTO data.")
@click.option("--qa", "qa_file", required=True, type=click.Path(path_type=Path),
              help="SFT file from 'slmforge data qa' (messages or alpaca JSONL).")
@click.option("--model", type=click.Path(path_type=Path), help="Checkpoint whose own answers become 'rejected'.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Preference JSONL (prompt/chosen/rejected).")
@click.option("--kto-out", type=click.Path(path_type=Path), help="Also write KTO data (prompt/completion/label).")
@click.option("--rejected", type=click.Choice(["model", "mismatched"]), default="model", show_default=True,
              help="model: the model's greedy answer; mismatched: another question's answer (no model needed).")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=96, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), help="Torch threads for generation (default: the cores the load average leaves idle).")
@click.option("--limit", type=click.IntRange(min=1), help="Use a seeded sample of this many questions.")
@_SEED
@json_option
def pairs(qa_file: Path, model: Path | None, out: Path, kto_out: Path | None, rejected: str, max_new_tokens: int,
          batch_size: int, threads: int | None, limit: int | None, seed: int, as_json: bool) -> None:
    """Preference pairs without hand labels: chosen = the document's answer, rejected = the model's.

    Where the model's answer is empty or identical to the true one, another question's
    answer is used instead (counted as fallback_to_mismatched). The manifest goes to
    <out>.slmforge.json.
    """
    from slmforge.trainer.data.pairs import run_pairs

    stats = run_pairs(qa_file, out, model=model, kto_out=kto_out, rejected=rejected, max_new_tokens=max_new_tokens,
                      limit=limit, seed=seed, batch_size=batch_size, threads=threads)
    if as_json:
        emit_json(stats)
        return
    click.echo(format_table(("", "value"), list(stats.items())))
    click.echo(f"wrote {out}" + (f" and {kto_out}" if kto_out else ""))
