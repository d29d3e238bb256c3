"""Trainable parameters by component, for the log at start and the full-size count."""
from __future__ import annotations

from collections import Counter

from torch import nn


def component(name: str) -> str:
    if "lora_" in name:
        return "LoRA"
    if "trainable_tokens" in name:
        return "task-token embeddings"
    if ".cross_attention." in name:
        return "cross-attention"
    if name.startswith(("part_embedding.", "segment_embedding.")):
        return "segment embeddings"
    if name.startswith(("adapter.", "prompt_adapter.")):  # the hybrid's adapter makes its prompt's speech
        return "adapter"
    if name.startswith("speech_encoder."):
        return "speech encoder"
    if name.startswith("llm."):
        return "LLM"
    return name.split(".")[0]  # a module of its own (the CTC head): named, not counted as some other part


def trainable_counts(model: nn.Module) -> Counter:
    counts: Counter = Counter()
    for name, p in model.named_parameters():
        if p.requires_grad:
            counts[component(name)] += p.numel()
    return counts


def trainable_report(model: nn.Module) -> str:
    counts = trainable_counts(model)
    total = sum(p.numel() for p in model.parameters())
    lines = [f"  {k:<22} {v:>15,}" for k, v in sorted(counts.items())]
    lines.append(f"  {'trainable':<22} {sum(counts.values()):>15,} of {total:,} ({100 * sum(counts.values()) / total:.2f}%)")
    return "\n".join(lines)
