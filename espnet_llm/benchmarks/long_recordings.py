"""The transcriber on long recordings: a speaker's consecutive utterances joined with pauses into one recording,
transcribed as a user would (split at pauses by the VAD; long-form and CoT models with the previous segments as
history), scored with sclite against the utterances' joined transcripts.

    python -m espnet_llm.benchmarks.long_recordings --data_dir data/test --output_dir exp/long_recordings \\
        exp/decoder_only/short exp/decoder_only/long exp/decoder_only/cot

Prints a markdown table: per model, the recordings, the segments the VAD found against the utterances joined,
the CER and the real-time factor (from the recipe directory: the run directories' configs name the base models
by paths relative to it).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import soundfile

from espnet_llm.bin.transcribe import Segmenter, transcribe
from espnet_llm.data_prep.kaldi_dir import read_table
from espnet_llm.speech.audio_input import load_model_audio
from espnet_llm.speech.framing import SAMPLE_RATE

PAUSE_SECONDS = 0.5


def make_recordings(data_dir: Path, out_dir: Path, per_recording: int) -> dict[str, str]:
    """Join each speaker's utterances, in id order (AISHELL's reading order), ``per_recording`` at a time with
    PAUSE_SECONDS of silence between; write the wavs and their Kaldi text. -> {recording id: transcript}"""
    wavs, texts = read_table(data_dir / "wav.scp").entries, read_table(data_dir / "text").entries
    speakers = read_table(data_dir / "utt2spk").entries
    by_speaker: dict[str, list[str]] = {}
    for uid in sorted(wavs):
        by_speaker.setdefault(speakers[uid], []).append(uid)
    out_dir.mkdir(parents=True, exist_ok=True)
    pause = np.zeros(int(PAUSE_SECONDS * SAMPLE_RATE), dtype=np.float32)
    references = {}
    for speaker, uids in sorted(by_speaker.items()):
        for n in range(0, len(uids), per_recording):
            group = uids[n:n + per_recording]
            pieces = [pause]
            for uid in group:
                pieces += [load_model_audio(wavs[uid]), pause]
            rid = f"{speaker}_{n // per_recording:03d}"
            soundfile.write(out_dir / f"{rid}.wav", np.concatenate(pieces), SAMPLE_RATE)
            references[rid] = "".join(texts[uid] for uid in group)
    (out_dir / "text").write_text("".join(f"{r} {t}\n" for r, t in references.items()), encoding="utf-8")
    return references


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="run directories or packs")
    parser.add_argument("--data_dir", type=Path, required=True)
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--utterances_per_recording", type=int, default=10)
    parser.add_argument("--beam_size", type=int, default=4)
    args = parser.parse_args(argv)
    with contextlib.redirect_stdout(sys.stderr):  # ESPnet's imports print to stdout, which carries the table
        from espnet_llm.bin.speech_llm_inference import Speech2Text
        from espnet_llm.scoring.cer import score_cer

        recordings = args.output_dir / "recordings"
        references = make_recordings(args.data_dir, recordings, args.utterances_per_recording)
        segmenter = Segmenter()
        rows = []
        for model in args.models:
            speech2text = Speech2Text.from_pretrained(model, beam_size=args.beam_size)
            name = model.rstrip("/").replace("exp/", "").replace("/", " ")
            out = args.output_dir / name.replace(" ", "_")
            out.mkdir(parents=True, exist_ok=True)
            hyps, segments, audio_seconds, start = {}, 0, 0.0, time.perf_counter()
            with open(out / "transcripts.jsonl", "w", encoding="utf-8") as jsonl:
                for rid in references:
                    record = transcribe(speech2text, segmenter, load_model_audio(recordings / f"{rid}.wav"))
                    jsonl.write(json.dumps({"input": rid, **record}, ensure_ascii=False) + "\n")
                    hyps[rid], segments, audio_seconds = record["text"], segments + len(record["segments"]), \
                        audio_seconds + record["seconds"]
            (out / "text").write_text("".join(f"{r} {t}\n" for r, t in hyps.items()), encoding="utf-8")
            result = score_cer(recordings / "text", out / "text", out / "score")
            rows.append((name, len(references), segments, result.counts.percentages()["Err"],
                         (time.perf_counter() - start) / audio_seconds))
            print(f"{name}: CER {rows[-1][3]:.1f} %", file=sys.stderr)
    utterances = len(read_table(args.data_dir / "wav.scp").entries)
    print(f"| model | recordings | segments found (utterances joined: {utterances}) | CER % | RTF |")
    print("|---|---|---|---|---|")
    for name, count, found, cer, rtf in rows:
        print(f"| {name} | {count} | {found} | {cer:.1f} | {rtf:.3f} |")


if __name__ == "__main__":
    main()
