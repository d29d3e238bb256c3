"""ChatGLM3-6B on transformers' GlmForCausalLM: config mapping, streaming checkpoint conversion, loading.

The official checkpoint (THUDM/chatglm3-6b) needs hub code to run; transformers' own GLM family is the
same architecture under other tensor names, so we rename (and split) tensors instead. Layout facts, each
checked by test/test_chatglm3_oracle.py against a reference forward written independently in plain torch:

- ``query_key_value`` rows are [queries of all heads | keys of the KV groups | values of the KV groups],
  with a bias; query head h uses KV group h // (heads / groups), which is what GLM's ``repeat_kv`` does.
- ``dense_h_to_4h`` rows are [gate | up] of a SwiGLU: GLM's ``gate_up_proj`` unchanged.
- rotary embedding on the first kv_channels / 2 dims of each head, rotating interleaved pairs (2i, 2i+1) by
  position * (10000 * rope_ratio) ** (-2i / (kv_channels / 2)). GLM's ``apply_rotary_pos_emb`` does exactly
  this with partial_rotary_factor 0.5 (it repeat_interleaves cos/sin and rotates even/odd pairs), so q/k rows
  are copied WITHOUT the half-split permutation that Llama-style conversions need.
- the ``rotary_pos_emb.inv_freq`` buffer carries no information (ChatGLM3 recomputes the frequencies from
  rope_ratio, and so does GLM): its length is checked and it is dropped.

Hand-written because transformers ships no converter for the ``chatglm`` layout (only GLM-4's).
Conversion and loading stream one shard at a time, so memory stays near one shard, not the whole model.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import GenerationConfig, GlmConfig, GlmForCausalLM
from transformers.models.glm.modeling_glm import GlmRotaryEmbedding

# The official config.json of THUDM/chatglm3-6b (no rope_ratio: it means 1; the 32k variant has 50).
CHATGLM3_6B_CONFIG: dict = {
    "_name_or_path": "THUDM/chatglm3-6b",
    "model_type": "chatglm",
    "architectures": ["ChatGLMModel"],
    "auto_map": {
        "AutoConfig": "configuration_chatglm.ChatGLMConfig",
        "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
        "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
        "AutoModelForSeq2SeqLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
        "AutoModelForSequenceClassification": "modeling_chatglm.ChatGLMForSequenceClassification",
    },
    "add_bias_linear": False,
    "add_qkv_bias": True,
    "apply_query_key_layer_scaling": True,
    "apply_residual_connection_post_layernorm": False,
    "attention_dropout": 0.0,
    "attention_softmax_in_fp32": True,
    "bias_dropout_fusion": True,
    "ffn_hidden_size": 13696,
    "fp32_residual_connection": False,
    "hidden_dropout": 0.0,
    "hidden_size": 4096,
    "kv_channels": 128,
    "layernorm_epsilon": 1e-05,
    "multi_query_attention": True,
    "multi_query_group_num": 2,
    "num_attention_heads": 32,
    "num_layers": 28,
    "original_rope": True,
    "padded_vocab_size": 65024,
    "post_layer_norm": True,
    "rmsnorm": True,
    "seq_length": 8192,
    "use_cache": True,
    "torch_dtype": "float16",
    "transformers_version": "4.30.2",
    "tie_word_embeddings": False,
    "eos_token_id": 2,
    "pad_token_id": 0,
}

ROTARY_INV_FREQ_KEY = "transformer.rotary_pos_emb.inv_freq"
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
TOKENIZER_FILE = "tokenizer.model"

log = logging.getLogger(__name__)


class ChatGLM3LayoutError(ValueError):
    """A checkpoint or config that is not in the ChatGLM3 layout this module converts."""


def glm_config_from_chatglm3(official_config: dict) -> GlmConfig:
    """The GlmConfig of a ChatGLM3 config.json (official keys, see CHATGLM3_6B_CONFIG)."""
    c = official_config
    # Variants of the ChatGLM family this mapping does not cover (each would change the forward).
    for key, required in (
        ("rmsnorm", True),
        ("add_bias_linear", False),
        ("post_layer_norm", True),
        ("apply_residual_connection_post_layernorm", False),
    ):
        if c.get(key, required) != required:
            raise ChatGLM3LayoutError(f"config {key}={c[key]!r} is not supported (ChatGLM3 has {required!r})")
    if c.get("quantization_bit") or c.get("pre_seq_len"):
        raise ChatGLM3LayoutError("quantized or P-tuning ChatGLM checkpoints are not supported")
    heads = c["num_attention_heads"]
    return GlmConfig(
        vocab_size=c["padded_vocab_size"],
        hidden_size=c["hidden_size"],
        intermediate_size=c["ffn_hidden_size"],
        num_hidden_layers=c["num_layers"],
        num_attention_heads=heads,
        num_key_value_heads=c["multi_query_group_num"] if c.get("multi_query_attention") else heads,
        head_dim=c.get("kv_channels") or c["hidden_size"] // heads,
        hidden_act="silu",
        attention_dropout=c.get("attention_dropout", 0.0),
        max_position_embeddings=c["seq_length"],
        rms_norm_eps=c["layernorm_epsilon"],
        attention_bias=c["add_qkv_bias"],
        tie_word_embeddings=False,  # ChatGLM3 always has its own output_layer
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0 * c.get("rope_ratio", 1),
            "partial_rotary_factor": 0.5,
        },
        pad_token_id=c.get("pad_token_id", 0),
        eos_token_id=c.get("eos_token_id", 2),
        bos_token_id=None,
    )


def official_parameter_shapes(official_config: dict) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the parameters of a ChatGLM3 checkpoint in the official layout, in file order."""
    c = official_config
    hidden, ffn = c["hidden_size"], c["ffn_hidden_size"]
    head_dim = c.get("kv_channels") or hidden // c["num_attention_heads"]
    groups = c["multi_query_group_num"] if c.get("multi_query_attention") else c["num_attention_heads"]
    qkv_rows = (c["num_attention_heads"] + 2 * groups) * head_dim
    shapes = {"transformer.embedding.word_embeddings.weight": (c["padded_vocab_size"], hidden)}
    for n in range(c["num_layers"]):
        prefix = f"transformer.encoder.layers.{n}."
        shapes[prefix + "input_layernorm.weight"] = (hidden,)
        shapes[prefix + "self_attention.query_key_value.weight"] = (qkv_rows, hidden)
        if c["add_qkv_bias"]:
            shapes[prefix + "self_attention.query_key_value.bias"] = (qkv_rows,)
        shapes[prefix + "self_attention.dense.weight"] = (hidden, c["num_attention_heads"] * head_dim)
        shapes[prefix + "post_attention_layernorm.weight"] = (hidden,)
        shapes[prefix + "mlp.dense_h_to_4h.weight"] = (2 * ffn, hidden)
        shapes[prefix + "mlp.dense_4h_to_h.weight"] = (hidden, ffn)
    shapes["transformer.encoder.final_layernorm.weight"] = (hidden,)
    shapes["transformer.output_layer.weight"] = (c["padded_vocab_size"], hidden)
    return shapes


def rotary_inv_freq_length(official_config: dict) -> int:
    """Length of the official inv_freq buffer: one frequency per rotated pair of half a head."""
    head_dim = official_config.get("kv_channels") or official_config["hidden_size"] // official_config["num_attention_heads"]
    return head_dim // 4


def count_parameters_on_meta(official_config: dict = CHATGLM3_6B_CONFIG) -> int:
    """Parameter count of the GLM model for a ChatGLM3 config, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = GlmForCausalLM(glm_config_from_chatglm3(official_config))
    return sum(p.numel() for p in model.parameters())


# One-to-one renames: official name pattern -> GLM name template (\1 is the layer number).
_LAYER = r"transformer\.encoder\.layers\.(\d+)\."
_RENAMES = [
    (re.compile(r"transformer\.embedding\.word_embeddings\.weight"), "model.embed_tokens.weight"),
    (re.compile(_LAYER + r"input_layernorm\.weight"), r"model.layers.\1.input_layernorm.weight"),
    (re.compile(_LAYER + r"self_attention\.dense\.weight"), r"model.layers.\1.self_attn.o_proj.weight"),
    (re.compile(_LAYER + r"post_attention_layernorm\.weight"), r"model.layers.\1.post_attention_layernorm.weight"),
    (re.compile(_LAYER + r"mlp\.dense_h_to_4h\.weight"), r"model.layers.\1.mlp.gate_up_proj.weight"),
    (re.compile(_LAYER + r"mlp\.dense_4h_to_h\.weight"), r"model.layers.\1.mlp.down_proj.weight"),
    (re.compile(r"transformer\.encoder\.final_layernorm\.weight"), "model.norm.weight"),
    (re.compile(r"transformer\.output_layer\.weight"), "lm_head.weight"),
]
_QKV = re.compile(_LAYER + r"self_attention\.query_key_value\.(weight|bias)")


@dataclass
class ConversionReport:
    """What a conversion read, what it wrote, and by which rule."""

    source_tensors: int = 0
    target_tensors: int = 0
    bytes: int = 0
    rules: Counter = field(default_factory=Counter)  # "official -> GLM" pattern: number of tensors
    dtypes: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        lines = [
            f"{self.source_tensors} official tensors -> {self.target_tensors} GLM tensors, "
            f"{self.bytes / 2**20:.1f} MiB, dtypes {dict(self.dtypes)}"
        ]
        lines += [f"  {count:4d} x {rule}" for rule, count in self.rules.items()]
        return "\n".join(lines)


def _generic(name: str) -> str:
    return re.sub(r"\.\d+\.", ".N.", name)


def _map_tensor(name: str, tensor: torch.Tensor, glm_config: GlmConfig, report: ConversionReport, where: str):
    """The GLM tensors for one official tensor (several for the fused QKV, none for inv_freq)."""
    if name == ROTARY_INV_FREQ_KEY:
        rotary_pairs = int(glm_config.head_dim * glm_config.rope_parameters["partial_rotary_factor"]) // 2
        if tensor.shape != (rotary_pairs,):
            raise ChatGLM3LayoutError(
                f"{where}: {name} has shape {tuple(tensor.shape)}, expected ({rotary_pairs},): "
                "rotary embedding is not on half of each head"
            )
        report.rules[f"{name} -> dropped (recomputed by GlmRotaryEmbedding)"] += 1
        return []
    match = _QKV.fullmatch(name)
    if match:
        layer, kind = match.groups()
        q_rows = glm_config.num_attention_heads * glm_config.head_dim
        kv_rows = glm_config.num_key_value_heads * glm_config.head_dim
        if tensor.shape[0] != q_rows + 2 * kv_rows:
            raise ChatGLM3LayoutError(f"{where}: {name} has {tensor.shape[0]} rows, expected {q_rows} + 2 x {kv_rows}")
        q, k, v = tensor.split([q_rows, kv_rows, kv_rows], dim=0)
        report.rules[f"{_generic(name)} -> model.layers.N.self_attn.{{q,k,v}}_proj.{kind} (rows split)"] += 1
        prefix = f"model.layers.{layer}.self_attn."
        return [(prefix + f"q_proj.{kind}", q), (prefix + f"k_proj.{kind}", k), (prefix + f"v_proj.{kind}", v)]
    for pattern, template in _RENAMES:
        if pattern.fullmatch(name):
            new_name = pattern.sub(template, name)
            report.rules[f"{_generic(name)} -> {_generic(new_name)}"] += 1
            return [(new_name, tensor)]
    raise ChatGLM3LayoutError(f"{where}: tensor {name} {tuple(tensor.shape)} is not part of the ChatGLM3 layout")


def checkpoint_shards(checkpoint_dir: Path) -> list[Path]:
    """The weight files of a checkpoint directory: from its index, else the single file."""
    for index_name in (SAFETENSORS_INDEX, BIN_INDEX):
        index = checkpoint_dir / index_name
        if index.exists():
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            missing = [n for n in names if not (checkpoint_dir / n).exists()]
            if missing:
                raise FileNotFoundError(f"{index} names shards that do not exist: {missing}")
            return [checkpoint_dir / n for n in names]
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (checkpoint_dir / single).exists():
            return [checkpoint_dir / single]
    raise FileNotFoundError(f"{checkpoint_dir}: no {SAFETENSORS_INDEX}, {BIN_INDEX}, model.safetensors or pytorch_model.bin")


def _shard_tensors(shard: Path) -> Iterator[tuple[str, torch.Tensor]]:
    if shard.suffix == ".safetensors":
        with safe_open(shard, framework="pt") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)
        return
    try:  # memory-mapped: pages are read as tensors are used, not the whole shard up front
        state = torch.load(shard, map_location="cpu", mmap=True, weights_only=True)
    except RuntimeError:  # legacy (non-zip) torch.save files cannot be memory-mapped
        state = torch.load(shard, map_location="cpu", weights_only=True)
    yield from state.items()


def iter_glm_shards(checkpoint_dir, glm_config: GlmConfig, report: ConversionReport) -> Iterator[tuple[Path, dict]]:
    """Yield (official shard, its tensors under GLM names), one shard at a time, checking every shape."""
    checkpoint_dir = Path(checkpoint_dir)
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in GlmForCausalLM(glm_config).state_dict().items()}
    shards = checkpoint_shards(checkpoint_dir)
    seen: set[str] = set()
    for i, shard in enumerate(shards, 1):
        start, shard_bytes, converted = time.time(), 0, {}
        for name, tensor in _shard_tensors(shard):
            report.source_tensors += 1
            for new_name, new_tensor in _map_tensor(name, tensor, glm_config, report, str(shard)):
                if expected.get(new_name) != tuple(new_tensor.shape):
                    raise ChatGLM3LayoutError(
                        f"{shard}: {name} -> {new_name} has shape {tuple(new_tensor.shape)}, "
                        f"the config gives {expected.get(new_name)}"
                    )
                if new_name in seen:
                    raise ChatGLM3LayoutError(f"{shard}: {name} appears twice in the checkpoint")
                seen.add(new_name)
                converted[new_name] = new_tensor
                report.target_tensors += 1
                report.dtypes[str(new_tensor.dtype).removeprefix("torch.")] += 1
                shard_bytes += new_tensor.numel() * new_tensor.element_size()
        report.bytes += shard_bytes
        seconds = time.time() - start
        log.info(
            "shard %d/%d %s: %d tensors, %.1f MiB, %.1f s (%.0f MiB/s)",
            i, len(shards), shard.name, len(converted), shard_bytes / 2**20, seconds,
            shard_bytes / 2**20 / max(seconds, 1e-6),
        )
        yield shard, converted
        converted = {}  # drop this shard before reading the next one
    missing = sorted(set(expected) - seen)
    if missing:
        raise ChatGLM3LayoutError(f"{checkpoint_dir}: {len(missing)} tensors missing, e.g. {missing[:4]}")


def read_official_config(checkpoint_dir) -> dict:
    config = json.loads((Path(checkpoint_dir) / "config.json").read_text())
    if config.get("model_type") != "chatglm":
        raise ChatGLM3LayoutError(f"{checkpoint_dir}/config.json: model_type {config.get('model_type')!r} is not 'chatglm'")
    return config


def convert_chatglm3(official_dir, output_dir) -> ConversionReport:
    """Write a transformers GlmForCausalLM directory from an official ChatGLM3 checkpoint, shard by shard.

    Tensors keep their dtype; each official shard becomes one safetensors shard. tokenizer.model is copied.
    """
    official_dir, output_dir = Path(official_dir), Path(output_dir)
    glm_config = glm_config_from_chatglm3(read_official_config(official_dir))
    output_dir.mkdir(parents=True, exist_ok=True)
    report = ConversionReport()
    num_shards = len(checkpoint_shards(official_dir))
    weight_map = {}
    for i, (_, tensors) in enumerate(iter_glm_shards(official_dir, glm_config, report), 1):
        file_name = f"model-{i:05d}-of-{num_shards:05d}.safetensors"
        save_file(tensors, output_dir / file_name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, file_name))
        del tensors
    index = {"metadata": {"total_size": report.bytes}, "weight_map": dict(sorted(weight_map.items()))}
    (output_dir / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    if len(report.dtypes) == 1:
        glm_config.dtype = next(iter(report.dtypes))
    glm_config.save_pretrained(output_dir)
    GenerationConfig.from_model_config(glm_config).save_pretrained(output_dir)
    if (official_dir / TOKENIZER_FILE).exists():
        shutil.copyfile(official_dir / TOKENIZER_FILE, output_dir / TOKENIZER_FILE)
    log.info("converted %s -> %s\n%s", official_dir, output_dir, report.summary())
    return report


def load_chatglm3(path, dtype: torch.dtype = torch.float32) -> GlmForCausalLM:
    """GlmForCausalLM from a local ChatGLM3 directory, official layout (converted while loading) or transformers'."""
    path = Path(path)
    config = json.loads((path / "config.json").read_text())
    if config.get("model_type") == "glm":
        return GlmForCausalLM.from_pretrained(path, dtype=dtype)
    glm_config = glm_config_from_chatglm3(read_official_config(path))
    glm_config.dtype = dtype
    with torch.device("meta"):  # no memory for random init: every weight is assigned from the checkpoint
        model = GlmForCausalLM(glm_config)
    report = ConversionReport()
    for _, tensors in iter_glm_shards(path, glm_config, report):
        model.load_state_dict({k: v.to(dtype=dtype, copy=True) for k, v in tensors.items()}, strict=False, assign=True)
        del tensors
    # Non-persistent buffers (rotary frequencies) are not in checkpoints: build them for real.
    model.model.rotary_emb = GlmRotaryEmbedding(glm_config)
    left_on_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left_on_meta:
        raise ChatGLM3LayoutError(f"{path}: not loaded: {left_on_meta[:4]}")
    return model.eval()


def save_into_chatglm3(model: GlmForCausalLM, path) -> None:
    """Write a model's weights back into the official-layout checkpoint at ``path`` that it was loaded from.

    The conversion's own mapping is run again on each official tensor and its GLM parts (renamed, or q/k/v
    rows split) are joined back in that order, so the two directions cannot drift apart. Shards, names,
    dtypes and the index stay as they were; inv_freq, which GLM recomputes, is kept.
    """
    path = Path(path)
    glm_config = glm_config_from_chatglm3(read_official_config(path))
    state = model.state_dict()
    report = ConversionReport()
    for shard in checkpoint_shards(path):
        tensors = {}
        for name, tensor in _shard_tensors(shard):
            parts = _map_tensor(name, tensor, glm_config, report, str(shard))
            tensors[name] = torch.cat([state[glm_name] for glm_name, _ in parts]).to(tensor.dtype) if parts else tensor
        partial = shard.with_name(shard.name + ".partial")  # a crash mid-write leaves the old shard whole
        if shard.suffix == ".safetensors":
            save_file(tensors, partial, metadata={"format": "pt"})
        else:
            torch.save(tensors, partial)
        partial.replace(shard)
        del tensors


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser("convert", help="official ChatGLM3 directory -> transformers GLM directory")
    convert.add_argument("official_dir", type=Path)
    convert.add_argument("output_dir", type=Path)
    count = commands.add_parser("count-params", help="parameter count on the meta device")
    count.add_argument("--config", type=Path, help="official config.json (default: ChatGLM3-6B's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    if args.command == "convert":
        convert_chatglm3(args.official_dir, args.output_dir)
    else:
        config = json.loads(args.config.read_text()) if args.config else CHATGLM3_6B_CONFIG
        print(f"{count_parameters_on_meta(config):,} parameters")


if __name__ == "__main__":
    main()
