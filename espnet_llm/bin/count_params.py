"""Trainable parameters of speech LLM configs at full size, built on the meta device (no weights needed).

    python -m espnet_llm.bin.count_params egs2/aishell_ner/llm1/conf/train_{decoder_only,encoder_decoder}_short.yaml

A model path in the config that does not exist here is replaced by the published architecture
(Whisper-large-v2, ChatGLM3-6B): only config files are written, to a temporary directory.
"""
from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import torch

from espnet_llm.models.param_count import trainable_counts
from espnet_llm.tasks.speech_llm import SpeechLLMTask

PAPER_TRAINABLE = {"decoder_only": 43e6, "encoder_decoder": 437e6}  # Li et al. 2024, as stated in the paper


def published_architectures(workdir: Path) -> tuple[Path, Path]:
    """Config-only directories of Whisper-large-v2 and ChatGLM3-6B (a tokenizer trained on the shipped text)."""
    from transformers import WhisperConfig

    from espnet_llm.llm.chatglm3 import CHATGLM3_6B_CONFIG
    from espnet_llm.mini.tiny_chatglm3 import train_tiny_sentencepiece
    from espnet_llm.speech.whisper_encoder import WHISPER_LARGE_V2_CONFIG

    whisper, chatglm3 = workdir / "whisper-large-v2", workdir / "chatglm3-6b"
    WhisperConfig(**WHISPER_LARGE_V2_CONFIG).save_pretrained(whisper)
    chatglm3.mkdir(parents=True)
    (chatglm3 / "config.json").write_text(json.dumps(CHATGLM3_6B_CONFIG))
    train_tiny_sentencepiece(chatglm3 / "tokenizer.model")  # only the task tokens' row count depends on it
    return whisper, chatglm3


def full_size_args(config: Path, workdir: Path):
    """The parsed training config, its model paths that do not exist here replaced by the published architectures."""
    args = SpeechLLMTask.get_parser().parse_args(["--config", str(config), "--output_dir", str(workdir / "out")])
    whisper, chatglm3 = None, None
    for conf, which in ((args.speech_encoder_conf, 0), (args.llm_conf, 1)):
        if not Path(conf["model_path"]).exists():
            if whisper is None:
                whisper, chatglm3 = published_architectures(workdir / "published")
            conf["model_path"] = str((whisper, chatglm3)[which])
    return args


def build_on_meta(config: Path, workdir: Path):
    """(args, model): the model of a training config at its real size and dtypes, as training builds it, on the
    meta device."""
    args = full_size_args(config, workdir)
    with torch.device("meta"):
        return args, SpeechLLMTask.build_model(args, load_weights=False)


def count(config: Path, workdir: Path) -> tuple[str, dict, int]:
    args, model = build_on_meta(config, workdir)
    return args.model, dict(trainable_counts(model)), sum(p.numel() for p in model.parameters())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("configs", nargs="+", type=Path, help="conf/train_*.yaml")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        for i, config in enumerate(args.configs):
            arch, counts, total = count(config, Path(tmp) / str(i))
            trainable = sum(counts.values())
            parts = ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in sorted(counts.items()))
            paper = PAPER_TRAINABLE.get(arch)
            print(
                f"{config.name}: {arch}: trainable {trainable / 1e6:.1f}M of {total / 1e9:.2f}B ({parts})"
                + (f"; paper: {paper / 1e6:.0f}M" if paper else "")
            )


if __name__ == "__main__":
    main()
