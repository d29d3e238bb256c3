"""The dtypes a config may name for frozen weights."""
from __future__ import annotations

import torch

DTYPES = ("float32", "bfloat16", "float16")


def torch_dtype(name: str, key: str) -> torch.dtype:
    """A config's dtype name -> torch.dtype; anything else is refused naming its config key."""
    if name not in DTYPES:
        raise ValueError(f"{key}: {name!r} is not one of {', '.join(DTYPES)}")
    return getattr(torch, name)
