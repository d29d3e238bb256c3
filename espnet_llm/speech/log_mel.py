"""Whisper's log-mel spectrogram in torch, batched, for padded and variable-length input.

transformers' WhisperFeatureExtractor takes numpy arrays one utterance list at a time and
always pads to 30 s; this module computes the same features on whatever device the batch is
on, with the same mel filterbank (transformers.audio_utils.mel_filter_bank) and the same
STFT (torch.stft, periodic Hann window, centred with reflection).

Two modes, one definition: for a row of L samples, both modes give the first L // 160 frames
of Whisper's 30-s features of that row (the speech followed by zeros up to 30 s).

- ``pad_to_30s=True``: the whole 3000 frames, as Whisper was trained; equal to
  WhisperFeatureExtractor within float error.
- ``pad_to_30s=False``: only the frames that cover the speech, without computing the padding.
  The dynamic-range floor (max - 8) uses the maximum over the frames whose window touches the
  speech; the frames of pure zero padding are log10(1e-10) = -10, the lowest possible value,
  so this is the same maximum as over all 3000 frames. After the speech come zeros, as in the
  30-s window (one window's worth, never past 30 s), so the frames near the end of the speech
  are the same as in the 30-s mode too. Frames beyond a row's length are 0.0, the value the
  encoder's first convolution pads with; no output depends on the batch padding.

In both modes ``frame_lengths`` is L // 160, the frames that cover each row's speech.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers.audio_utils import mel_filter_bank

from espnet_llm.speech.framing import HOP_LENGTH, MAX_FRAMES, MAX_SAMPLES, MAX_SECONDS, N_FFT, SAMPLE_RATE

LOG_FLOOR = 1e-10
DYNAMIC_RANGE = 8.0  # log10 units kept below each utterance's maximum


class SpeechTooLongError(ValueError):
    """A batch row longer than Whisper's 30-s window; ``index`` is the row, ``seconds`` its length."""

    def __init__(self, index: int, num_samples: int):
        self.index = index
        self.seconds = num_samples / SAMPLE_RATE
        super().__init__(
            f"batch row {index}: {self.seconds:.2f} s of speech is longer than Whisper's "
            f"{MAX_SECONDS} s input window"
        )


def check_speech_lengths(lengths: torch.Tensor) -> None:
    """Raise SpeechTooLongError for the first row over 30 s, ValueError for a row under one hop."""
    too_long = torch.nonzero(lengths > MAX_SAMPLES).flatten()
    if too_long.numel() > 0:
        row = int(too_long[0])
        raise SpeechTooLongError(row, int(lengths[row]))
    too_short = torch.nonzero(lengths < HOP_LENGTH).flatten()
    if too_short.numel() > 0:
        row = int(too_short[0])
        raise ValueError(
            f"batch row {row}: {int(lengths[row])} samples is shorter than one Whisper frame ({HOP_LENGTH} samples)"
        )


class WhisperLogMel(nn.Module):
    """Waveforms (B, T) at 16 kHz with lengths (B,) -> (log-mel (B, n_mels, frames), frame_lengths)."""

    def __init__(self, n_mels: int = 80, pad_to_30s: bool = False):
        super().__init__()
        self.n_mels = n_mels
        self.pad_to_30s = pad_to_30s
        filters = mel_filter_bank(
            num_frequency_bins=1 + N_FFT // 2,
            num_mel_filters=n_mels,
            min_frequency=0.0,
            max_frequency=SAMPLE_RATE / 2,
            sampling_rate=SAMPLE_RATE,
            norm="slaney",
            mel_scale="slaney",
        )
        # Not saved in checkpoints: they are fixed by n_mels.
        self.register_buffer("mel_filters", torch.from_numpy(filters).float(), persistent=False)
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = lengths.to(device=wav.device, dtype=torch.long)
        check_speech_lengths(lengths)
        longest = int(lengths.max())
        # Always float32: a module cast to half precision must not compute the STFT in it.
        wav = wav[:, :longest].float()
        sample_index = torch.arange(longest, device=wav.device)
        wav = wav.masked_fill(sample_index >= lengths[:, None], 0.0)
        # Zeros after the speech, as in Whisper's 30-s window; in variable-length mode just
        # enough of them (one window) for every frame that touches the speech.
        total = MAX_SAMPLES if self.pad_to_30s else min(longest + N_FFT, MAX_SAMPLES)
        wav = nn.functional.pad(wav, (0, total - longest))

        stft = torch.stft(wav, N_FFT, HOP_LENGTH, window=self.window.float(), return_complex=True)
        power = stft[..., :-1].abs() ** 2  # Whisper drops the last STFT frame
        mel = self.mel_filters.float().T @ power
        log_mel = torch.clamp(mel, min=LOG_FLOOR).log10()

        # The maximum over the frames whose window touches the speech (see the module docstring).
        frame_index = torch.arange(log_mel.shape[-1], device=wav.device)
        touching = frame_index <= (lengths[:, None] + N_FFT // 2 - 1) // HOP_LENGTH
        row_max = log_mel.masked_fill(~touching[:, None, :], float("-inf")).amax(dim=(1, 2), keepdim=True)
        log_mel = torch.maximum(log_mel, row_max - DYNAMIC_RANGE)
        feats = (log_mel + 4.0) / 4.0

        frame_lengths = lengths // HOP_LENGTH
        if self.pad_to_30s:
            return feats, frame_lengths
        feats = feats[..., : int(frame_lengths.max())]
        valid = frame_index[: feats.shape[-1]] < frame_lengths[:, None]
        return feats.masked_fill(~valid[:, None, :], 0.0), frame_lengths
