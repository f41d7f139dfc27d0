"""Desktop side: data preparation, training, merging, pruning, distillation, base-model import."""
