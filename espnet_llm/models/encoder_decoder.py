"""Encoder-decoder speech LLM: ChatGLM3 layers cross-attend to Whisper features through tanh gates.

No speech in the prompt: ``[gMASK] sop <|user|> \\n <|task|> <|assistant|> \\n {target} </s>``. The memory holds the
history utterances and the current one; attention ignores the order of its keys, so a learned embedding of each
frame's segment (counted back from the current utterance; ``SpeechLLM.segment_embedding``) is in the memory
before the keys and values; the answer's tokens carry the same count as their part (``SpeechLLM.part_embedding``),
so that a query can tell which segment it transcribes.
"""
from __future__ import annotations

import contextlib

import torch

from espnet_llm.models.cross_attention import CrossAttendingDecoderLayer, GatedCrossAttention, SpeechMemory
from espnet_llm.models.speech_llm import SpeechLLM


class EncoderDecoderSpeechLLM(SpeechLLM):
    def __init__(
        self,
        speech_encoder,
        adapter,
        llm,
        layout,
        cross_attention_layers: list[int] | None = None,
        attention_size: int | None = None,
        num_heads: int | None = None,
        initial_gate: float = 1.0,
        gate: str = "static",
        **kwargs,
    ):
        """cross_attention_layers: LLM layer indices to give a cross-attention block (None: every layer).

        attention_size: width of the cross-attention (default: the speech memory's width);
        num_heads: its heads (default: attention_size / 64, Whisper's head size);
        initial_gate: the gates' parameter before training (see GatedCrossAttention);
        gate: static (one per layer) or dynamic (per token, from its hidden state; see GatedCrossAttention).
        """
        super().__init__(speech_encoder, adapter, llm, layout, **kwargs)
        memory_size = self.memory_size
        attention_size = attention_size or memory_size
        num_heads = num_heads or max(1, attention_size // 64)
        layers = llm.decoder_layers
        chosen = range(len(layers)) if cross_attention_layers is None else cross_attention_layers
        self.memory = SpeechMemory()
        hidden = llm.hidden_size
        eps = llm.config.rms_norm_eps
        for i in chosen:
            block = GatedCrossAttention(hidden, memory_size, attention_size, num_heads, eps, initial_gate, gate)
            block.to(device=next(layers[i].parameters()).device)
            layers[i] = CrossAttendingDecoderLayer(layers[i], block, self.memory)
        self.cross_attention_layers = list(chosen)

    def speech_in_prompt(self, feats: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
        return feats[:0].new_zeros(0, self.llm.hidden_size).to(self.llm.causal_lm.dtype)

    @contextlib.contextmanager
    def attending_to(self, memory, memory_lengths, memory_segments, repeat: int = 1):
        mask = torch.arange(memory.shape[1], device=memory.device)[None] < memory_lengths[:, None]
        # beam search runs beam_size copies of each row side by side (transformers' repeat_interleave)
        self.memory.set(memory.repeat_interleave(repeat, 0), mask.repeat_interleave(repeat, 0))
        try:
            yield
        finally:
            self.memory.set(None, None)
