"""Reading a saved speech LLM: its own module, so that a quick tool (export_gates) need not import the models."""
from __future__ import annotations

import torch


def checkpoint_state(model_file) -> dict[str, torch.Tensor]:
    """The state dict of a saved model: ESPnet's (full or trainable-only) or DeepSpeed's, which nests it."""
    state = torch.load(model_file, map_location="cpu", weights_only=False)
    return state["module"] if "module" in state else state
