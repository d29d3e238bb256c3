"""Reading one scp entry for the speech LLMs: audio (``sound``) as the model hears it (16 kHz mono, resampled and
checked: speech.audio_input), anything else with ESPnet's loader of its data type; either made to survive an
unreadable entry (logged with its id and read as empty, which the model skips and counts)."""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from espnet2.fileio.read_text import read_2columns_text
from espnet2.train.dataset import DATA_TYPES

from espnet_llm.speech.audio_input import ModelAudioScp


class FaultTolerantLoader(Mapping):
    """Wraps an ESPnet audio (or feature) loader: an unreadable entry is logged with its id and read as empty,
    which the model skips and counts, so one corrupt file never ends a run.

    A ``failed`` file beside the scp (``<uttid> <reason>``, written by dump_whisper_features for what it could
    not dump) adds those utterances as entries that read as empty, with their reason logged.
    """

    def __init__(self, loader: Mapping, path: str, data_type: str):
        self.loader = loader
        self.description = f"{path} ({data_type})"
        failed = Path(path).with_name("failed")
        self.failed = read_2columns_text(failed) if failed.is_file() else {}

    def __getitem__(self, key):
        if key in self.failed:
            logging.warning(f"utterance {key}: not in {self.description}: {self.failed[key]}")
            return np.zeros(0, dtype=np.float32)
        try:
            return self.loader[key]
        except KeyError:
            raise
        except Exception as e:  # soundfile, kaldiio and OS errors alike
            logging.warning(f"utterance {key}: cannot read audio from {self.description}: {type(e).__name__}: {e}")
            return np.zeros(0, dtype=np.float32)

    def __iter__(self):
        yield from self.loader
        yield from self.failed

    def __len__(self):
        return len(self.loader) + len(self.failed)


def open_entry(path: str, data_type: str) -> Mapping:
    """The loader of one scp (sound: as the model hears it; kaldi_ark, ...: ESPnet's), made to survive unreadable
    entries."""
    if data_type == "sound":
        return FaultTolerantLoader(ModelAudioScp(path), path, data_type)
    spec = DATA_TYPES[data_type]
    kwargs = {"float_dtype": "float32", "max_cache_fd": 0}
    loader = spec["func"](path, **{k: kwargs[k] for k in spec["kwargs"] if k in kwargs})
    return FaultTolerantLoader(loader, path, data_type)
