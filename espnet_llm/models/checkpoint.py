"""Reading a saved speech LLM: its own module, so that a quick tool (export_gates) need not import the models."""
from __future__ import annotations

import pickle
from pathlib import Path

import torch


class CheckpointError(RuntimeError):
    """A model file that is missing or cannot be read; the message names it."""


def checkpoint_state(model_file) -> dict[str, torch.Tensor]:
    """The state dict of a saved model: ESPnet's (full or trainable-only) or DeepSpeed's, which nests it."""
    if not Path(model_file).is_file():
        raise CheckpointError(f"model file not found: {model_file}")
    try:
        state = torch.load(model_file, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as error:  # torch's words for a truncated or foreign file
        raise CheckpointError(f"cannot read the model file {model_file} (truncated, or not a torch checkpoint): {error}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{model_file} holds a {type(state).__name__}, not a state dict")
    return state["module"] if "module" in state else state
