"""Dump the frozen Whisper encoder's output once per utterance, so training reads it instead of running Whisper.

    python -m espnet_llm.bin.dump_whisper_features --wav_scp dump/raw/train/wav.scp \\
        --model_path downloads/whisper-large-v2 --output_dir dump/whisper/train \\
        [--utt2num_samples FILE] [--batch_size 16] [--chunk_size 1000] [--ngpu 1] [--pad_to_30s]

Output in ``--output_dir``: ``feats.scp`` (kaldiio ark entries, float16 (frames, d_model), only the frames
that cover the speech, 50 a second), ``feats_shape`` (``<uttid> frames,d_model``, ESPnet's shape-file
format), ``utt2num_frames`` and ``failed`` (``<uttid> <reason>``: unreadable, empty, not 16 kHz mono, or
over Whisper's 30 s; reported as they happen and counted, never fatal). In both ``--pad_to_30s`` modes the
stored frames are the ones the model uses (``hidden_lengths`` of WhisperSpeechEncoder).

Resumable: utterances are sorted by length (longest first, so an out-of-memory batch shows at once) and
cut into fixed chunks of ``--chunk_size``; chunk k goes to ``data/feats.k.ark`` and is committed by renaming
its ``data/feats.k.scp`` into place after the ark is on disk. A rerun after a crash skips the committed
chunks and redoes the half-written one; the result is byte-identical to an uninterrupted run. ``plan.json``
records the input and options; a rerun with different ones stops instead of mixing two dumps.

For ``--nj`` jobs the recipe splits wav.scp and gives each part its own output directory (utils/run.pl),
then concatenates the parts' feats.scp, feats_shape and failed files.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import kaldiio
import numpy as np
import soundfile
import torch
from espnet2.fileio.sound_scp import SoundScpReader

from espnet_llm.data_prep.kaldi_dir import read_table
from espnet_llm.speech.log_mel import HOP_LENGTH, MAX_SAMPLES, SAMPLE_RATE
from espnet_llm.speech.whisper_encoder import WhisperSpeechEncoder

PROGRESS_SECONDS = 10.0
PLAN_FILE = "plan.json"

log = logging.getLogger("dump_whisper_features")


@dataclass
class Utterance:
    uid: str
    num_samples: int  # from utt2num_samples or the file header; -1 when the header cannot be read


def read_lengths(reader: SoundScpReader, utt2num_samples: Path | None) -> list[Utterance]:
    """Every utterance of the scp with its length, from utt2num_samples where it has the id, else the header."""
    known = read_table(utt2num_samples).entries if utt2num_samples is not None else {}
    utterances = []
    for uid in reader.keys():
        if uid in known:
            utterances.append(Utterance(uid, int(known[uid])))
            continue
        try:
            utterances.append(Utterance(uid, soundfile.info(reader.get_path(uid)).frames))
        except Exception:  # unreadable header: reported with the reason when the chunk reads it
            utterances.append(Utterance(uid, -1))
    return utterances


def chunk_plan(utterances: list[Utterance], chunk_size: int) -> list[list[Utterance]]:
    """Longest first (ties by id), cut into fixed chunks: the same input always gives the same chunks."""
    ordered = sorted(utterances, key=lambda u: (-u.num_samples, u.uid))
    return [ordered[i:i + chunk_size] for i in range(0, len(ordered), chunk_size)]


def check_plan(output_dir: Path, plan: dict) -> None:
    """Write plan.json, or check that an existing one (a dump being resumed) is the same."""
    path = output_dir / PLAN_FILE
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous != plan:
            changed = sorted(k for k in plan.keys() | previous.keys() if plan.get(k) != previous.get(k))
            raise SystemExit(
                f"{output_dir} holds a dump made with other input or options ({', '.join(changed)} differ); "
                f"remove it or choose another --output_dir"
            )
        return
    write_atomically(path, json.dumps(plan, indent=2) + "\n")


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_audio(reader: SoundScpReader, utt: Utterance) -> tuple[np.ndarray | None, str | None]:
    """(float32 samples, None), or (None, why the utterance cannot be used)."""
    try:
        rate, wav = reader[utt.uid]
    except Exception as e:  # soundfile, OS and format errors alike
        return None, f"unreadable audio: {type(e).__name__}: {e}".replace("\n", " ")
    if rate != SAMPLE_RATE:
        return None, f"sample rate {rate} Hz, Whisper needs {SAMPLE_RATE}"
    if wav.ndim != 1:
        return None, f"{wav.shape[1]} channels, Whisper needs mono"
    if len(wav) < HOP_LENGTH:
        return None, f"empty audio ({len(wav)} samples, under one Whisper frame)"
    if len(wav) > MAX_SAMPLES:
        return None, f"{len(wav) / SAMPLE_RATE:.1f} s of audio, over Whisper's {MAX_SAMPLES // SAMPLE_RATE} s"
    return wav, None


class Progress:
    """A periodic line with counts, utterances/s and audio hours/s."""

    def __init__(self, total: int, already_done: int):
        self.total, self.done, self.failed, self.samples = total, already_done, 0, 0
        self.new = 0
        self.start = self.last = time.perf_counter()

    def update(self, done: int, failed: int, samples: int, force: bool = False) -> None:
        self.done += done + failed
        self.new += done + failed
        self.failed += failed
        self.samples += samples
        now = time.perf_counter()
        if force or now - self.last >= PROGRESS_SECONDS:
            self.last = now
            elapsed = max(now - self.start, 1e-9)
            log.info(
                f"{self.done}/{self.total} utterances ({self.failed} failed in this run), "
                f"{self.new / elapsed:.1f} utterances/s, {self.samples / SAMPLE_RATE / 3600 / elapsed:.4f} audio hours/s"
            )


class FeatureDumper:
    def __init__(self, encoder: WhisperSpeechEncoder, device: torch.device, batch_size: int):
        self.encoder = encoder
        self.device = device
        self.batch_size = batch_size

    @torch.inference_mode()
    def encode(self, wavs: list[np.ndarray]) -> list[np.ndarray]:
        """Float16 (frames, d_model) per utterance, only the frames that cover its speech."""
        lengths = torch.tensor([len(w) for w in wavs])
        batch = torch.zeros(len(wavs), int(lengths.max()))
        for i, w in enumerate(wavs):
            batch[i, : len(w)] = torch.from_numpy(w)
        hidden, hidden_lengths = self.encoder(batch.to(self.device), lengths.to(self.device))
        hidden = hidden.to(torch.float16).cpu().numpy()
        return [hidden[i, :n] for i, n in enumerate(hidden_lengths.tolist())]

    def encode_each(self, uids: list[str], wavs: list[np.ndarray]) -> tuple[dict, dict]:
        """Encode a batch; if the batch fails, each utterance alone, so one bad row costs only itself."""
        try:
            return dict(zip(uids, self.encode(wavs))), {}
        except Exception as e:
            if len(wavs) == 1:
                return {}, {uids[0]: f"encoder failed: {type(e).__name__}: {e}".replace("\n", " ")}
            log.warning(f"a batch of {len(wavs)} failed ({type(e).__name__}: {e}); encoding its utterances one by one")
        feats, failed = {}, {}
        for uid, wav in zip(uids, wavs):
            f, bad = self.encode_each([uid], [wav])
            feats.update(f)
            failed.update(bad)
        return feats, failed

    def dump_chunk(
        self, reader: SoundScpReader, chunk: list[Utterance], ark: Path, progress: Progress
    ) -> tuple[str, dict[str, int], dict[str, str]]:
        """Write one chunk's ark; returns (its scp text, frames per utterance, failures). The next batch's
        audio is read while this one encodes."""
        failed: dict[str, str] = {}
        frames: dict[str, int] = {}
        scp = io.StringIO()
        batches = [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        with ThreadPoolExecutor(max_workers=1) as pool, open(ark, "wb") as ark_file:
            pending = pool.submit(lambda b=batches[0]: [read_audio(reader, u) for u in b])
            for n, batch in enumerate(batches):
                audio = pending.result()
                if n + 1 < len(batches):
                    pending = pool.submit(lambda b=batches[n + 1]: [read_audio(reader, u) for u in b])
                uids, wavs = [], []
                batch_failed = {}
                for utt, (wav, problem) in zip(batch, audio):
                    if problem is None:
                        uids.append(utt.uid)
                        wavs.append(wav)
                    else:
                        batch_failed[utt.uid] = problem
                feats, encode_failed = self.encode_each(uids, wavs) if wavs else ({}, {})
                batch_failed.update(encode_failed)
                for uid, reason in batch_failed.items():
                    log.warning(f"utterance {uid}: {reason}: not dumped (listed in 'failed')")
                failed.update(batch_failed)
                if feats:
                    # numpy's format inside the ark: Kaldi's matrix format has no float16
                    kaldiio.save_ark(ark_file, feats, scp=scp, write_function="numpy")
                    frames.update((uid, f.shape[0]) for uid, f in feats.items())
                progress.update(len(feats), len(batch_failed), sum(len(w) for w, _ in audio if w is not None))
            ark_file.flush()
            os.fsync(ark_file.fileno())
        return scp.getvalue(), frames, failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wav_scp", required=True, help="16 kHz mono audio (a whole set or one split part)")
    parser.add_argument("--model_path", required=True, help="transformers Whisper directory or OpenAI .pt file")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument(
        "--utt2num_samples", default=None,
        help="utterance lengths for sorting; default: utt2num_samples beside wav.scp if there, else the file headers",
    )
    parser.add_argument("--batch_size", type=int, default=16, help="utterances per encoder batch")
    parser.add_argument("--chunk_size", type=int, default=1000, help="utterances per ark (the unit redone on resume)")
    parser.add_argument("--ngpu", type=int, default=0, help="0: CPU (float32), 1: one GPU (float16)")
    parser.add_argument("--pad_to_30s", action="store_true", help="encode as Whisper was trained (30-s windows)")
    parser.add_argument("--log_level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(levelname)s: %(message)s", stream=sys.stderr)

    wav_scp = Path(args.wav_scp)
    output_dir = Path(args.output_dir)
    (output_dir / "data").mkdir(parents=True, exist_ok=True)
    lengths_file = Path(args.utt2num_samples) if args.utt2num_samples else wav_scp.with_name("utt2num_samples")
    reader = SoundScpReader(str(wav_scp), dtype="float32")
    if len(reader) == 0:
        raise SystemExit(f"{wav_scp}: no utterances")
    utterances = read_lengths(reader, lengths_file if lengths_file.is_file() else None)
    chunks = chunk_plan(utterances, args.chunk_size)
    check_plan(output_dir, {
        "wav_scp": str(wav_scp.resolve()),
        "utterances_sha1": hashlib.sha1(" ".join(sorted(u.uid for u in utterances)).encode()).hexdigest(),
        "model_path": str(Path(args.model_path).resolve()),
        "pad_to_30s": args.pad_to_30s,
        "chunk_size": args.chunk_size,
    })

    done = [k for k in range(len(chunks)) if (output_dir / "data" / f"feats.{k}.scp").is_file()]
    todo = [k for k in range(len(chunks)) if k not in set(done)]
    already = sum(len(chunks[k]) for k in done)
    log.info(
        f"{wav_scp}: {len(utterances)} utterances in {len(chunks)} chunk(s); "
        f"{len(done)} chunk(s) ({already} utterances) already dumped, {len(todo)} to do"
    )
    if todo:
        device = torch.device("cuda" if args.ngpu > 0 else "cpu")
        if args.ngpu > 0 and not torch.cuda.is_available():
            raise SystemExit("--ngpu 1 but no GPU is visible")
        encoder = WhisperSpeechEncoder(args.model_path, pad_to_30s=args.pad_to_30s).to(device)
        if device.type == "cuda":
            encoder.encoder.half()  # the log-mel stays float32; the stored features are float16 anyway
        dumper = FeatureDumper(encoder, device, args.batch_size)
        progress = Progress(len(utterances), already)
        for k in todo:
            ark = output_dir / "data" / f"feats.{k}.ark"
            scp, frames, failed = dumper.dump_chunk(reader, chunks[k], ark, progress)
            write_atomically(ark.with_name(f"utt2num_frames.{k}"), "".join(f"{u} {n}\n" for u, n in frames.items()))
            write_atomically(ark.with_name(f"failed.{k}"), "".join(f"{u} {r}\n" for u, r in sorted(failed.items())))
            write_atomically(ark.with_name(f"feats.{k}.scp"), scp)  # the commit: a chunk is done once this exists
        progress.update(0, 0, 0, force=True)
    return merge_chunks(output_dir, len(chunks))


def merge_chunks(output_dir: Path, num_chunks: int) -> int:
    """feats.scp, feats_shape, utt2num_frames and failed of the whole dump, sorted by utterance id."""
    scp, frames, failed = {}, {}, {}
    for k in range(num_chunks):
        scp.update(read_table(output_dir / "data" / f"feats.{k}.scp").entries)
        frames.update(read_table(output_dir / "data" / f"utt2num_frames.{k}").entries)
        failed.update(read_table(output_dir / "data" / f"failed.{k}").entries)
    uids = sorted(scp)
    width = kaldiio.load_mat(scp[uids[0]]).shape[1] if uids else 0  # d_model, the same for every utterance
    write_atomically(output_dir / "feats.scp", "".join(f"{u} {scp[u]}\n" for u in uids))
    write_atomically(output_dir / "feats_shape", "".join(f"{u} {frames[u]},{width}\n" for u in uids))
    write_atomically(output_dir / "utt2num_frames", "".join(f"{u} {frames[u]}\n" for u in uids))
    write_atomically(output_dir / "failed", "".join(f"{u} {failed[u]}\n" for u in sorted(failed)))
    (log.warning if failed else log.info)(
        f"{output_dir}: {len(scp)} utterances dumped, {len(failed)} failed (listed in {output_dir / 'failed'})"
    )
    if not scp:
        log.error("no utterance could be dumped")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
