"""make_full_size_models: random models in the published layouts, at the depth a YAML gives, that the recipe's
loaders read as they read the real ones (here at a small width, which the YAML may also set)."""
from __future__ import annotations

import json

import pytest
import torch

from espnet_llm.mini.make_full_size_models import make_full_size_models
from espnet_llm.llm.chatglm3 import CHATGLM3_6B_CONFIG, load_chatglm3
from espnet_llm.speech.whisper_encoder import load_whisper_encoder, whisper_config

SMALL = """\
chatglm3: {num_layers: 2, hidden_size: 64, ffn_hidden_size: 128, num_attention_heads: 4, kv_channels: 16}
whisper: {d_model: 64, encoder_layers: 2, decoder_layers: 1, encoder_attention_heads: 4, decoder_attention_heads: 4,
          encoder_ffn_dim: 128, decoder_ffn_dim: 128}
"""


def test_the_published_layouts_at_the_configured_depth_load_as_the_real_ones(tmp_path):
    config = tmp_path / "check.yaml"
    config.write_text(SMALL)
    made = make_full_size_models(config, tmp_path / "downloads")
    chatglm3, whisper = tmp_path / "downloads" / "chatglm3-6b", tmp_path / "downloads" / "whisper-large-v2"
    assert made == [chatglm3, whisper]
    official = json.loads((chatglm3 / "config.json").read_text())
    assert official["num_layers"] == 2 and official["padded_vocab_size"] == CHATGLM3_6B_CONFIG["padded_vocab_size"]
    index = json.loads((chatglm3 / "pytorch_model.bin.index.json").read_text())
    assert sorted(set(index["weight_map"].values()))[0] == "pytorch_model-00001-of-00004.bin"
    llm = load_chatglm3(chatglm3, dtype=torch.bfloat16)
    assert len(llm.model.layers) == 2 and llm.lm_head.weight.shape == (65024, 64)
    assert llm.lm_head.weight.dtype == torch.bfloat16
    # OpenAI's large-v2.pt, in the directory the configs name
    assert [p.name for p in whisper.glob("*.pt")] == ["large-v2.pt"]
    assert whisper_config(whisper).encoder_layers == 2 and whisper_config(whisper).num_mel_bins == 80
    encoder = load_whisper_encoder(whisper)
    assert len(encoder.layers) == 2 and encoder.embed_positions.weight.shape == (1500, 64)
    assert make_full_size_models(config, tmp_path / "downloads") == []  # made from this config already


def test_a_key_the_published_config_lacks_is_named(tmp_path):
    config = tmp_path / "check.yaml"
    config.write_text("chatglm3: {num_layer: 2}\n")
    with pytest.raises(ValueError, match=r"chatglm3: \['num_layer'\] are not keys of the published config"):
        make_full_size_models(config, tmp_path / "downloads")
