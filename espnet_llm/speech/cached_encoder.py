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

from espnet_llm.speech.whisper_encoder import whisper_config


class CachedWhisperFeatures(nn.Module):
    """(feats (B, T', D) float16/32, lengths (B,)) -> (feats as float32 zeroed past each length, lengths)."""

    def __init__(
        self, output_size: int | None = None, model_path: str | None = None, pad_to_30s: bool = False,
        dtype: str = "float32",
    ):
        """The width D of the features: ``output_size``, else the d_model of ``model_path``, the Whisper that
        dumped them (1280 for large-v2). The arguments are those of WhisperSpeechEncoder so that a training
        config switches to the cache with ``--speech_encoder whisper_cached`` alone (ESPnet merges a
        command-line ``--speech_encoder_conf`` into the YAML's); ``pad_to_30s`` only says how the features
        were dumped (both modes store the frames that cover the speech) and is shown in the model summary;
        ``dtype`` (of the Whisper weights) has nothing to apply to: the features are read as float32.
        """
        super().__init__()
        if output_size is None:
            if model_path is None:
                raise ValueError("whisper_cached needs speech_encoder_conf output_size or the dumping model's model_path")
            output_size = whisper_config(model_path).d_model
        self._output_size = int(output_size)
        self.pad_to_30s = pad_to_30s

    def extra_repr(self) -> str:
        return f"output_size={self._output_size}, dumped_with_pad_to_30s={self.pad_to_30s}"

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
