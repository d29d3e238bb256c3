"""Whisper encoder forward time, padded to 30 s versus variable length, for ~5-s utterances.

    python -m espnet_llm.benchmarks.whisper_modes [--batch_size 8] [--seconds 5] [--repeats 5]

Always the tiny random model on the CPU; also Whisper-large-v2's full-size encoder (random
weights, float16) when a GPU is present. Prints the median seconds per batch and the ratio.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from espnet_llm.speech.log_mel import SAMPLE_RATE
from espnet_llm.mini.tiny_whisper import write_tiny_whisper
from espnet_llm.speech.whisper_encoder import WHISPER_LARGE_V2_CONFIG, WhisperSpeechEncoder


def seconds_per_batch(encoder: WhisperSpeechEncoder, wav: torch.Tensor, lengths: torch.Tensor, repeats: int) -> float:
    def synchronize():
        if wav.is_cuda:
            torch.cuda.synchronize()

    encoder(wav, lengths)  # warm-up
    times = []
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        encoder(wav, lengths)
        synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)  # the median: robust to a busy machine


def compare_modes(name: str, encoder: WhisperEncoder | str, device: str, args: argparse.Namespace) -> None:
    generator = torch.Generator().manual_seed(0)
    # AISHELL-like lengths: around the given duration, +-20 %
    seconds = args.seconds * (0.8 + 0.4 * torch.rand(args.batch_size, generator=generator))
    lengths = (seconds * SAMPLE_RATE).long()
    wav = 0.1 * torch.randn(args.batch_size, int(lengths.max()), generator=generator)
    wav, lengths = wav.to(device), lengths.to(device)
    times = {}
    for pad_to_30s in (True, False):
        speech_encoder = WhisperSpeechEncoder(encoder, pad_to_30s=pad_to_30s).to(device)
        times[pad_to_30s] = seconds_per_batch(speech_encoder, wav, lengths, args.repeats)
    print(
        f"{name} on {device}, batch {args.batch_size} x ~{args.seconds:g} s "
        f"(mean {float(seconds.mean()):.2f} s): padded-30s {times[True]:.4f} s/batch, "
        f"variable-length {times[False]:.4f} s/batch, ratio {times[True] / times[False]:.1f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0, help="mean utterance duration")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_grad_enabled(False)

    with tempfile.TemporaryDirectory() as tmp:
        compare_modes("tiny Whisper (d_model 64, 2 layers)", write_tiny_whisper(tmp), "cpu", args)
    if torch.cuda.is_available():
        with torch.device("cuda"):
            large_v2 = WhisperEncoder(WhisperConfig(**WHISPER_LARGE_V2_CONFIG)).half()
        compare_modes("Whisper-large-v2 encoder (random weights, fp16)", large_v2, "cuda", args)
    else:
        print("no GPU: full-size comparison skipped")


if __name__ == "__main__":
    main()
