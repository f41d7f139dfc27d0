"""Benchmarks across device profiles and against peers; report tables and plots."""
