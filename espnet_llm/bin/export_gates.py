"""Write the per-layer cross-attention gate values of a trained encoder-decoder speech LLM (the paper's Figure 2a).

    python -m espnet_llm.bin.export_gates --model_file exp/encoder_decoder/short/valid.acc_current.ave.pth \
        --output exp/encoder_decoder/short/gate_values.json

Reads the checkpoint only (the trainable weights are enough; no model is built, so it is quick at full size too)
and writes ``{"layers": [i, ...], "gates": [tanh(gate_i), ...]}`` in LLM layer order, the layout that
``espnet_llm.scoring.results`` plots. The value is tanh(gate), what multiplies the cross-attention output
(``espnet_llm.models.cross_attention.GatedCrossAttention``).
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch

from espnet_llm.models.checkpoint import checkpoint_state

# GatedCrossAttention.gate inside CrossAttendingDecoderLayer, which replaces LLM layer <i>
GATE_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.cross_attention\.gate$")


def gate_values(model_file: str | Path) -> dict[int, float]:
    """LLM layer index -> tanh(gate), from an ESPnet checkpoint (full or trainable-only, or DeepSpeed's)."""
    gates = gates_of(checkpoint_state(model_file))
    if not gates:
        raise ValueError(f"{model_file}: no cross-attention gate (*.layers.<i>.cross_attention.gate): "
                         "not an encoder-decoder speech LLM checkpoint")
    return gates


def gates_of(state: dict[str, torch.Tensor]) -> dict[int, float]:
    """LLM layer index -> tanh(gate), from a model's state dict (empty for a model without cross-attention)."""
    gates = {}
    for key, value in state.items():
        match = GATE_KEY.search(key)
        if match:
            gates[int(match.group(1))] = float(torch.tanh(value.float()).item())
    return dict(sorted(gates.items()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_file", required=True, help="a checkpoint of the encoder-decoder model")
    parser.add_argument("--output", required=True, help="gate_values.json to write")
    args = parser.parse_args(argv)
    gates = gate_values(args.model_file)
    Path(args.output).write_text(
        json.dumps({"layers": list(gates), "gates": list(gates.values())}, indent=1) + "\n", encoding="utf-8"
    )
    print(f"{args.output}: " + " ".join(f"layer {i}: {g:+.4f}" for i, g in gates.items()))


if __name__ == "__main__":
    main()
