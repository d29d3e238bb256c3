"""The decoder-only model's adapter: stack adjacent encoder frames, then Linear-ReLU-Linear into the LLM.

Whisper gives 50 frames a second; stacking 5 gives 10 speech embeddings a second, short enough to sit in
the LLM prompt.
"""
from __future__ import annotations

import torch
from torch import nn


class FrameStackAdapter(nn.Module):
    def __init__(self, input_size: int, output_size: int, stack: int = 5, hidden_size: int | None = None):
        super().__init__()
        self.stack = stack
        self.output_size = output_size
        hidden_size = hidden_size or output_size
        self.proj = nn.Sequential(
            nn.Linear(input_size * stack, hidden_size), nn.ReLU(), nn.Linear(hidden_size, output_size)
        )

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, D), (B,) -> (B, ceil(T / stack), output_size), (B,); a last partial group is zero-filled."""
        batch, frames, dim = feats.shape
        missing = -frames % self.stack
        if missing:
            feats = nn.functional.pad(feats, (0, 0, 0, missing))
        stacked = feats.reshape(batch, -1, dim * self.stack)
        # zero the frames past each row's length so that padding never reaches a real group
        valid = torch.arange(stacked.shape[1] * self.stack, device=feats.device)[None] < lengths[:, None]
        stacked = stacked * valid.reshape(batch, -1, self.stack).repeat_interleave(dim, -1).to(stacked.dtype)
        return self.proj(stacked), torch.div(lengths + self.stack - 1, self.stack, rounding_mode="floor")
