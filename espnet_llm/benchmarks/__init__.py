"""Benchmarks: each measures the product's own code path and prints the figures that the recipe's docs/benchmarks.md holds.

    python -m espnet_llm.benchmarks.<name> --help
"""
