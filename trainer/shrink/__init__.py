"""Smaller models: depth pruning by block importance (`compress`), logit distillation."""
