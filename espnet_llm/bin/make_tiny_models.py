"""Write the tiny random models of the embedded default: DIR/whisper/ and DIR/chatglm3/.

    python -m espnet_llm.bin.make_tiny_models --output_dir DIR [--seed 0]

DIR/whisper is a transformers WhisperModel directory; DIR/chatglm3 a ChatGLM3 checkpoint in the official
layout (config.json, sharded safetensors + index, tokenizer.model trained on the shipped dev text).
The same seed writes the same weights.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from espnet_llm.llm.tiny import write_tiny_chatglm3
from espnet_llm.speech.tiny_whisper import write_tiny_whisper


def make_tiny_models(output_dir, seed: int = 0) -> Path:
    output_dir = Path(output_dir)
    write_tiny_whisper(output_dir / "whisper", seed=seed)
    write_tiny_chatglm3(output_dir / "chatglm3", seed=seed)
    return output_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    make_tiny_models(args.output_dir, args.seed)
    for path in sorted(args.output_dir.rglob("*")):
        if path.is_file():
            print(f"{path} {path.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
