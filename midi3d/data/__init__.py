"""Datasets: the synthetic scene generator and dataset readers."""
