"""Throughput benchmarks (`python -m benchmarks.NAME`); results go to benchmarks/results/."""
