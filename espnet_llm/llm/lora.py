"""LoRA on the GLM attention and MLP projections, through peft."""
from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model
from torch import nn

# transformers' GlmDecoderLayer names: fused ChatGLM3 query_key_value became q/k/v, dense_h_to_4h gate_up, dense_4h_to_h
# down, dense o. The paper's modules (query_key_value, dense_h_to_4h, dense_4h_to_h) have no o_proj; peft has no
# LoRA whose one A is shared by three modules, so query_key_value's update is three (q, k, v): see lora_count.
GLM_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "gate_up_proj", "down_proj")


def apply_lora(
    llm: nn.Module,
    rank: int = 32,
    alpha: int = 32,
    dropout: float = 0.05,
    target_modules: list[str] | tuple[str, ...] = GLM_PROJECTIONS,
    trainable_token_ids: list[int] = (),
) -> nn.Module:
    """Wrap the LLM with LoRA adapters; every base weight is frozen by peft, and what trains is kept in float32
    whatever the frozen weights' dtype (AdamW's updates of 1e-4-sized steps vanish in bf16).

    trainable_token_ids: rows to train in the input embedding and in the output layer (the project's task tokens:
    ChatGLM3 never saw them, and its untied output layer would otherwise emit them through untrained rows). An
    output layer that is itself a LoRA target (the tiny configs') learns every row through LoRA instead: peft
    cannot put both on one module.
    """
    token_rows = {"embed_tokens": list(trainable_token_ids)}
    if "lm_head" not in target_modules:
        token_rows["lm_head"] = list(trainable_token_ids)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        bias="none",
        trainable_token_indices=token_rows if trainable_token_ids else None,
    )
    model = get_peft_model(llm, config)
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    return model


def lora_count(hidden: int, projections: dict[str, tuple[int, int]], rank: int, layers: int) -> int:
    """LoRA parameters of rank r over modules given as name -> (in, out) per layer: r * (in + out) each."""
    return layers * sum(rank * (i + o) for i, o in projections.values())
