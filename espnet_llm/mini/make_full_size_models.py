"""Random ChatGLM3-6B and Whisper-large-v2 in their published layouts, at full width, to run the full-size path
without the real weights (local/full_size_check.sh on a CPU, local/full_size_benchmark.sh on a GPU).

    python -m espnet_llm.mini.make_full_size_models --config conf/full_size_check.yaml --output_dir downloads

Writes DIR/chatglm3-6b in THUDM/chatglm3-6b's layout (config.json, 7 float16 ``pytorch_model-0000N-of-00007.bin``
shards and their index, tokenizer.model) and DIR/whisper-large-v2/large-v2.pt, OpenAI's checkpoint (``dims`` and
``model_state_dict``, encoder and decoder). Each has its published architecture with the keys of the config's
``chatglm3:`` and ``whisper:`` mappings replaced (official ChatGLM3 config keys; transformers WhisperConfig keys):
``num_layers: 2`` and ``encoder_layers: 2`` reduce the depth, an empty mapping keeps the full one. ChatGLM3's own
tokenizer.model cannot be shipped: one of the shipped AISHELL-NER dev text stands in (its special and task tokens
follow its vocabulary, inside ChatGLM3-6B's 65024 embedding rows). A copy of the config beside the models says
what they were made from; the same config is not written twice.
"""
from __future__ import annotations

import argparse
import filecmp
import shutil
from pathlib import Path

import torch
import yaml
from transformers import WhisperConfig, WhisperModel

from espnet_llm.llm.chatglm3 import CHATGLM3_6B_CONFIG
from espnet_llm.mini.tiny_chatglm3 import train_tiny_sentencepiece, write_random_chatglm3_checkpoint
from espnet_llm.mini.tiny_whisper import write_openai_checkpoint
from espnet_llm.speech.whisper_encoder import WHISPER_LARGE_V2_CONFIG

STAMP = "made_from.yaml"
PUBLISHED_SHARDS = 7  # THUDM/chatglm3-6b: pytorch_model-00001-of-00007.bin ...


def architectures(config: dict) -> tuple[dict, dict]:
    """(ChatGLM3 official config, WhisperConfig keys): the published ones with the config's keys replaced."""
    chatglm3, whisper = config.get("chatglm3") or {}, config.get("whisper") or {}
    for name, keys, published in (("chatglm3", chatglm3, CHATGLM3_6B_CONFIG), ("whisper", whisper,
                                                                             WHISPER_LARGE_V2_CONFIG)):
        unknown = set(keys) - set(published)
        if unknown:
            raise ValueError(f"{name}: {sorted(unknown)} are not keys of the published config ({sorted(published)})")
    return {**CHATGLM3_6B_CONFIG, **chatglm3}, {**WHISPER_LARGE_V2_CONFIG, **whisper}


def write_chatglm3(official: dict, output_dir: Path, seed: int) -> None:
    num_shards = min(PUBLISHED_SHARDS, 2 + official["num_layers"])  # a shard needs a tensor at least
    write_random_chatglm3_checkpoint(official, output_dir, num_shards=num_shards, file_format="bin",
                                     dtype=torch.float16, seed=seed)
    train_tiny_sentencepiece(output_dir / "tokenizer.model")


def write_whisper(config: dict, output_dir: Path, seed: int) -> None:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = WhisperModel(WhisperConfig(**config))
    output_dir.mkdir(parents=True, exist_ok=True)
    write_openai_checkpoint(model, output_dir / "large-v2.pt")


def make_full_size_models(config_file: Path, output_dir: Path, seed: int = 0) -> list[Path]:
    """Write the models of config_file under output_dir, unless those there were made from the same config."""
    chatglm3, whisper = architectures(yaml.safe_load(config_file.read_text(encoding="utf-8")) or {})
    made = []
    for name, write, architecture in (("chatglm3-6b", write_chatglm3, chatglm3),
                                      ("whisper-large-v2", write_whisper, whisper)):
        target = output_dir / name
        if (target / STAMP).is_file() and filecmp.cmp(config_file, target / STAMP, shallow=False):
            print(f"{target}: made from {config_file} already")
            continue
        shutil.rmtree(target, ignore_errors=True)
        write(architecture, target, seed)
        shutil.copyfile(config_file, target / STAMP)
        size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
        print(f"{target}: random {name} ({size / 2**30:.2f} GiB)", flush=True)
        made.append(target)
    return made


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True, help="YAML with chatglm3: and whisper: mappings")
    parser.add_argument("--output_dir", type=Path, required=True, help="chatglm3-6b/ and whisper-large-v2/ go here")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    make_full_size_models(args.config, args.output_dir, args.seed)


if __name__ == "__main__":
    main()
