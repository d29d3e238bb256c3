import json
import math

import pytest
import torch

from espnet_llm.mini.make_tiny_models import make_tiny_models
from espnet_llm.llm.chatglm3 import CHATGLM3_6B_CONFIG, checkpoint_shards, load_chatglm3
from espnet_llm.mini.tiny_chatglm3 import TINY_CHATGLM3_SIZES, write_tiny_chatglm3
from espnet_llm.llm.tokenizer import ChatGLM3Tokenizer
from espnet_llm.resources import AISHELL_NER_DEV_TRANSCRIPT
from espnet_llm.speech.whisper_encoder import WhisperSpeechEncoder


def test_tiny_models_have_the_real_formats(tiny_models):
    for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
        assert (tiny_models / "whisper" / name).is_file()
    chatglm3 = tiny_models / "chatglm3"
    config = json.loads((chatglm3 / "config.json").read_text())
    assert config.keys() == CHATGLM3_6B_CONFIG.keys() and config["model_type"] == "chatglm"
    assert [p.name for p in checkpoint_shards(chatglm3)] == [f"model-0000{i}-of-00002.safetensors" for i in (1, 2)]
    tokenizer = ChatGLM3Tokenizer(chatglm3 / "tokenizer.model")
    assert len(tokenizer) <= config["padded_vocab_size"] < len(tokenizer) + 64  # rows for specials and task tokens
    model = load_chatglm3(chatglm3)
    assert model.get_input_embeddings().num_embeddings == config["padded_vocab_size"]
    assert sum(p.numel() for p in model.parameters()) < 1_000_000


def test_same_seed_same_weights(tiny_models, tmp_path):
    again = write_tiny_chatglm3(tmp_path / "again", seed=0)
    other = write_tiny_chatglm3(tmp_path / "other", seed=1)
    for shard in checkpoint_shards(tiny_models / "chatglm3"):
        assert (again / shard.name).read_bytes() == shard.read_bytes()
        assert (other / shard.name).read_bytes() != shard.read_bytes()
    assert (again / "tokenizer.model").read_bytes() == (tiny_models / "chatglm3" / "tokenizer.model").read_bytes()


def test_tiny_chatglm3_learns_a_dev_line_in_a_few_steps(tiny_models):
    torch.manual_seed(0)
    model = load_chatglm3(tiny_models / "chatglm3").train()
    tokenizer = ChatGLM3Tokenizer(tiny_models / "chatglm3" / "tokenizer.model")
    line = AISHELL_NER_DEV_TRANSCRIPT.read_text(encoding="utf-8").splitlines()[0].split(" ", 1)[1]
    ids = torch.tensor([tokenizer.build_chat_prompt("<|ner|>") + tokenizer.encode(line) + [tokenizer.eos_id]])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = model(ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]


def test_tiny_whisper_output_carries_the_speech_not_only_the_positions(tiny_models):
    # two different sounds of the same length: with transformers' default init the outputs at each frame
    # were 99.95% alike (the positions drowned the convolutions); the tiny encoder must tell them apart
    encoder = WhisperSpeechEncoder(tiny_models / "whisper")
    t = torch.arange(32000) / 16000
    speech = torch.stack([0.3 * torch.sin(2 * math.pi * 220 * t), 0.3 * torch.sin(2 * math.pi * 1800 * t) * (t % 0.5 < 0.25)])
    hidden, _ = encoder(speech, torch.tensor([32000, 32000]))
    a, b = hidden[0], hidden[1]
    assert ((a - b) ** 2).mean() > 0.2 * (a**2).mean()


def test_the_recipe_config_sets_the_chatglm3_sizes(tmp_path):
    config = tmp_path / "tiny_models.yaml"
    config.write_text("chatglm3:\n    num_layers: 3\n    hidden_size: 96\n    num_attention_heads: 3\n    kv_channels: 32\n")
    models = make_tiny_models(tmp_path / "models", seed=0, config=config)
    written = json.loads((models / "chatglm3" / "config.json").read_text())
    assert (written["num_layers"], written["hidden_size"], written["num_attention_heads"]) == (3, 96, 3)
    assert written["ffn_hidden_size"] == TINY_CHATGLM3_SIZES["ffn_hidden_size"]  # keys it does not name keep the default
    assert load_chatglm3(models / "chatglm3").config.num_hidden_layers == 3
    assert (models / "tiny_models.yaml").read_bytes() == config.read_bytes()  # run.sh compares it with conf/


def test_a_misspelt_size_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="num_layer"):
        write_tiny_chatglm3(tmp_path / "chatglm3", sizes={"num_layer": 3})
