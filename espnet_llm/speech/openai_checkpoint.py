"""OpenAI Whisper checkpoints (``large-v2.pt``: ``dims`` + ``model_state_dict``) as transformers modules.

transformers 5.x wheels no longer ship ``models/whisper/convert_openai_to_hf.py`` (and it fetched
a generation config from the hub), so the parameter names of OpenAI's ``whisper/model.py`` are
mapped here, for the encoder only and strictly: an unknown or missing name is an error.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

# OpenAI's names inside a residual attention block -> transformers' WhisperEncoderLayer names.
BLOCK_NAMES = {
    "attn.query": "self_attn.q_proj",
    "attn.key": "self_attn.k_proj",
    "attn.value": "self_attn.v_proj",
    "attn.out": "self_attn.out_proj",
    "attn_ln": "self_attn_layer_norm",
    "mlp.0": "fc1",
    "mlp.2": "fc2",
    "mlp_ln": "final_layer_norm",
}
# OpenAI's names outside the blocks -> transformers' WhisperEncoder names.
STEM_NAMES = {
    "conv1": "conv1",
    "conv2": "conv2",
    "ln_post": "layer_norm",
}


def transformers_encoder_key(openai_key: str) -> str:
    """``encoder.blocks.3.attn.query.weight`` -> ``layers.3.self_attn.q_proj.weight``."""
    if openai_key == "encoder.positional_embedding":
        return "embed_positions.weight"
    block = re.fullmatch(r"encoder\.blocks\.(\d+)\.(.+)\.(weight|bias)", openai_key)
    if block and block[2] in BLOCK_NAMES:
        return f"layers.{block[1]}.{BLOCK_NAMES[block[2]]}.{block[3]}"
    stem = re.fullmatch(r"encoder\.(\w+)\.(weight|bias)", openai_key)
    if stem and stem[1] in STEM_NAMES:
        return f"{STEM_NAMES[stem[1]]}.{stem[2]}"
    raise KeyError(f"unknown OpenAI Whisper encoder parameter '{openai_key}'")


def whisper_config_from_openai_dims(dims: dict, ffn_dim: int) -> WhisperConfig:
    """The transformers config of an OpenAI ``ModelDimensions`` dict (``ffn_dim`` is not among them)."""
    return WhisperConfig(
        num_mel_bins=dims["n_mels"],
        vocab_size=dims["n_vocab"],
        max_source_positions=dims["n_audio_ctx"],
        d_model=dims["n_audio_state"],
        encoder_attention_heads=dims["n_audio_head"],
        encoder_layers=dims["n_audio_layer"],
        max_target_positions=dims["n_text_ctx"],
        decoder_attention_heads=dims["n_text_head"],
        decoder_layers=dims["n_text_layer"],
        encoder_ffn_dim=ffn_dim,
        decoder_ffn_dim=ffn_dim,
        # Token ids are the decoder's business; WhisperConfig insists on a start token, here
        # <|startoftranscript|> of OpenAI's multilingual (51865 tokens) or English tokenizer.
        pad_token_id=None,
        bos_token_id=None,
        eos_token_id=None,
        decoder_start_token_id=50258 if dims["n_vocab"] >= 51865 else 50257,
    )


def openai_whisper_config(checkpoint: str | Path) -> WhisperConfig:
    """The encoder's transformers config of an OpenAI ``.pt`` file, without reading its weights (mmap)."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    if not isinstance(saved, dict) or "dims" not in saved or "model_state_dict" not in saved:
        raise ValueError(f"{checkpoint}: not an OpenAI Whisper checkpoint (no 'dims' and 'model_state_dict')")
    ffn_dim = saved["model_state_dict"]["encoder.blocks.0.mlp.0.weight"].shape[0]
    return whisper_config_from_openai_dims(saved["dims"], ffn_dim=ffn_dim)


def load_openai_whisper_encoder(checkpoint: str | Path, dtype: torch.dtype = torch.float32) -> WhisperEncoder:
    """Build transformers' WhisperEncoder from an OpenAI ``.pt`` file, converting in memory."""
    # mmap: the decoder half of the file is never read into memory.
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    if not isinstance(saved, dict) or "dims" not in saved or "model_state_dict" not in saved:
        raise ValueError(f"{checkpoint}: not an OpenAI Whisper checkpoint (no 'dims' and 'model_state_dict')")
    openai_state = saved["model_state_dict"]
    try:
        state = {
            transformers_encoder_key(key): value.to(dtype, copy=True)
            for key, value in openai_state.items()
            if key.startswith("encoder.")
        }
    except KeyError as err:
        raise ValueError(f"{checkpoint}: {err.args[0]}") from None
    config = whisper_config_from_openai_dims(saved["dims"], ffn_dim=state["layers.0.fc1.weight"].shape[0])
    with torch.device("meta"):
        encoder = WhisperEncoder(config)
    try:
        encoder.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        raise ValueError(f"{checkpoint}: the encoder weights do not match their dims: {err}") from None
    return encoder
