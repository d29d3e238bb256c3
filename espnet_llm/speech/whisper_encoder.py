"""Whisper's encoder (transformers' WhisperEncoder) as the speech encoder of the speech LLMs.

Loads from a local transformers directory (the openai/whisper-large-v2 layout, or the
WhisperModel directory that make_tiny_models writes), from a CTranslate2 (faster-whisper) directory
(``model.bin``; converted in memory, see ctranslate2_checkpoint) or from an OpenAI ``.pt`` checkpoint.
Frozen by default, as in the paper.

Two input modes:

- ``pad_to_30s=True``: every utterance padded with silence to 30 s (3000 frames -> 1500
  outputs), exactly as Whisper was trained; transformers' own forward.
- ``pad_to_30s=False`` (variable length): only the frames that cover the speech, with the
  positional table cut to that length. transformers' forward insists on 3000 frames and takes
  no padding mask, so the same modules are run here in the same order, with a padding mask in
  self-attention and the convolution input zeroed past each row's end. Each row's output is then
  what it would be alone in its batch. For ~5-s AISHELL utterances this is ~1/6 of the frames.
  It is not the 30-s output cut short: there, every frame also attends to the silence.

``hidden_lengths`` counts the outputs that cover the speech, ((L // 160) - 1) // 2 + 1, in
both modes; in the 30-s mode the outputs after it are the encoding of the padding.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import WhisperConfig
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from espnet_llm.dtypes import torch_dtype
from espnet_llm.speech.ctranslate2_checkpoint import (
    ctranslate2_whisper_config,
    is_ctranslate2_whisper_dir,
    load_ctranslate2_whisper_encoder,
)
from espnet_llm.speech.log_mel import SpeechTooLongError, WhisperLogMel  # the error is part of this API too
from espnet_llm.speech.openai_checkpoint import load_openai_whisper_encoder, openai_whisper_config

__all__ = [
    "WHISPER_LARGE_V2_CONFIG",
    "SpeechTooLongError",
    "WhisperArchitecture",
    "WhisperSpeechEncoder",
    "load_whisper_encoder",
    "whisper_config",
    "whisper_encoder_on_meta",
]

# transformers WhisperConfig kwargs of openai/whisper-large-v2 (its config.json, architecture part).
# Parameters: encoder 636,784,640 (of which 1,920,000 the fixed sinusoidal positions), decoder
# 906,520,320, whole model 1,543,304,960 (published as 1550M).
WHISPER_LARGE_V2_CONFIG = {
    "vocab_size": 51865,
    "num_mel_bins": 80,
    "d_model": 1280,
    "encoder_layers": 32,
    "encoder_attention_heads": 20,
    "encoder_ffn_dim": 5120,
    "decoder_layers": 32,
    "decoder_attention_heads": 20,
    "decoder_ffn_dim": 5120,
    "max_source_positions": 1500,
    "max_target_positions": 448,
    "activation_function": "gelu",
    "scale_embedding": False,
    "pad_token_id": 50257,
    "bos_token_id": 50257,
    "eos_token_id": 50257,
    "decoder_start_token_id": 50258,
}


class _EncoderOfWhisperModel(WhisperEncoder):
    # Loading only the encoder half of a full Whisper checkpoint: its decoder is expected, not reported.
    _keys_to_ignore_on_load_unexpected = [r"(^|\.)decoder\.", r"^proj_out\."]


_ACCEPTED_FORMS = (
    "a transformers Whisper directory (with config.json), a CTranslate2 Whisper directory (with model.bin), "
    "an OpenAI .pt file or a directory holding one (as openai-whisper downloads large-v2.pt)"
)


def openai_checkpoint(path: Path) -> Path | None:
    """The OpenAI ``.pt`` that ``path`` is, or the one a directory of nothing else holds; None otherwise."""
    if path.is_file() and path.suffix == ".pt":
        return path
    if path.is_dir() and not (path / "config.json").exists() and not (path / "model.bin").exists():
        found = sorted(path.glob("*.pt"))
        if len(found) == 1:
            return found[0]
    return None


def load_whisper_encoder(model_path: str | Path, dtype: torch.dtype = torch.float32) -> WhisperEncoder:
    """The encoder of a transformers Whisper directory, of a CTranslate2 (faster-whisper) directory or of
    an OpenAI ``.pt`` checkpoint."""
    path = Path(model_path)
    if checkpoint := openai_checkpoint(path):
        return load_openai_whisper_encoder(checkpoint, dtype=dtype)
    if is_ctranslate2_whisper_dir(path):  # before config.json: a CTranslate2 directory has one too
        return load_ctranslate2_whisper_encoder(path, dtype=dtype)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{model_path}: expected {_ACCEPTED_FORMS}")
    encoder, info = _EncoderOfWhisperModel.from_pretrained(
        path,
        dtype=dtype,
        # WhisperForConditionalGeneration saves model.encoder.*, WhisperModel encoder.*
        key_mapping={r"^(model\.)?encoder\.": ""},
        output_loading_info=True,
    )
    if info["missing_keys"]:
        raise ValueError(f"{model_path}: encoder weights missing from the checkpoint: {sorted(info['missing_keys'])}")
    return encoder


def whisper_config(model_path: str | Path) -> WhisperConfig:
    """The config of a transformers Whisper directory, of a CTranslate2 (faster-whisper) directory or of an
    OpenAI ``.pt`` checkpoint; no weight is read."""
    path = Path(model_path)
    if checkpoint := openai_checkpoint(path):
        return openai_whisper_config(checkpoint)
    if is_ctranslate2_whisper_dir(path):
        return ctranslate2_whisper_config(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{model_path}: expected {_ACCEPTED_FORMS}")
    return WhisperConfig.from_pretrained(path)


def whisper_encoder_on_meta(config: dict = WHISPER_LARGE_V2_CONFIG) -> WhisperEncoder:
    """The encoder's full architecture without allocating its weights (for counting them)."""
    with torch.device("meta"):
        return WhisperEncoder(WhisperConfig(**config))


class WhisperSpeechEncoder(nn.Module):
    """(speech (B, T) 16 kHz, speech_lengths (B,)) -> (hidden (B, T', d_model), hidden_lengths (B,))."""

    def __init__(
        self, model_path: str | Path | WhisperEncoder, pad_to_30s: bool = False, freeze: bool = True,
        dtype: str = "float32",
    ):
        """``model_path``: a transformers or CTranslate2 Whisper directory, an OpenAI .pt file, or a built
        WhisperEncoder. ``pad_to_30s``: every input padded to Whisper's 30 s window, as Whisper was trained (the
        full-size configs'; False: each row only as long as its speech, faster, the mini recipe's). ``dtype``: of the frozen weights; the
        audio and its log-mel stay float32."""
        super().__init__()
        if isinstance(model_path, WhisperEncoder):
            self.encoder = model_path
        else:
            self.encoder = load_whisper_encoder(model_path, dtype=torch_dtype(dtype, "speech_encoder_conf dtype"))
        self.log_mel = WhisperLogMel(self.encoder.config.num_mel_bins, pad_to_30s=pad_to_30s)
        self.pad_to_30s = pad_to_30s
        self.freeze = freeze
        if freeze:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    def output_size(self) -> int:
        return self.encoder.config.d_model

    def train(self, mode: bool = True) -> "WhisperSpeechEncoder":
        super().train(mode)
        if self.freeze:  # a frozen encoder keeps inference behaviour (no dropout) inside a training model
            self.encoder.eval()
        return self

    def forward(self, speech: torch.Tensor, speech_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Frozen: no autograd graph, which would hold every activation of a 32-layer encoder.
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            feats, feat_lengths = self.log_mel(speech, speech_lengths)
            return self.encode_features(feats.to(self.encoder.conv1.weight.dtype), feat_lengths)

    def encode_features(self, feats: torch.Tensor, feat_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-mel (B, n_mels, frames) -> hidden states in this encoder's input mode."""
        hidden_lengths = self.encoder._get_feat_extract_output_lengths(feat_lengths)
        if self.pad_to_30s:
            return self.encoder(feats).last_hidden_state, hidden_lengths
        return self._encode_variable_length(feats, feat_lengths, hidden_lengths), hidden_lengths

    def _encode_variable_length(
        self, feats: torch.Tensor, feat_lengths: torch.Tensor, hidden_lengths: torch.Tensor
    ) -> torch.Tensor:
        enc = self.encoder
        frame_valid = torch.arange(feats.shape[-1], device=feats.device) < feat_lengths[:, None]
        # Zero past each row's end: what conv2's own padding gives the row when it is alone.
        x = nn.functional.gelu(enc.conv1(feats)) * frame_valid[:, None, :]
        x = nn.functional.gelu(enc.conv2(x)).permute(0, 2, 1)
        x = x + enc.embed_positions.weight[: x.shape[1]]  # the positional table cut to the input
        x = nn.functional.dropout(x, p=enc.dropout, training=enc.training)
        hidden_valid = torch.arange(x.shape[1], device=x.device) < hidden_lengths[:, None]
        attention_mask = create_bidirectional_mask(config=enc.config, inputs_embeds=x, attention_mask=hidden_valid)
        for layer in enc.layers:  # (encoder_layerdrop is 0 in every released Whisper; not applied here)
            x = layer(x, attention_mask)
        x = enc.layer_norm(x)
        return x.masked_fill(~hidden_valid[..., None], 0.0)


class WhisperArchitecture(nn.Module):
    """Whisper's encoder without weights, for dry runs and parameter counts (the frozen encoder adds no
    trainable parameter, only its width matters)."""

    def __init__(self, model_path: str, dtype: str = "float32", **ignored):
        super().__init__()
        encoder = whisper_encoder_on_meta(whisper_config(model_path).to_dict())
        self.encoder = encoder.to(torch_dtype(dtype, "speech_encoder_conf dtype"))

    def output_size(self) -> int:
        return self.encoder.config.d_model
