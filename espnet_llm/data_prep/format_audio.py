"""Stage 3: write the audio of a wav.scp as 16-bit mono wav files at one sample rate, with utt2num_samples.

One run handles one part of a split wav.scp (the recipe runs ``--nj`` of them through
``utils/run.pl``). Entries are files or ``cmd |`` pipes (speed perturbation). An utterance whose
audio cannot be read is reported with its id and left out of the outputs; the recipe's
``fix_data_dir`` then counts it as removed. Only when every utterance fails does the run fail.
"""
from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile

from espnet_llm.data_prep.kaldi_dir import read_table
from espnet_llm.data_prep.speed_perturb import SOX_MISSING

PROGRESS_SECONDS = 10.0


class AudioReadError(RuntimeError):
    pass


def read_entry(entry: str) -> tuple[np.ndarray, int]:
    """Read a wav.scp entry as int16 samples (frames, channels) and its sample rate."""
    if entry.endswith("|"):
        result = subprocess.run(entry[:-1], shell=True, capture_output=True)
        if result.returncode != 0:
            stderr = result.stderr.decode("utf-8", "replace").strip().splitlines()
            raise AudioReadError(f"command '{entry}' failed (exit {result.returncode}): {stderr[-1] if stderr else ''}")
        source = io.BytesIO(result.stdout)
    else:
        source = entry
    try:
        samples, rate = soundfile.read(source, dtype="int16", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, OSError) as e:
        raise AudioReadError(f"cannot read audio from '{entry}': {e}") from None
    return samples, rate


def to_mono_at_rate(samples: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    """Average the channels and resample; int16 in, int16 (frames,) out."""
    if samples.shape[1] == 1 and rate == target_rate:
        return samples[:, 0]
    mono = samples.astype(np.float32).mean(axis=1) / 32768.0
    if rate != target_rate and len(mono) > 0:
        import torch
        import torchaudio.functional  # imported here: most corpora never need it and it loads slowly

        mono = torchaudio.functional.resample(torch.from_numpy(mono), rate, target_rate).numpy()
    return np.clip(np.round(mono * 32768.0), -32768, 32767).astype(np.int16)


def format_wav_scp(wav_scp: Path, audio_dir: Path, out_wav_scp: Path, out_num_samples: Path, fs: int,
                   log=sys.stderr) -> tuple[int, int]:
    """Format every entry; returns (written, failed)."""
    entries = read_table(wav_scp).entries
    if shutil.which("sox") is None and any("sox " in e for e in entries.values() if e.endswith("|")):
        raise SystemExit(f"{wav_scp}: entries pipe through sox, but {SOX_MISSING}")
    audio_dir.mkdir(parents=True, exist_ok=True)
    written = failed = 0
    start = last_report = time.monotonic()
    with open(out_wav_scp, "w", encoding="utf-8") as scp, open(out_num_samples, "w", encoding="utf-8") as lengths:
        for index, (utt, entry) in enumerate(entries.items(), 1):
            try:
                samples, rate = read_entry(entry)
                audio = to_mono_at_rate(samples, rate, fs)
            except AudioReadError as e:
                print(f"ERROR utterance {utt}: {e}", file=log)
                failed += 1
                continue
            path = audio_dir / f"{utt}.wav"
            soundfile.write(path, audio, fs, subtype="PCM_16")
            scp.write(f"{utt} {path}\n")
            lengths.write(f"{utt} {len(audio)}\n")
            written += 1
            now = time.monotonic()
            if now - last_report >= PROGRESS_SECONDS:
                print(f"progress: {index}/{len(entries)} utterances, {index / (now - start):.1f} utt/s", file=log)
                last_report = now
    elapsed = time.monotonic() - start
    print(f"formatted {written} utterance(s), {failed} failed, in {elapsed:.1f} s "
          f"({(written + failed) / max(elapsed, 1e-9):.1f} utt/s)", file=log)
    return written, failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m espnet_llm.data_prep.format_audio", description=__doc__.split("\n")[0])
    parser.add_argument("--fs", type=int, default=16000, help="output sample rate")
    parser.add_argument("wav_scp", type=Path, help="input wav.scp (files or 'cmd |' pipes)")
    parser.add_argument("audio_dir", type=Path, help="where the wav files go, <utt>.wav")
    parser.add_argument("out_wav_scp", type=Path)
    parser.add_argument("out_num_samples", type=Path, help="utt2num_samples to write")
    args = parser.parse_args(argv)
    written, failed = format_wav_scp(args.wav_scp, args.audio_dir, args.out_wav_scp, args.out_num_samples, args.fs)
    if failed and not written:
        print(f"every utterance of {args.wav_scp} failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
