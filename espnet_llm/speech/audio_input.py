"""What a model hears: any audio (a file, or an array and its rate) made 16-kHz mono float32, or refused by name.

Whisper was trained on 16-kHz mono samples in [-1, 1]; audio at another rate decodes to plausible wrong text
and int16-scale samples to garbage, with nothing flagged. So every way audio enters the models (Speech2Text,
the transcriber, the data loader of training and decoding) comes through here: a rate other than 16 kHz is
resampled (torchaudio's windowed-sinc resampler), channels are averaged, integer samples are scaled, and what
cannot be meant as audio (NaN or infinite samples, float samples far outside [-1, 1], an array without its
rate) is refused with an error that names the piece (``AudioError``).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio

from espnet_llm.speech.framing import SAMPLE_RATE

MAX_CHANNELS = 16  # a 2-D array's smaller side up to this is its channels; (frames, 512) features are not audio
INT16_SCALE_PEAK = 2.0  # float samples peaking above this are not [-1, 1] audio (a clipped float signal stays under)


class AudioError(ValueError):
    """Audio that cannot be given to the model as it is; the message names the piece and what to do."""


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """(samples (T,) or (T, channels), rate) of an audio file that libsndfile reads (wav, flac, ogg, ...)."""
    try:
        return soundfile.read(str(path), dtype="float32", always_2d=False)
    except (RuntimeError, soundfile.LibsndfileError, OSError) as e:
        raise AudioError(f"{path}: cannot read audio: {e}") from e


def to_model_audio(samples, rate: int | None, name: str = "the audio") -> np.ndarray:
    """``samples`` at ``rate`` -> (T,) float32 at 16 kHz in [-1, 1]; conversions are logged, refusals raised."""
    if rate is None:
        raise AudioError(f"{name}: an array does not say its sample rate: give it (fs=...) or pass the file")
    if not isinstance(rate, (int, np.integer)) or rate <= 0:
        raise AudioError(f"{name}: sample rate {rate!r} is not a positive whole number of Hz")
    samples = np.asarray(samples)
    if samples.size == 0:
        raise AudioError(f"{name}: empty audio")
    if np.issubdtype(samples.dtype, np.integer):
        scale = float(np.iinfo(samples.dtype).max) + 1
        logging.info(f"{name}: {samples.dtype} samples scaled by 1/{scale:.0f} to [-1, 1]")
        samples = samples / scale
    elif not np.issubdtype(samples.dtype, np.floating):
        raise AudioError(f"{name}: samples of type {samples.dtype} are not audio")
    samples = samples.astype(np.float32, copy=False)
    if samples.ndim == 2:
        samples = downmix(samples, name)
    elif samples.ndim != 1:
        raise AudioError(f"{name}: {samples.ndim}-dimensional array of shape {samples.shape} is not audio")
    bad = ~np.isfinite(samples)
    if bad.any():
        first = int(np.argmax(bad))
        raise AudioError(f"{name}: {int(bad.sum())} sample(s) NaN or infinite, the first at sample {first} "
                         f"({first / rate:.3f} s)")
    peak = float(np.abs(samples).max())
    if peak > INT16_SCALE_PEAK:
        raise AudioError(
            f"{name}: float samples peak at {peak:.0f}, not audio in [-1, 1]"
            + (": int16-scale samples? divide by 32768" if peak <= 32768 else "")
        )
    if rate != SAMPLE_RATE:
        logging.info(f"{name}: resampled from {rate} Hz to {SAMPLE_RATE} Hz")
        samples = torchaudio.functional.resample(torch.from_numpy(samples), int(rate), SAMPLE_RATE).numpy()
    return samples


def downmix(samples: np.ndarray, name: str) -> np.ndarray:
    """(T, C) or (C, T), C the smaller side (at most MAX_CHANNELS) -> (T,), the channels' mean."""
    axis = int(np.argmin(samples.shape))
    if samples.shape[axis] > MAX_CHANNELS:
        raise AudioError(f"{name}: an array of shape {samples.shape} is neither mono nor (samples, channels) audio")
    if samples.shape[axis] > 1:
        logging.info(f"{name}: {samples.shape[axis]} channels averaged to mono")
    return samples.mean(axis=axis)


def load_model_audio(path: str | Path) -> np.ndarray:
    """A file's audio as the model hears it."""
    samples, rate = read_audio(path)
    return to_model_audio(samples, rate, str(path))


class ModelAudioScp(Mapping):
    """A ``sound`` scp (wav.scp: ``<uttid> <path>``, any format and rate libsndfile reads) whose entries read as
    the model hears them; an entry that cannot be raises AudioError naming the utterance and the file."""

    def __init__(self, path: str):
        from espnet2.fileio.read_text import read_2columns_text

        self.path = path
        self.entries = read_2columns_text(path)

    def __getitem__(self, key: str) -> np.ndarray:
        file = self.entries[key]
        samples, rate = read_audio(file)
        return to_model_audio(samples, rate, f"utterance {key} ({file})")

    def __iter__(self):
        return iter(self.entries)

    def __len__(self):
        return len(self.entries)
