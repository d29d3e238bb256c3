"""Command-line entry points: python -m espnet_llm.bin.<name>."""
