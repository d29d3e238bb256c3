"""A tiny random Whisper in the real file formats, for the mini recipe, the tests and CI.

``write_tiny_whisper`` writes a transformers WhisperModel directory (config.json,
model.safetensors, preprocessor_config.json) with Whisper's real input side (80 mels,
1500 positions = 30 s) and tiny width and depth. ``write_openai_checkpoint`` writes a model in
OpenAI's ``.pt`` format, named module by module after OpenAI's ``whisper/model.py``
(independently of the loader's renaming table, so a test comparing the two checks that table).
"""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

TINY_WHISPER_CONFIG = {
    "vocab_size": 256,
    "num_mel_bins": 80,
    "d_model": 64,
    "encoder_layers": 2,
    "encoder_attention_heads": 4,
    "encoder_ffn_dim": 256,
    "decoder_layers": 2,
    "decoder_attention_heads": 4,
    "decoder_ffn_dim": 256,
    "max_source_positions": 1500,
    "max_target_positions": 448,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "decoder_start_token_id": 3,
    "begin_suppress_tokens": None,
    "suppress_tokens": None,
}
CONV_GAIN = 4.0


def write_tiny_whisper(output_dir: str | Path, seed: int = 0) -> Path:
    """Write a random tiny WhisperModel directory (same seed, same weights); return its path."""
    output_dir = Path(output_dir)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = WhisperModel(WhisperConfig(**TINY_WHISPER_CONFIG))
        # transformers' std-0.02 init leaves the convolutions' output ~100 times weaker than the sinusoidal
        # positions, so that a random encoder's output is 99.95% position and 0.05% speech; a std of
        # CONV_GAIN / sqrt(fan_in) makes the speech dominate, as it does in a trained Whisper
        for conv in (model.encoder.conv1, model.encoder.conv2):
            fan_in = conv.in_channels * conv.kernel_size[0]
            torch.nn.init.normal_(conv.weight, std=CONV_GAIN / fan_in**0.5)
    model.save_pretrained(output_dir)
    WhisperFeatureExtractor(feature_size=TINY_WHISPER_CONFIG["num_mel_bins"]).save_pretrained(output_dir)
    return output_dir


def openai_state_dict(model: WhisperModel) -> dict[str, torch.Tensor]:
    """A WhisperModel's weights under the names of OpenAI's ``Whisper`` module."""
    state: dict[str, torch.Tensor] = {}

    def put(openai_name: str, module: torch.nn.Module) -> None:
        for name, tensor in module.state_dict().items():
            state[f"{openai_name}.{name}"] = tensor.clone()

    def put_attention(openai_name: str, attention: torch.nn.Module) -> None:
        put(f"{openai_name}.query", attention.q_proj)
        put(f"{openai_name}.key", attention.k_proj)
        put(f"{openai_name}.value", attention.v_proj)
        put(f"{openai_name}.out", attention.out_proj)

    def put_block(openai_name: str, layer: torch.nn.Module) -> None:  # self-attention and MLP, in both halves
        put_attention(f"{openai_name}.attn", layer.self_attn)
        put(f"{openai_name}.attn_ln", layer.self_attn_layer_norm)
        put(f"{openai_name}.mlp.0", layer.fc1)
        put(f"{openai_name}.mlp.2", layer.fc2)
        put(f"{openai_name}.mlp_ln", layer.final_layer_norm)

    encoder, decoder = model.encoder, model.decoder
    put("encoder.conv1", encoder.conv1)
    put("encoder.conv2", encoder.conv2)
    state["encoder.positional_embedding"] = encoder.embed_positions.weight.clone()  # a buffer in OpenAI's model
    for i, layer in enumerate(encoder.layers):
        put_block(f"encoder.blocks.{i}", layer)
    put("encoder.ln_post", encoder.layer_norm)

    state["decoder.token_embedding.weight"] = decoder.embed_tokens.weight.clone()
    state["decoder.positional_embedding"] = decoder.embed_positions.weight.clone()
    for i, layer in enumerate(decoder.layers):
        put_block(f"decoder.blocks.{i}", layer)
        put_attention(f"decoder.blocks.{i}.cross_attn", layer.encoder_attn)
        put(f"decoder.blocks.{i}.cross_attn_ln", layer.encoder_attn_layer_norm)
    put("decoder.ln", decoder.layer_norm)
    return state


def write_openai_checkpoint(whisper: str | Path | WhisperModel, output_file: str | Path) -> Path:
    """Save a WhisperModel (or that of a transformers directory) as an OpenAI ``.pt`` (``dims`` +
    ``model_state_dict``)."""
    model = whisper if isinstance(whisper, WhisperModel) else WhisperModel.from_pretrained(whisper, dtype=torch.float32)
    config = model.config
    dims = {
        "n_mels": config.num_mel_bins,
        "n_vocab": config.vocab_size,
        "n_audio_ctx": config.max_source_positions,
        "n_audio_state": config.d_model,
        "n_audio_head": config.encoder_attention_heads,
        "n_audio_layer": config.encoder_layers,
        "n_text_ctx": config.max_target_positions,
        "n_text_state": config.d_model,
        "n_text_head": config.decoder_attention_heads,
        "n_text_layer": config.decoder_layers,
    }
    output_file = Path(output_file)
    torch.save({"dims": dims, "model_state_dict": openai_state_dict(model)}, output_file)
    return output_file
