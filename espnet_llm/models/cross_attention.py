"""Gated cross-attention inserted before chosen LLM decoder layers (Flamingo's tanh gate).

Hand-written: transformers' GLM has no cross-attention. The output projection starts at zero, so the
untrained model is exactly the LLM, and the gate starts open (tanh(1) = 0.76): started the other way round
(gate 0, random projection) AdamW grew the projection and left the gates near 0 (tanh 0.0001-0.025 after
training on the mini corpus), and the model barely used the speech.

The gate is one learned number per layer (``gate: static``, Flamingo's), or a function of each token's hidden
state (``gate: dynamic``: Linear(hidden -> 1) on the normalised state, then tanh), so that a layer can let the
speech in for some tokens and keep it out for others, as self-attention weighs its context per token. The dynamic
gate starts with zero weights and the static gate's bias: every token starts with the static gate's value.
"""
from __future__ import annotations

import torch
from torch import nn


class SpeechMemory:
    """The encoded speech the cross-attention layers read; set by the model around each LLM call.

    The layers are called by transformers' GlmModel, which passes no extra inputs, hence this holder.
    """

    def __init__(self):
        self.feats: torch.Tensor | None = None  # (B, S, D)
        self.mask: torch.Tensor | None = None  # (B, S) True where a real frame is
        self.keys_values: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}  # per layer, for these feats

    def set(self, feats: torch.Tensor | None, mask: torch.Tensor | None) -> None:
        self.feats, self.mask, self.keys_values = feats, mask, {}

    def projected(self, layer: "GatedCrossAttention", dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer's keys and values of the memory. Without gradients (decoding) they are computed once per
        memory instead of at every generated token; with gradients at every call (each backward needs its graph)."""
        if torch.is_grad_enabled():
            return layer.keys_values(self.feats.to(dtype))
        if layer not in self.keys_values:
            self.keys_values[layer] = layer.keys_values(self.feats.to(dtype))
        return self.keys_values[layer]


class GatedCrossAttention(nn.Module):
    def __init__(
        self, hidden_size: int, memory_size: int, attention_size: int, num_heads: int, eps: float = 1e-5,
        initial_gate: float = 1.0, gate: str = "static",
    ):
        super().__init__()
        if attention_size % num_heads:
            raise ValueError(f"attention_size {attention_size} is not a multiple of num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm = nn.RMSNorm(hidden_size, eps=eps)
        self.query = nn.Linear(hidden_size, attention_size, bias=False)
        self.key = nn.Linear(memory_size, attention_size, bias=False)
        self.value = nn.Linear(memory_size, attention_size, bias=False)
        self.out = nn.Linear(attention_size, hidden_size, bias=False)
        nn.init.zeros_(self.out.weight)
        if gate == "static":
            self.gate = nn.Parameter(torch.full((1,), float(initial_gate)))
        elif gate == "dynamic":
            self.gate_net = nn.Linear(hidden_size, 1)  # its output, before tanh, per token
            nn.init.zeros_(self.gate_net.weight)
            nn.init.constant_(self.gate_net.bias, float(initial_gate))
        else:
            raise ValueError(f"gate: {gate!r}, expected static or dynamic")

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, A) -> (B, heads, L, A / heads)"""
        return x.view(x.shape[0], x.shape[1], self.num_heads, -1).transpose(1, 2)

    def keys_values(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.heads(self.key(memory)), self.heads(self.value(memory))

    def forward(
        self, hidden: torch.Tensor, keys_values: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor
    ) -> torch.Tensor:
        batch, length, _ = hidden.shape
        normed = self.norm(hidden)
        q = self.heads(self.query(normed))
        k, v = keys_values
        # a row without any frame (never passed in practice) would give NaN; let it see its padding instead
        mask = mask | ~mask.any(-1, keepdim=True)
        attended = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        attended = attended.transpose(1, 2).reshape(batch, length, -1)
        # In float32, and left so: added to a bf16 residual of RMS 1, a gated change of RMS 0.001 leaves most
        # elements unchanged. The residual stream stays float32 from here on; under autocast (training, bf16
        # decoding) the LLM's matmuls still run in bf16.
        gate = self.gate_net(normed) if hasattr(self, "gate_net") else self.gate  # (B, L, 1) or (1,)
        return hidden.float() + torch.tanh(gate.float()) * self.out(attended).float()


class CrossAttendingDecoderLayer(nn.Module):
    """A GlmDecoderLayer with a gated cross-attention block in front of it."""

    def __init__(self, layer: nn.Module, cross_attention: GatedCrossAttention, memory: SpeechMemory):
        super().__init__()
        self.layer = layer
        self.cross_attention = cross_attention
        self.memory = memory

    def forward(self, hidden_states, *args, **kwargs):
        if self.memory.feats is None:
            raise RuntimeError("the cross-attention layers were called without speech memory")
        keys_values = self.memory.projected(self.cross_attention, hidden_states.dtype)
        hidden_states = self.cross_attention(hidden_states, keys_values, self.memory.mask)
        return self.layer(hidden_states, *args, **kwargs)
