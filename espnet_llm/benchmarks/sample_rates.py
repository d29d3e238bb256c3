"""The test set as other recordings would bring it: each utterance resampled to 8, 44.1 and 48 kHz (48 kHz also as
stereo), given to ``Speech2Text`` at that rate, which makes it Whisper's 16-kHz mono; CER by sclite against the
16-kHz decoding. The long-form and CoT models get each utterance's previous ones as history, as in stage 12.

    python -m espnet_llm.benchmarks.sample_rates --data_dir data/test --output_dir exp/sample_rates \\
        exp/decoder_only/short exp/decoder_only/cot

Prints a markdown table: per model and input, the CER and the share of utterances decoded to the same text as
from the 16-kHz file (from the recipe directory: the run directories' configs name the base models relative to it).
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import numpy as np
import torch
import torchaudio

from espnet_llm.data_prep.kaldi_dir import read_table
from espnet_llm.speech.audio_input import load_model_audio
from espnet_llm.speech.framing import SAMPLE_RATE

INPUTS = {"16 kHz": (16000, 1), "8 kHz": (8000, 1), "44.1 kHz": (44100, 1), "48 kHz stereo": (48000, 2)}


def as_recorded(audio: np.ndarray, rate: int, channels: int) -> np.ndarray:
    """16-kHz mono audio as a recording at ``rate`` with ``channels`` (the same signal in each)."""
    resampled = torchaudio.functional.resample(torch.from_numpy(audio), SAMPLE_RATE, rate).numpy()
    return np.stack([resampled] * channels, axis=1) if channels > 1 else resampled


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="run directories or packs")
    parser.add_argument("--data_dir", type=Path, required=True)
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--beam_size", type=int, default=4)
    args = parser.parse_args(argv)
    rows = []
    with contextlib.redirect_stdout(sys.stderr):  # ESPnet's imports print to stdout, which carries the table
        from espnet_llm.bin.speech_llm_inference import Speech2Text
        from espnet_llm.scoring.cer import score_cer

        wavs = read_table(args.data_dir / "wav.scp").entries
        history = read_table(args.data_dir / "utt2history", allow_empty_value=True).entries
        audio = {uid: load_model_audio(path) for uid, path in wavs.items()}
        for model in args.models:
            speech2text = Speech2Text.from_pretrained(model, beam_size=args.beam_size)
            k = speech2text.preprocessor.num_history
            name = model.rstrip("/").replace("exp/", "")
            texts = {}
            for label, (rate, channels) in INPUTS.items():
                out = args.output_dir / name.replace("/", "_") / label.replace(" ", "_")
                out.mkdir(parents=True, exist_ok=True)
                texts[label] = {}
                for uid in sorted(audio):
                    previous = history.get(uid, "").split()[-k:] if k else []
                    [best] = speech2text(as_recorded(audio[uid], rate, channels), fs=rate,
                                         history=[as_recorded(audio[h], rate, channels) for h in previous])
                    texts[label][uid] = best.text
                (out / "text").write_text("".join(f"{u} {t}\n" for u, t in texts[label].items()), encoding="utf-8")
                cer = score_cer(args.data_dir / "text", out / "text", out / "score").counts.percentages()["Err"]
                same = np.mean([texts[label][u] == texts["16 kHz"][u] for u in audio])
                rows.append((name, label, cer, 100 * same))
                print(f"{name} {label}: CER {cer:.1f} %", file=sys.stderr)
    print("| model | input | CER % | same text as from 16 kHz, % |")
    print("|---|---|---|---|")
    for name, label, cer, same in rows:
        print(f"| {name} | {label} | {cer:.1f} | {same:.0f} |")


if __name__ == "__main__":
    main()
