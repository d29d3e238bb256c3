"""Write the tiny random models of the embedded default: DIR/whisper/ and DIR/chatglm3/.

    python -m espnet_llm.mini.make_tiny_models --output_dir DIR [--config tiny_models.yaml] [--seed 0]

DIR/whisper is a transformers WhisperModel directory; DIR/chatglm3 a ChatGLM3 checkpoint in the official
layout (config.json, sharded safetensors + index, tokenizer.model of the shipped dev text). The config's
``chatglm3:`` mapping sets the ChatGLM3 sizes (official config keys); without it, the tests' small sizes.
Its ``pretrain:`` mapping, where there is one, pretrains that ChatGLM3 on a text (espnet_llm.mini.pretrain_tiny_chatglm3).
A copy of the config goes to DIR/tiny_models.yaml, so that a recipe sees when its models are out of date.
The same seed and config write the same weights.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import yaml

from espnet_llm.mini import pretrain_tiny_chatglm3
from espnet_llm.mini.tiny_chatglm3 import write_tiny_chatglm3
from espnet_llm.mini.tiny_whisper import write_tiny_whisper


def make_tiny_models(output_dir, seed: int = 0, config: Path | None = None) -> Path:
    output_dir = Path(output_dir)
    sizes = {}
    if config is not None:
        sizes = (yaml.safe_load(Path(config).read_text(encoding="utf-8")) or {}).get("chatglm3", {})
    write_tiny_whisper(output_dir / "whisper", seed=seed)
    write_tiny_chatglm3(output_dir / "chatglm3", seed=seed, sizes=sizes)
    (output_dir / "chatglm3" / pretrain_tiny_chatglm3.STAMP).unlink(missing_ok=True)  # its weights are random again
    pretrain = pretrain_tiny_chatglm3.read_config(config) if config is not None else None
    if pretrain is not None:
        pretrain_tiny_chatglm3.pretrain(output_dir / "chatglm3", pretrain)
    if config is not None:
        shutil.copyfile(config, output_dir / "tiny_models.yaml")
    return output_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--config", type=Path, help="YAML with a chatglm3: mapping of sizes (and a pretrain: one)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    make_tiny_models(args.output_dir, args.seed, args.config)
    for path in sorted(args.output_dir.rglob("*")):
        if path.is_file():
            print(f"{path} {path.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
