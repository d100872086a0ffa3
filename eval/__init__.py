"""Benchmark evaluation (metrics, dataset readers, runner): see the evaluation issue."""
