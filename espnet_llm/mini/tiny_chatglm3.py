"""Random ChatGLM3 checkpoints in the official layout, and the tiny ChatGLM3 of the embedded default.

The tiny model has the real file formats (config.json with the official keys, safetensors shards with an
index, a SentencePiece tokenizer.model) at a size a CPU trains in seconds. The tokenizer is a character
vocabulary of the shipped AISHELL-NER dev transcripts, entity marks kept, with byte fallback so that any
text round-trips: with a few hundred training sentences, a subword vocabulary leaves most pieces unseen.
The sizes default to TINY_CHATGLM3_SIZES (the tests); the mini recipe names its own in conf/tiny/tiny_models.yaml.
"""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

import sentencepiece as spm
import torch
from safetensors.torch import save_file

from espnet_llm.llm.chatglm3 import (
    BIN_INDEX,
    CHATGLM3_6B_CONFIG,
    ROTARY_INV_FREQ_KEY,
    SAFETENSORS_INDEX,
    official_parameter_shapes,
    rotary_inv_freq_length,
)
from espnet_llm.llm.tokenizer import CHATGLM3_SPECIAL_TOKENS, TASK_TOKENS
from espnet_llm.resources import AISHELL_NER_DEV_TRANSCRIPT

TINY_CHATGLM3_SIZES = {
    "num_layers": 2,
    "hidden_size": 64,
    "num_attention_heads": 4,
    "multi_query_group_num": 2,
    "kv_channels": 16,
    "ffn_hidden_size": 128,
    "seq_length": 2048,
}


def random_official_tensor(name: str, shape, generator: torch.Generator, std: float = 0.02) -> torch.Tensor:
    """Random values for one official tensor: norm weights near 1 (not exactly, so a swapped norm shows)."""
    values = torch.randn(shape, generator=generator)
    if name.endswith("layernorm.weight"):
        return 1.0 + 0.1 * values
    return std * values


def write_random_chatglm3_checkpoint(
    official_config: dict,
    output_dir,
    *,
    num_shards: int = 2,
    file_format: str = "safetensors",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    std: float = 0.02,
) -> Path:
    """Write config.json, weight shards and their index in the official ChatGLM3 layout, one shard in memory at a time.

    The values depend only on the seed and std, not on the number of shards or the format.
    """
    if file_format not in ("safetensors", "bin"):
        raise ValueError(f"file_format must be 'safetensors' or 'bin', not {file_format!r}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    shapes = official_parameter_shapes(official_config)
    shapes[ROTARY_INV_FREQ_KEY] = (rotary_inv_freq_length(official_config),)
    shards = _split_in_shards(shapes, num_shards)
    generator = torch.Generator().manual_seed(seed)
    weight_map, total_bytes = {}, 0
    for i, names in enumerate(shards, 1):
        tensors = {}
        for name in names:
            if name == ROTARY_INV_FREQ_KEY:  # as ChatGLM3 stores it: base 10000 over half a head's dims
                rotary_dim = 2 * shapes[name][0]
                tensors[name] = (1.0 / 10000 ** (torch.arange(0, rotary_dim, 2).float() / rotary_dim)).to(dtype)
            else:
                tensors[name] = random_official_tensor(name, shapes[name], generator, std).to(dtype)
            total_bytes += tensors[name].numel() * tensors[name].element_size()
        if file_format == "safetensors":
            file_name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_file(tensors, output_dir / file_name, metadata={"format": "pt"})
        else:
            file_name = f"pytorch_model-{i:05d}-of-{len(shards):05d}.bin"
            torch.save(tensors, output_dir / file_name)
        weight_map.update(dict.fromkeys(names, file_name))
        del tensors
    index = {"metadata": {"total_size": total_bytes}, "weight_map": weight_map}
    index_name = SAFETENSORS_INDEX if file_format == "safetensors" else BIN_INDEX
    (output_dir / index_name).write_text(json.dumps(index, indent=2) + "\n")
    config = {**official_config, "torch_dtype": str(dtype).removeprefix("torch.")}
    (output_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return output_dir


def _split_in_shards(shapes: dict, num_shards: int) -> list[list[str]]:
    """Consecutive names in num_shards groups of about equal size (as sharded checkpoints are)."""
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    target = sum(sizes.values()) / num_shards
    shards, filled = [[]], 0
    for name, size in sizes.items():
        if shards[-1] and filled + size / 2 > target * len(shards) and len(shards) < num_shards:
            shards.append([])
        shards[-1].append(name)
        filled += size
    if len(shards) != num_shards:
        raise ValueError(f"cannot split {len(shapes)} tensors in {num_shards} shards")
    return shards


def train_tiny_sentencepiece(model_file, transcript=AISHELL_NER_DEV_TRANSCRIPT):
    """A character SentencePiece model of the transcript text (marks kept), with ChatGLM3's <unk> <s> </s> ids 0 1 2."""
    with open(transcript, encoding="utf-8") as f:
        texts = [line.rstrip("\n").split(maxsplit=1)[1] for line in f if len(line.split(maxsplit=1)) == 2]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        model_type="char",
        vocab_size=len(set("".join(texts))) + 3 + 256,  # every character, <unk> <s> </s>, and the bytes
        character_coverage=1.0,
        byte_fallback=True,  # bytes <0x00>..<0xFF> as ids 3..258, "\n" is <0x0A> = 13 as in ChatGLM3
        normalization_rule_name="identity",  # text is already normalised; NFKC would change it
        remove_extra_whitespaces=False,
        split_digits=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=2,
        minloglevel=2,
    )
    Path(model_file).write_bytes(model.getvalue())


def write_tiny_chatglm3(output_dir, seed: int = 0, sizes: dict | None = None) -> Path:
    """A tiny random ChatGLM3 in the official layout, with a tokenizer.model of the shipped dev text.

    sizes: official config keys over TINY_CHATGLM3_SIZES (num_layers, hidden_size, ...).
    """
    unknown = set(sizes or {}) - set(CHATGLM3_6B_CONFIG)
    if unknown:
        raise ValueError(f"not ChatGLM3 config keys: {sorted(unknown)}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    train_tiny_sentencepiece(output_dir / "tokenizer.model")
    sp_vocab = spm.SentencePieceProcessor(model_file=str(output_dir / "tokenizer.model")).vocab_size()
    num_tokens = sp_vocab + len(CHATGLM3_SPECIAL_TOKENS) + len(TASK_TOKENS)
    config = {
        **CHATGLM3_6B_CONFIG,
        **TINY_CHATGLM3_SIZES,
        **(sizes or {}),
        "_name_or_path": "tiny-chatglm3",
        "padded_vocab_size": 64 * math.ceil(num_tokens / 64),  # padded to a multiple of 64 as ChatGLM3's 65024
    }
    return write_random_chatglm3_checkpoint(config, output_dir, num_shards=2, seed=seed)
