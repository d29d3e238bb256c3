"""LoRA on the GLM attention and MLP projections, through peft."""
from __future__ import annotations

from peft import LoraConfig, get_peft_model
from torch import nn

# transformers' GlmDecoderLayer names: fused ChatGLM3 query_key_value became q/k/v, dense_h_to_4h gate_up.
GLM_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj")


def apply_lora(
    llm: nn.Module,
    rank: int = 32,
    alpha: int = 32,
    dropout: float = 0.05,
    target_modules: list[str] | tuple[str, ...] = GLM_PROJECTIONS,
    trainable_token_ids: list[int] = (),
) -> nn.Module:
    """Wrap the LLM with LoRA adapters; every base weight is frozen by peft.

    trainable_token_ids: embedding rows to train (the project's task tokens, which ChatGLM3 never saw).
    """
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        bias="none",
        trainable_token_indices={"embed_tokens": list(trainable_token_ids)} if trainable_token_ids else None,
    )
    return get_peft_model(llm, config)
