"""The speech encoder for training on dumped Whisper features (espnet_llm.bin.dump_whisper_features).

Whisper is frozen, so its output for an utterance never changes: computed once, it is read from the ark
instead of running 32 encoder layers every epoch. This module takes the place of WhisperSpeechEncoder
with the same forward signature; ``speech`` is then the (B, T', d_model) features (float16 on disk,
float32 after ESPnet's loader) and ``speech_lengths`` their frame counts. The on-the-fly
WhisperSpeechEncoder stays for experiments that change the audio (e.g. SpecAugment-style masking).
"""
from __future__ import annotations

import torch
from torch import nn


class CachedWhisperFeatures(nn.Module):
    """(feats (B, T', D) float16/32, lengths (B,)) -> (feats as float32 zeroed past each length, lengths)."""

    def __init__(self, output_size: int):
        """output_size: d_model of the Whisper model that dumped the features (1280 for large-v2)."""
        super().__init__()
        self._output_size = output_size

    def output_size(self) -> int:
        return self._output_size

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if feats.dim() != 3 or feats.shape[-1] != self._output_size:
            raise ValueError(
                f"expected dumped Whisper features (batch, frames, {self._output_size}), got shape {tuple(feats.shape)}: "
                f"is the speech entry the features' feats.scp (kaldi_ark), dumped with a Whisper of this width?"
            )
        valid = torch.arange(feats.shape[1], device=feats.device)[None, :] < lengths[:, None].to(feats.device)
        # zero past each row's end, as the live encoder returns (batch padding must never differ between the two)
        return feats.float().masked_fill(~valid[..., None], 0.0), lengths
