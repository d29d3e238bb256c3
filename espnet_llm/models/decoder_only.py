"""Decoder-only speech LLM: adapted Whisper frames sit in the ChatGLM3 prompt, before the task token; the
speech of each history utterance is followed by ``<|sep|>``, as its transcript is in the target; each segment's
frames carry a learned embedding of its place (``SpeechLLM.segment_embedding``, added before the adapter)."""
from __future__ import annotations

import contextlib

import torch

from espnet_llm.models.speech_llm import SpeechLLM


class DecoderOnlySpeechLLM(SpeechLLM):
    """``[gMASK] sop <|user|> \\n {speech of h1} <|sep|> ... {speech of the current utterance} <|task|> <|assistant|>
    \\n {target} </s>``."""

    def __init__(self, speech_encoder, adapter, llm, layout, **kwargs):
        if adapter is None:
            raise ValueError("the decoder-only model needs an adapter into the LLM's hidden size")
        super().__init__(speech_encoder, adapter, llm, layout, **kwargs)

    def speech_in_prompt(self, feats: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
        feats = feats.to(self.llm.causal_lm.dtype)
        ends = (segments[1:] != segments[:-1]).nonzero().flatten().tolist()  # the last frame of each history segment
        if not ends:
            return feats
        sep = self.llm.embed(torch.tensor([self.layout.sep_id], device=feats.device)).to(feats.dtype)
        pieces, start = [], 0
        for end in ends:
            pieces += [feats[start:end + 1], sep]
            start = end + 1
        return torch.cat(pieces + [feats[start:]])

    def attending_to(self, memory, memory_lengths, memory_segments, repeat: int = 1):
        return contextlib.nullcontext()
