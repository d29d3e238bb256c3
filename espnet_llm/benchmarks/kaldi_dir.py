"""Times the data-directory tools of stages 1-4 on a training set of AISHELL-1's size and prints the figures.

The directory is generated (not timed): 120,098 utterances of 340 speakers, empty wav files,
transcripts cycling through the shipped AISHELL-NER dev transcript. Timed: validate, fix,
speed perturbation to three speeds (360,294 utterances), validating that, a 32-way split per
speaker, and on the unperturbed set the length filter and the summary::

    python -m espnet_llm.benchmarks.kaldi_dir [--work_dir /tmp/bench]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from itertools import cycle
from pathlib import Path

from espnet_llm.data_prep.history import write_utt2history
from espnet_llm.data_prep.kaldi_dir import fix_data_dir, split_data_dir, subset_data_dir, validate_data_dir, write_table
from espnet_llm.data_prep.length_filter import removal_reasons
from espnet_llm.data_prep.speed_perturb import perturb_and_combine
from espnet_llm.data_prep.summary import summarize_data_dir
from espnet_llm.resources import AISHELL_NER_DEV_TRANSCRIPT
from espnet_llm.text.aishell_ner import parse_marked

NUM_UTTS, NUM_SPEAKERS = 120098, 340  # AISHELL-1 train


def generate(data: Path, audio: Path) -> None:
    sentences = cycle(line.split(maxsplit=1)[1] for line in AISHELL_NER_DEV_TRANSCRIPT.read_text(encoding="utf-8").splitlines())
    tables = {name: {} for name in ("wav.scp", "utt2spk", "text", "text_ner", "entities", "utt2num_samples")}
    for s in range(NUM_SPEAKERS):
        speaker = f"S{s + 2:04d}"
        (audio / speaker).mkdir(parents=True)
        for w in range(1, NUM_UTTS // NUM_SPEAKERS + (s < NUM_UTTS % NUM_SPEAKERS) + 1):
            utt = f"BAC009{speaker}W{w:04d}"
            marked = next(sentences)
            plain, entities = parse_marked(marked)
            (audio / speaker / f"{utt}.wav").touch()
            tables["wav.scp"][utt] = str(audio / speaker / f"{utt}.wav")
            tables["utt2spk"][utt] = speaker
            tables["text"][utt] = plain
            tables["text_ner"][utt] = marked
            tables["entities"][utt] = " ".join(f"{e.type}:{e.text}" for e in entities)
            tables["utt2num_samples"][utt] = str(16000 * (1 + w % 20))
    data.mkdir(parents=True)
    for name, entries in tables.items():
        write_table(data / name, entries)
    (data / "spk2utt").touch()  # written by fix below


def timed(name: str, figures: list, function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    figures.append((name, time.perf_counter() - start))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work_dir", type=Path, help="default: a temporary directory, removed after")
    args = parser.parse_args()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench_kaldi_dir_"))
    figures: list[tuple[str, float]] = []
    try:
        start = time.perf_counter()
        generate(work / "train", work / "audio")
        print(f"generated {NUM_UTTS:,} utterances in {time.perf_counter() - start:.1f} s under {work}", flush=True)
        timed("fix_data_dir (sort, spk2utt)", figures, fix_data_dir, work / "train")
        timed("utt2history (k=3)", figures, write_utt2history, work / "train", 3)
        problems = timed("validate_data_dir", figures, validate_data_dir, work / "train")
        timed("speed perturbation 0.9 1.0 1.1", figures, perturb_and_combine, work / "train", work / "train_sp",
              ["0.9", "1.0", "1.1"])
        timed("utt2history of train_sp", figures, write_utt2history, work / "train_sp", 3)
        problems += timed("validate_data_dir train_sp (3x)", figures, validate_data_dir, work / "train_sp")
        timed("split_data 32 per speaker (3x)", figures, split_data_dir, work / "train_sp", 32)
        # utt2num_samples exists before perturbation only (stage 3 writes it for train_sp)
        reasons = timed("length filter: find removals", figures, removal_reasons, work / "train", 0.1, 15.0, 16000)
        removed = set().union(*reasons.values())
        keep = [line.split()[0] for line in (work / "train" / "utt2spk").read_text().splitlines()]
        timed("length filter: write subset", figures, subset_data_dir, work / "train", work / "filtered",
              utt_ids=[u for u in keep if u not in removed])
        timed("summary", figures, summarize_data_dir, work / "filtered")
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; {NUM_UTTS:,} utterances, 3x = {3 * NUM_UTTS:,}")
    for name, seconds in figures:
        print(f"{name:<40}{seconds:7.2f} s")
    if problems:
        print("\n".join(problems[:10]), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
