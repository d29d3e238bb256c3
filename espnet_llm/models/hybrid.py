"""Hybrid speech LLM: the decoder-only model's speech embeddings in the prompt, and the encoder-decoder model's
gated cross-attention to the Whisper features before the LLM layers.

``[gMASK] sop <|user|> \\n {speech of h1} <|sep|> ... {speech of the current utterance} <|task|> <|assistant|>
\\n {target} </s>``, with every (or each chosen) layer also attending to the segment-embedded Whisper features. The
cross-attention's output projections start at zero, so the untrained hybrid is the decoder-only model.
"""
from __future__ import annotations

import torch

from espnet_llm.models.decoder_only import DecoderOnlySpeechLLM
from espnet_llm.models.encoder_decoder import EncoderDecoderSpeechLLM


class HybridSpeechLLM(EncoderDecoderSpeechLLM):
    def __init__(self, speech_encoder, adapter, llm, layout, **kwargs):
        """kwargs: those of EncoderDecoderSpeechLLM (cross_attention_layers, attention_size, gate, ...)."""
        if adapter is None:
            raise ValueError("the hybrid model needs an adapter into the LLM's hidden size")
        # The memory the base class encodes stays Whisper's (the cross-attention reads it, as the encoder-decoder
        # model's does); the adapter makes the prompt's embeddings from it, per segment.
        super().__init__(speech_encoder, None, llm, layout, **kwargs)
        self.prompt_adapter = adapter

    def speech_in_prompt(self, feats: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
        # each segment stacked on its own, as the decoder-only model's encode_speech does
        ids, counts = torch.unique_consecutive(segments, return_counts=True)
        adapted, adapted_segments = [], []
        for piece, segment in zip(torch.split(feats, counts.tolist()), ids):
            embeds, _ = self.prompt_adapter(piece[None], torch.tensor([len(piece)], device=feats.device))
            adapted.append(embeds[0])
            adapted_segments.append(segment.repeat(len(embeds[0])))
        return DecoderOnlySpeechLLM.speech_in_prompt(self, torch.cat(adapted), torch.cat(adapted_segments))
