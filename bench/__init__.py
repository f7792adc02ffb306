"""Sesame's benchmarks: run on purpose (`scripts/bench`), never as timed tests. See bench/run.py."""
