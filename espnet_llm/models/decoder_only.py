"""Decoder-only speech LLM: adapted Whisper frames sit in the ChatGLM3 prompt, before the task token."""
from __future__ import annotations

import contextlib

import torch

from espnet_llm.models.speech_llm import SpeechLLM


class DecoderOnlySpeechLLM(SpeechLLM):
    """``[gMASK] sop <|user|> {speech embeddings} <|task|> <|assistant|> {target} </s>``."""

    def __init__(self, speech_encoder, adapter, llm, layout, **kwargs):
        if adapter is None:
            raise ValueError("the decoder-only model needs an adapter into the LLM's hidden size")
        super().__init__(speech_encoder, adapter, llm, layout, **kwargs)

    def speech_in_prompt(self, feats: torch.Tensor) -> torch.Tensor:
        return feats.to(self.llm.causal_lm.dtype)

    def attending_to(self, memory, memory_lengths, repeat: int = 1):
        return contextlib.nullcontext()
