"""Transcribe recordings: ``python -m espnet_llm.bin.transcribe --model cot.zip a.wav b.flac ...`` (or ``--wav_scp``).

Any audio libsndfile reads, at any rate and channel count (made Whisper's 16-kHz mono: speech.audio_input), of any
length: each recording is split at its pauses by Silero VAD (the ``silero-vad`` package, its bundled model) into
segments of at most 30 s, as the models were trained on utterances; a long-form or CoT model decodes each
segment with the previous K segments (its config's ``num_history``) as its history, the way the paper uses
the previous utterances of a speaker, and a short-form model each segment alone.

Writes one JSON line per recording (to ``--output``, else stdout): its text and entity-marked text, its
entities with offsets into the text, and per segment its times, answers (``--nbest``, each with its
log-probability summed and per token), parser problems and timings. A recording that cannot be read is a line
with its ``error``, counted; the run exits non-zero when none could be transcribed. Progress goes to stderr.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from dataclasses import asdict

import numpy as np
import torch

from espnet_llm.speech.audio_input import AudioError, load_model_audio
from espnet_llm.speech.framing import MAX_SECONDS, SAMPLE_RATE

MIN_PAUSE_MS = 300  # a pause at least this long ends a segment (AISHELL's utterances are read sentences)
# silence kept around each segment, Silero's default; on the mini corpus' dev recordings (decoder-only short form)
# 0 / 30 / 80 / 150 ms gave 61.5 / 59.7 / 61.0 / 64.6 % CER (its utterances decoded alone: 57.4 %)
SPEECH_PAD_MS = 30


class Segmenter:
    """Silero VAD's speech timestamps: segments of at most 30 s, split at pauses (at the longest one inside a
    segment that would be longer)."""

    def __init__(self, min_pause_ms: int = MIN_PAUSE_MS, speech_pad_ms: int = SPEECH_PAD_MS):
        from silero_vad import load_silero_vad

        self.model = load_silero_vad(onnx=False)
        self.min_pause_ms, self.speech_pad_ms = min_pause_ms, speech_pad_ms

    def __call__(self, audio: np.ndarray) -> list[tuple[int, int]]:
        """(start, end) samples of each speech segment, in order; the whole recording if no speech is found and it
        fits Whisper's window (a decoder then says what it hears), else none."""
        from silero_vad import get_speech_timestamps

        stamps = get_speech_timestamps(
            torch.from_numpy(audio), self.model, sampling_rate=SAMPLE_RATE, min_silence_duration_ms=self.min_pause_ms,
            max_speech_duration_s=MAX_SECONDS - 1, speech_pad_ms=self.speech_pad_ms,
        )
        if not stamps and len(audio) <= MAX_SECONDS * SAMPLE_RATE:
            return [(0, len(audio))]
        return [(s["start"], s["end"]) for s in stamps]


def answer_json(hyp) -> dict:
    """A speech_llm_inference.Hypothesis in the JSON record."""
    return {"text": hyp.text, "marked": hyp.marked, "score": hyp.score, "score_per_token": hyp.score_per_token}


def transcribe(speech2text, segmenter: Segmenter, audio: np.ndarray) -> dict:
    """One recording (16-kHz mono) -> its JSON record (without the input's name)."""
    start = time.perf_counter()
    spans = segmenter(audio)
    vad_seconds = time.perf_counter() - start
    num_history = speech2text.preprocessor.num_history
    segments, texts, marks, entities, offset = [], [], [], [], 0
    for i, (begin, end) in enumerate(spans):
        history = [audio[b:e] for b, e in spans[max(0, i - num_history):i]] if num_history else []
        answers = speech2text(audio[begin:end], history=history, fs=SAMPLE_RATE)
        best = answers[0]
        segments.append({
            "start": round(begin / SAMPLE_RATE, 3), "end": round(end / SAMPLE_RATE, 3), **answer_json(best),
            "entities": [asdict(e) for e in best.entities],
            "nbest": [answer_json(a) for a in answers],
            "problems": [str(p) for p in best.problems],
        })
        entities += [{**asdict(e), "start": e.start + offset, "end": e.end + offset} for e in best.entities]
        texts.append(best.text)
        marks.append(best.marked)
        offset += len(best.text)
    elapsed = time.perf_counter() - start
    seconds = len(audio) / SAMPLE_RATE
    return {
        "seconds": round(seconds, 3), "text": "".join(texts), "marked": "".join(marks), "entities": entities,
        "segments": segments,
        "timings": {"vad_s": round(vad_seconds, 3), "total_s": round(elapsed, 3), "rtf": round(elapsed / seconds, 4)},
    }


def read_inputs(files: list[str], wav_scp: str | None) -> list[tuple[str, str]]:
    """(name, path) of each recording: the files as given, then the wav.scp's entries (``<id> <path>``)."""
    inputs = [(f, f) for f in files]
    if wav_scp:
        with open(wav_scp, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                fields = line.split(maxsplit=1)
                if len(fields) != 2:
                    raise ValueError(f"{wav_scp} line {number}: expected '<id> <path>', got {line.rstrip()!r}")
                inputs.append((fields[0], fields[1].strip()))
    return inputs


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("inputs", nargs="*", help="audio files")
    parser.add_argument("--wav_scp", help="a Kaldi wav.scp of recordings (<id> <path>), after the files")
    parser.add_argument("--model", required=True, help="a pack (espnet_llm.bin.pack), its unpacked directory, or a "
                        "run directory such as exp/decoder_only/cot (its config's paths from the recipe directory)")
    parser.add_argument("--base_model", action="append", default=[], metavar="NAME=PATH",
                        help="a base model of the pack elsewhere than recorded, once each: llm=PATH, speech_encoder=PATH")
    parser.add_argument("--output", help="JSON lines file (default: stdout)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--beam_size", type=int, help="default: the pack's decode config, else 1")
    parser.add_argument("--nbest", type=int, help="answers per segment (at most the beam size); default 1")
    parser.add_argument("--min_pause_ms", type=int, default=MIN_PAUSE_MS, help="a pause this long ends a segment")
    parser.add_argument("--speech_pad_ms", type=int, default=SPEECH_PAD_MS, help="silence kept around each segment")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s transcribe %(levelname)s: %(message)s", stream=sys.stderr)
    try:
        inputs = read_inputs(args.inputs, args.wav_scp)
        base_models = dict(item.split("=", 1) for item in args.base_model if "=" in item)
        if len(base_models) != len(args.base_model):
            raise ValueError(f"--base_model takes NAME=PATH, got {args.base_model}")
    except (OSError, ValueError) as error:
        sys.exit(f"ERROR: {error}")
    if not inputs:
        sys.exit("ERROR: no recordings given (audio files, or --wav_scp)")
    options = {k: v for k, v in (("beam_size", args.beam_size), ("nbest", args.nbest)) if v is not None}
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON lines; ESPnet's imports print there
        from espnet_llm.bin.speech_llm_inference import Speech2Text

        try:
            speech2text = Speech2Text.from_pretrained(args.model, base_models=base_models, device=args.device, **options)
        except (OSError, ValueError) as error:  # a file not there, a base model or tokenizer not the trained one
            sys.exit(f"ERROR: {error}")
    segmenter = Segmenter(args.min_pause_ms, args.speech_pad_ms)
    failed, start = 0, time.perf_counter()
    with open(args.output, "w", encoding="utf-8") if args.output else contextlib.nullcontext(sys.stdout) as stream:
        for number, (name, path) in enumerate(inputs, 1):
            try:
                record = {"input": name, **transcribe(speech2text, segmenter, load_model_audio(path))}
                logging.info(f"[{number}/{len(inputs)}] {name}: {record['seconds']:.1f} s, "
                             f"{len(record['segments'])} segment(s), RTF {record['timings']['rtf']:.3f}")
            except (AudioError, ValueError) as error:
                failed += 1
                record = {"input": name, "error": str(error)}
                logging.error(f"[{number}/{len(inputs)}] {name}: {error}")
            stream.write(json.dumps(record, ensure_ascii=False) + "\n")
            stream.flush()
    logging.info(f"{len(inputs) - failed} of {len(inputs)} recording(s) transcribed in "
                 f"{time.perf_counter() - start:.1f} s; {failed} failed")
    if failed == len(inputs):
        sys.exit(f"ERROR: none of the {len(inputs)} recording(s) could be transcribed")


if __name__ == "__main__":
    main()
