"""ChatGLM3 as the speech LLMs' language model: loaded from a local path, LoRA applied, tokenizer beside it."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn

from espnet_llm.dtypes import torch_dtype
from espnet_llm.llm.lora import GLM_PROJECTIONS, apply_lora
from espnet_llm.llm.tokenizer import NER_TOKEN, SEPARATOR, TASK_TOKEN


class ChatGLM3LLM(nn.Module):
    """A frozen ChatGLM3 with LoRA adapters; also owns the tokenizer (``<model_path>/tokenizer.model``).

    dtype: of the frozen weights (bfloat16 at full size: ChatGLM3-6B is 12.5 GB so, 25 GB in float32); what trains
    is float32 (``apply_lora``), and a bfloat16 model runs under autocast (ESPnet's ``use_amp``, and decoding).
    load_weights=False builds the architecture from config.json only (on whatever device is the default,
    e.g. the meta device): used by --dry_run, --collect_stats and the full-size parameter count.
    """

    def __init__(
        self,
        model_path: str,
        lora_rank: int = 32,
        lora_alpha: int = 32,
        lora_dropout: float = 0.05,
        lora_targets: list[str] | tuple[str, ...] = GLM_PROJECTIONS,
        train_task_tokens: bool = True,
        gradient_checkpointing: bool = False,
        dtype: str = "float32",
        load_weights: bool = True,
    ):
        super().__init__()
        from espnet_llm.llm.tokenizer import ChatGLM3Tokenizer

        frozen_dtype = torch_dtype(dtype, "llm_conf dtype")
        self.tokenizer = ChatGLM3Tokenizer(str(Path(model_path) / "tokenizer.model"))
        if load_weights:
            from espnet_llm.llm.chatglm3 import load_chatglm3

            llm = load_chatglm3(model_path, dtype=frozen_dtype)
        else:
            import transformers

            llm = transformers.GlmForCausalLM(glm_config_from_dir(model_path)).to(frozen_dtype)
        if llm.config.vocab_size < len(self.tokenizer):
            raise ValueError(
                f"{model_path}: the LLM has {llm.config.vocab_size} embedding rows but the tokenizer "
                f"{len(self.tokenizer)} tokens; prepare the LLM with the project's task tokens (stage 5)"
            )
        if gradient_checkpointing:
            llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            llm.enable_input_require_grads()
        task_token_ids = [self.tokenizer.token_id(t) for t in (*TASK_TOKEN.values(), SEPARATOR, NER_TOKEN)]
        self.model = apply_lora(
            llm, lora_rank, lora_alpha, lora_dropout, lora_targets,
            trainable_token_ids=sorted(set(task_token_ids)) if train_task_tokens else (),
        )

    @property
    def config(self):
        return self.model.config

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @property
    def causal_lm(self) -> nn.Module:
        """The transformers GlmForCausalLM inside peft's wrapper (LoRA layers injected in place)."""
        return self.model.get_base_model()

    @property
    def decoder_layers(self) -> nn.ModuleList:
        return self.causal_lm.model.layers

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.causal_lm.get_input_embeddings()(ids)

    def hidden_states(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Last-layer states (B, L, H), after the final norm; the output layer is applied by the caller
        to the positions it needs only (a 65k-wide logit row for every prompt position would waste memory).

        attention_mask None: rows padded on the right only, whose real positions never look at the padding under
        causal attention; without a mask SDPA may take its flash kernel."""
        if attention_mask is None:
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device)[None]
        else:
            position_ids = positions(attention_mask)
        return self.causal_lm.model(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids, use_cache=False,
        ).last_hidden_state

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.causal_lm.lm_head(hidden)


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids counted over real tokens only, so a left-padded row is positioned like an unpadded one."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def glm_config_from_dir(model_path: str):
    """The transformers GlmConfig of a ChatGLM3 directory in either layout, without touching the weights."""
    import transformers

    config = json.loads((Path(model_path) / "config.json").read_text())
    if config.get("model_type") == "glm":
        return transformers.GlmConfig.from_pretrained(model_path)
    from espnet_llm.llm.chatglm3 import glm_config_from_chatglm3

    logging.info(f"{model_path}: official ChatGLM3 layout, architecture from config.json")
    return glm_config_from_chatglm3(config)
