"""`stats.png` for a prepared dataset: piece lengths per split and what cleaning removed.

A glance at the histogram shows whether pieces fit the training window and whether the
held-out split looks like the training one; the bars show how much cleaning took out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_dataset(train_lengths: list[int], heldout_lengths: list[int], stats: dict[str, Any], path: Path) -> None:
    """Write the two-panel PNG to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (hist, bars) = plt.subplots(1, 2, figsize=(11, 4))
    top = max(train_lengths + heldout_lengths + [1])
    bins = list(range(0, top + top // 20 + 1, max(1, top // 20)))
    hist.hist(train_lengths, bins=bins, alpha=0.7, label=f"train ({len(train_lengths)} pieces)")
    if heldout_lengths:
        hist.hist(heldout_lengths, bins=bins, alpha=0.7, label=f"held-out ({len(heldout_lengths)} pieces)")
    hist.set(xlabel="piece length (characters)", ylabel="pieces", title="Piece lengths")
    hist.legend()
    removed = {"near-empty": stats["dropped_near_empty"], "exact dup": stats["exact_duplicates"],
               "near dup": stats["near_duplicates"], **{f"PII {k}": v for k, v in stats["pii"].items()}}
    bars.barh(list(removed), list(removed.values()), color="tab:red")
    for y, value in enumerate(removed.values()):
        bars.text(value, y, f" {value}", va="center")
    bars.invert_yaxis()
    bars.set(xlabel="count", title=f"Removed / redacted (of {stats['pieces_total']} pieces)")
    fig.suptitle(f"{stats['documents']} documents: {stats['train_documents']} train, "
                 f"{stats['heldout_documents']} held-out ({stats['split']})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
