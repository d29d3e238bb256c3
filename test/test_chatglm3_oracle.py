"""ChatGLM3 -> GlmForCausalLM conversion checked against a reference forward written here from the architecture.

The reference reads the official tensors straight from the shard files and implements ChatGLM3 in plain
torch (float64): RMSNorm, fused QKV with bias split [q of all heads | k of the groups | v of the groups],
grouped KV (head h uses group h // (heads / groups)), rotary on the first half of each head in interleaved
pairs with base 10000 * rope_ratio, SwiGLU with [gate | up], final norm, separate output layer.
"""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from espnet_llm.llm.chatglm3 import (
    CHATGLM3_6B_CONFIG,
    ChatGLM3LayoutError,
    convert_chatglm3,
    count_parameters_on_meta,
    glm_config_from_chatglm3,
    load_chatglm3,
    official_parameter_shapes,
    rotary_inv_freq_length,
)
from espnet_llm.mini.tiny_chatglm3 import TINY_CHATGLM3_SIZES, write_random_chatglm3_checkpoint

SMALL = {**CHATGLM3_6B_CONFIG, **TINY_CHATGLM3_SIZES, "padded_vocab_size": 96, "seq_length": 256}
# Heads x head_dim different from hidden_size, 4 groups, and a rope_ratio as ChatGLM3-6B-32k's.
SMALL_VARIANT = {**SMALL, "num_attention_heads": 8, "multi_query_group_num": 4, "kv_channels": 32, "rope_ratio": 50}
STD = 0.15  # large enough that every sub-layer moves the logits well past the tolerance
PROMPT = torch.tensor([5, 17, 3, 60, 42, 8, 91, 33, 7, 64, 12, 50])
TOLERANCE = 1e-4


def read_official_state(checkpoint_dir):
    state = {}
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = checkpoint_dir / index_name
        if index.exists():
            for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
                path = checkpoint_dir / shard
                state.update(load_file(path) if shard.endswith(".safetensors") else torch.load(path, weights_only=True))
    return {k: v.double() for k, v in state.items()}


def reference_logits(state, config, ids):
    """ChatGLM3's forward for one sequence of token ids, (T,) -> (T, vocab)."""
    heads, groups = config["num_attention_heads"], config["multi_query_group_num"]
    head_dim, eps = config["kv_channels"], config["layernorm_epsilon"]
    length = len(ids)

    def rms_norm(x, weight):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight

    rotary_dim = head_dim // 2
    base = 10000.0 * config.get("rope_ratio", 1)
    frequencies = base ** (-torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)
    angles = torch.arange(length, dtype=torch.float64)[:, None] * frequencies  # (T, rotary_dim / 2)
    cos, sin = angles.cos()[:, None, :], angles.sin()[:, None, :]

    def rotary(x):  # (T, n, head_dim): rotate pairs (2i, 2i + 1) of the first rotary_dim dims
        even, odd = x[..., 0:rotary_dim:2], x[..., 1:rotary_dim:2]
        rotated = torch.stack([even * cos - odd * sin, odd * cos + even * sin], dim=-1).flatten(-2)
        return torch.cat([rotated, x[..., rotary_dim:]], dim=-1)

    causal = torch.full((length, length), float("-inf"), dtype=torch.float64).triu(1)
    hidden = state["transformer.embedding.word_embeddings.weight"][ids]
    for n in range(config["num_layers"]):
        p = f"transformer.encoder.layers.{n}."
        x = rms_norm(hidden, state[p + "input_layernorm.weight"])
        qkv = x @ state[p + "self_attention.query_key_value.weight"].T + state[p + "self_attention.query_key_value.bias"]
        q_end, k_end = heads * head_dim, (heads + groups) * head_dim
        q = rotary(qkv[:, :q_end].reshape(length, heads, head_dim))
        k = rotary(qkv[:, q_end:k_end].reshape(length, groups, head_dim))
        v = qkv[:, k_end:].reshape(length, groups, head_dim)
        outputs = []
        for h in range(heads):
            g = h // (heads // groups)
            scores = q[:, h] @ k[:, g].T / math.sqrt(head_dim) + causal
            outputs.append(scores.softmax(-1) @ v[:, g])
        hidden = hidden + torch.cat(outputs, dim=-1) @ state[p + "self_attention.dense.weight"].T
        x = rms_norm(hidden, state[p + "post_attention_layernorm.weight"])
        gate, up = (x @ state[p + "mlp.dense_h_to_4h.weight"].T).chunk(2, dim=-1)
        hidden = hidden + (F.silu(gate) * up) @ state[p + "mlp.dense_4h_to_h.weight"].T
    hidden = rms_norm(hidden, state["transformer.encoder.final_layernorm.weight"])
    return hidden @ state["transformer.output_layer.weight"].T


def reference_greedy(state, config, ids, steps):
    ids = ids.clone()
    for _ in range(steps):
        ids = torch.cat([ids, reference_logits(state, config, ids)[-1].argmax().view(1)])
    return ids


def model_logits(model, ids):
    with torch.no_grad():
        return model(ids[None]).logits[0].double()


def max_diff(model, state, config):
    return (model_logits(model, PROMPT) - reference_logits(state, config, PROMPT)).abs().max().item()


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("chatglm3_small")
    write_random_chatglm3_checkpoint(SMALL, path, num_shards=3, seed=1, std=STD)
    return path, read_official_state(path)


@pytest.mark.parametrize(
    "config,file_format,num_shards",
    [(SMALL, "safetensors", 1), (SMALL, "safetensors", 3), (SMALL, "bin", 3), (SMALL_VARIANT, "bin", 2)],
)
def test_converted_model_matches_reference(tmp_path, config, file_format, num_shards):
    official = write_random_chatglm3_checkpoint(
        config, tmp_path / "official", num_shards=num_shards, file_format=file_format, seed=1, std=STD
    )
    state = read_official_state(official)
    assert len({p.name for p in official.iterdir() if p.suffix in (".bin", ".safetensors")}) == num_shards
    report = convert_chatglm3(official, tmp_path / "glm")
    assert report.source_tensors == len(state)
    assert report.target_tensors == len(state) - 1 + 2 * config["num_layers"] * 2  # qkv weight+bias -> 3 each; inv_freq dropped
    for model in (load_chatglm3(official), load_chatglm3(tmp_path / "glm")):
        assert model.dtype == torch.float32
        assert max_diff(model, state, config) <= TOLERANCE
        model.generation_config.eos_token_id = None  # compare a fixed number of steps
        generated = model.generate(PROMPT[None], max_new_tokens=8, do_sample=False)[0]
        assert torch.equal(generated, reference_greedy(state, config, PROMPT, 8))


def test_format_and_sharding_do_not_change_values(tmp_path):
    a = write_random_chatglm3_checkpoint(SMALL, tmp_path / "a", num_shards=1, file_format="safetensors", seed=3)
    b = write_random_chatglm3_checkpoint(SMALL, tmp_path / "b", num_shards=3, file_format="bin", seed=3)
    state_a, state_b = read_official_state(a), read_official_state(b)
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


def test_conversion_keeps_dtype(tmp_path):
    official = write_random_chatglm3_checkpoint(SMALL, tmp_path / "official", num_shards=2, dtype=torch.bfloat16)
    report = convert_chatglm3(official, tmp_path / "glm")
    assert dict(report.dtypes) == {"bfloat16": report.target_tensors}
    assert json.loads((tmp_path / "glm" / "config.json").read_text())["dtype"] == "bfloat16"
    assert load_chatglm3(tmp_path / "glm", dtype=torch.bfloat16).dtype == torch.bfloat16
    assert load_chatglm3(official, dtype=torch.bfloat16).model.embed_tokens.weight.dtype == torch.bfloat16


# The oracle has teeth: each plausible wrong mapping, applied to a correctly loaded model, breaks the match.
def swap_key_value(model):
    for layer in model.model.layers:
        attention = layer.self_attn
        attention.k_proj.weight, attention.v_proj.weight = attention.v_proj.weight, attention.k_proj.weight
        attention.k_proj.bias, attention.v_proj.bias = attention.v_proj.bias, attention.k_proj.bias


def rotary_half_split(model):
    """Reorder q/k rows as a Llama-style conversion would: pairs (i, i + d/2) instead of (2i, 2i + 1)."""
    head_dim = model.config.head_dim
    rotary_dim = head_dim // 2
    within_rotary = torch.cat([torch.arange(0, rotary_dim, 2), torch.arange(1, rotary_dim, 2)])
    head_order = torch.cat([within_rotary, torch.arange(rotary_dim, head_dim)])
    for layer in model.model.layers:
        for projection in (layer.self_attn.q_proj, layer.self_attn.k_proj):
            rows = (torch.arange(projection.out_features // head_dim)[:, None] * head_dim + head_order).flatten()
            projection.weight.data = projection.weight.data[rows]
            projection.bias.data = projection.bias.data[rows]


def swap_gate_up(model):
    for layer in model.model.layers:
        gate, up = layer.mlp.gate_up_proj.weight.data.chunk(2)
        layer.mlp.gate_up_proj.weight.data = torch.cat([up, gate])


def wrong_group_of_heads(model):
    """Heads paired with KV groups round-robin (h % groups) instead of in blocks (h // (heads / groups))."""
    heads, head_dim = model.config.num_attention_heads, model.config.head_dim
    groups = model.config.num_key_value_heads
    order = torch.arange(heads).reshape(heads // groups, groups).T.flatten()
    rows = (order[:, None] * head_dim + torch.arange(head_dim)).flatten()
    for layer in model.model.layers:
        layer.self_attn.q_proj.weight.data = layer.self_attn.q_proj.weight.data[rows]
        layer.self_attn.q_proj.bias.data = layer.self_attn.q_proj.bias.data[rows]
        layer.self_attn.o_proj.weight.data = layer.self_attn.o_proj.weight.data[:, rows]


@pytest.mark.parametrize("break_mapping", [swap_key_value, rotary_half_split, swap_gate_up, wrong_group_of_heads])
def test_wrong_mapping_fails_the_oracle(small_checkpoint, break_mapping):
    path, state = small_checkpoint
    model = load_chatglm3(path)
    assert max_diff(model, state, SMALL) <= TOLERANCE
    break_mapping(model)
    assert max_diff(model, state, SMALL) > 100 * TOLERANCE


def test_wrong_rope_ratio_fails_the_oracle(small_checkpoint):
    path, state = small_checkpoint
    model = load_chatglm3(path)
    assert max_diff(model, state, {**SMALL, "rope_ratio": 50}) > 100 * TOLERANCE


def test_checkpoint_outside_the_layout_is_rejected(tmp_path, small_checkpoint):
    official = write_random_chatglm3_checkpoint(SMALL, tmp_path / "official", num_shards=1)
    shard = official / "model-00001-of-00001.safetensors"
    state = load_file(shard)
    save_file({**state, "transformer.prefix_encoder.embedding.weight": torch.zeros(2, 2)}, shard)
    with pytest.raises(ChatGLM3LayoutError, match="prefix_encoder.*not part of the ChatGLM3 layout"):
        load_chatglm3(official)
    del state["transformer.encoder.layers.1.mlp.dense_4h_to_h.weight"]
    save_file(state, shard)
    with pytest.raises(ChatGLM3LayoutError, match="1 tensors missing.*layers.1.mlp.down_proj"):
        convert_chatglm3(official, tmp_path / "glm")
    state = read_official_state(small_checkpoint[0])
    state["transformer.encoder.layers.0.self_attention.query_key_value.weight"] = torch.zeros(7, 64)
    save_file({k: v.float() for k, v in state.items()}, shard)
    with pytest.raises(ChatGLM3LayoutError, match="query_key_value.weight has 7 rows"):
        load_chatglm3(official)


# Facts of the official ChatGLM3-6B layout.
def test_chatglm3_6b_official_config():
    c = CHATGLM3_6B_CONFIG
    assert (c["num_layers"], c["hidden_size"], c["num_attention_heads"], c["kv_channels"]) == (28, 4096, 32, 128)
    assert c["multi_query_attention"] is True and c["multi_query_group_num"] == 2
    assert (c["ffn_hidden_size"], c["padded_vocab_size"], c["layernorm_epsilon"]) == (13696, 65024, 1e-5)
    assert c["rmsnorm"] is True and c["add_qkv_bias"] is True and c["add_bias_linear"] is False
    assert "rope_ratio" not in c and c["seq_length"] == 8192
    assert (c["eos_token_id"], c["pad_token_id"]) == (2, 0)


def test_glm_config_of_chatglm3_6b():
    g = glm_config_from_chatglm3(CHATGLM3_6B_CONFIG)
    assert (g.num_hidden_layers, g.hidden_size, g.intermediate_size, g.vocab_size) == (28, 4096, 13696, 65024)
    assert (g.num_attention_heads, g.num_key_value_heads, g.head_dim) == (32, 2, 128)
    assert g.rope_parameters["rope_theta"] == 10000.0 and g.rope_parameters["partial_rotary_factor"] == 0.5
    assert g.rms_norm_eps == 1e-5 and g.attention_bias is True and g.tie_word_embeddings is False
    assert g.max_position_embeddings == 8192 and g.hidden_act == "silu"
    assert (g.pad_token_id, g.eos_token_id) == (0, 2)
    assert glm_config_from_chatglm3({**CHATGLM3_6B_CONFIG, "rope_ratio": 50}).rope_parameters["rope_theta"] == 500000.0
    no_mqa = glm_config_from_chatglm3({**CHATGLM3_6B_CONFIG, "multi_query_attention": False})
    assert no_mqa.num_key_value_heads == 32


@pytest.mark.parametrize("key,value", [("rmsnorm", False), ("add_bias_linear", True), ("post_layer_norm", False)])
def test_unsupported_variants_are_rejected(key, value):
    with pytest.raises(ChatGLM3LayoutError, match=key):
        glm_config_from_chatglm3({**CHATGLM3_6B_CONFIG, key: value})


def test_chatglm3_6b_parameter_count_on_meta():
    # Embedding + output 2 x 65024 x 4096; per layer QKV (4096 + 2 x 2 x 128) x 4096 + 4608 bias, dense 4096^2,
    # MLP 2 x 13696 x 4096 + 13696 x 4096, two norms 2 x 4096; x 28 layers; final norm 4096.
    official = official_parameter_shapes(CHATGLM3_6B_CONFIG)
    assert official["transformer.encoder.layers.0.self_attention.query_key_value.weight"] == (4608, 4096)
    assert official["transformer.encoder.layers.0.mlp.dense_h_to_4h.weight"] == (27392, 4096)
    assert len(official) == 2 + 28 * 7 + 1
    assert rotary_inv_freq_length(CHATGLM3_6B_CONFIG) == 32
    published = 6_243_584_000  # ChatGLM3-6B
    assert sum(math.prod(s) for s in official.values()) == published
    assert count_parameters_on_meta(CHATGLM3_6B_CONFIG) == published
