"""From the data directory's entries of one utterance to the speech LLM's arrays.

Inputs (names in ``--*_data_path_and_name_and_type``): ``speech`` (wav.scp, sound; or, with the
``whisper_cached`` encoder, the dumped features' feats.scp, kaldi_ark: (frames, feature_dim) arrays, 50
frames a second), ``text`` (text), ``text_ner`` (text_ner, for the NER task), ``history`` (utt2history: ids
of the previous utterances of the same speaker). Outputs: ``speech`` (history audio or features then the
current utterance's, joined along time), ``speech_segments`` (samples or frames per utterance, for the
history tasks) and ``text`` (target token ids, end token included; not at inference).

History resolution: ``utt2history`` names utterances, not audio, so the preprocessor opens, next to each
``speech`` entry it is given (train and valid sets alike, since ESPnet's collect-stats mode reads both
with the same preprocessor), the same scp with ESPnet's own loader for that data type, and the ``text``
files beside them. Utterance ids are unique across AISHELL's sets; an id found twice with different
audio is an error.
"""
from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from espnet2.fileio.read_text import read_2columns_text

from espnet_llm.models.prompts import PromptLayout
from espnet_llm.speech.framing import WHISPER_FRAMES_PER_SECOND
from espnet_llm.tasks.speech_loader import open_entry


class SpeechLLMPreprocessor:
    def __init__(
        self,
        layout: PromptLayout,
        data_path_and_name_and_type: list[tuple[str, str, str]] = (),
        num_history: int = 0,
        sample_rate: int = 16000,
        max_speech_seconds: float = 30.0,
        feature_dim: int | None = None,
        random_history: bool = False,
    ):
        """feature_dim: None for audio; the width of dumped Whisper features when ``speech`` holds them.

        random_history: each row takes the last k of its (up to num_history) previous utterances, k drawn anew
        each time from 0..all of them, so that a model learns every history length, not mostly the longest
        (for training; validation and decoding take them all).
        """
        self.layout = layout
        self.num_history = num_history if layout.uses_history else 0
        self.random_history = random_history
        self.feature_dim = feature_dim
        # time steps a second along the first axis of ``speech``
        self.rate = sample_rate if feature_dim is None else WHISPER_FRAMES_PER_SECOND
        self.max_length = int(max_speech_seconds * self.rate)
        self.empty = np.zeros((0,) if feature_dim is None else (0, feature_dim), dtype=np.float32)
        self.history_audio: dict[str, Mapping] = {}
        self.history_text: dict[str, str] = {}
        if self.num_history:
            self._index_history(data_path_and_name_and_type)

    def _index_history(self, entries):
        seen: dict[str, str] = {}
        for path, name, data_type in entries:
            if name == "speech":
                loader = open_entry(path, data_type)
                for uid in loader:
                    if uid in seen and seen[uid] != path:
                        raise ValueError(f"utterance {uid} is in both {seen[uid]} and {path}: ids must be unique")
                    seen[uid] = path
                    self.history_audio[uid] = loader
            elif name == "text":
                self.history_text.update(read_2columns_text(path))

    def check_speech(self, speech: np.ndarray) -> str | None:
        """Why this audio (or these features) cannot be used, or None."""
        if speech.size == 0:
            return "empty or unreadable audio" if self.feature_dim is None else "empty or unreadable features"
        if self.feature_dim is None and speech.ndim != 1:
            return f"{speech.ndim}-dimensional audio (expected mono)"
        if self.feature_dim is not None and (speech.ndim != 2 or speech.shape[1] != self.feature_dim):
            return (
                f"features of shape {speech.shape}, expected (frames, {self.feature_dim}): is the speech entry "
                f"the feats.scp of a dump by a Whisper of this width?"
            )
        if len(speech) > self.max_length:
            unit = "samples" if self.feature_dim is None else "frames"
            return (
                f"{len(speech) / self.rate:.1f} s of audio ({len(speech)} {unit}), "
                f"over Whisper's {self.max_length / self.rate:.0f} s"
            )
        return None

    def __call__(self, uid: str, data: dict) -> dict:
        wav = np.asarray(data["speech"], dtype=np.float32)
        problem = self.check_speech(wav)
        if problem is not None:
            logging.warning(f"utterance {uid}: {problem}: skipped")
            wav = self.empty  # zero length marks the row broken for the model
        segments, history_ids, history_texts = [], [], []
        previous = data.get("history", "").split()[-self.num_history:] if self.num_history else []
        if self.random_history:
            previous = previous[len(previous) - random.randint(0, len(previous)):]
        for hid in previous:
            if hid not in self.history_audio:
                raise KeyError(f"utterance {uid}: history utterance {hid} is in no speech entry given")
            hwav = np.asarray(self.history_audio[hid][hid], dtype=np.float32)
            hproblem = self.check_speech(hwav)
            if hproblem is not None:
                logging.warning(f"utterance {uid}: history utterance {hid}: {hproblem}: left out of the history")
                continue
            segments.append(hwav)
            history_ids.append(hid)
            history_texts.append(self.history_text.get(hid))
        out = {}
        if len(wav) == 0:  # broken: no history either, the row is skipped as a whole
            segments = []
        segments.append(wav)
        out["speech"] = np.concatenate(segments)
        if self.layout.uses_history:
            out["speech_segments"] = np.array([len(s) for s in segments], dtype=np.int64)
        if "text" in data:
            if any(t is None for t in history_texts):
                missing = [h for h, t in zip(history_ids, history_texts) if t is None]
                raise KeyError(f"utterance {uid}: no transcript for history utterances {missing}")
            out["text"] = np.array(
                self.layout.target_ids(data["text"], data.get("text_ner"), history_texts), dtype=np.int64
            )
        return out
