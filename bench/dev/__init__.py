"""Developer measurements behind the figures in docs/: run as ``python -m slmforge.bench.dev.<name>``.

Not reachable from ``slmforge bench`` or ``slmforge eval`` (those are the shipped bench, one level up,
which runs on the base install). These measure the desktop side too, so unlike the shipped bench
they may import trainer and export (docs/ARCHITECTURE.md, Layering).
"""
