"""Benchmarks: side-by-side ratios measured in one run (see BENCHMARKS.md)."""
