"""The listening control: a copy of a data set in which every utterance has another utterance's speech.

Decoded like the set itself and scored against the set's own transcripts, it shows what a model writes from
its text prior alone (RESULTS.md's Controls): a model that listens scores near 100 % CER there. Utterance i
(in id order) takes the speech of utterance i + n/2, so that with the speakers of a set in blocks it is
another speaker's speech, and no utterance keeps its own::

    python -m espnet_llm.data_prep.other_speech dump/raw/test dump/raw/test_other_speech \
        [--feats dump/whisper_feats/test dump/whisper_feats/test_other_speech]
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from espnet_llm.data_prep.kaldi_dir import copy_data_dir, read_table, write_table

SUFFIX = "_other_speech"
# the tables that hold an utterance's speech, or facts of it, and so move with it
SPEECH_TABLES = ("wav.scp", "utt2num_samples", "feats.scp", "feats_shape", "utt2num_frames")


def rolled(entries: dict[str, str]) -> dict[str, str]:
    keys = sorted(entries)
    shift = len(keys) // 2 or 1
    return {key: entries[keys[(i + shift) % len(keys)]] for i, key in enumerate(keys)}


def roll_speech_tables(src: Path, dst: Path) -> None:
    """Write ``dst``'s speech tables from ``src``'s, rolled."""
    for name in SPEECH_TABLES:
        if (src / name).exists():
            write_table(dst / name, rolled(read_table(src / name).entries))


def write_other_speech_set(data_dir: Path, output_dir: Path, feats_dir: Path | None = None,
                           feats_output_dir: Path | None = None) -> None:
    if len(read_table(Path(data_dir) / "wav.scp").entries) < 2:
        raise ValueError(f"{data_dir}: another utterance's speech needs at least two utterances")
    copy_data_dir(data_dir, output_dir)
    roll_speech_tables(Path(data_dir), Path(output_dir))
    if feats_dir is not None:
        Path(feats_output_dir).mkdir(parents=True, exist_ok=True)
        roll_speech_tables(Path(feats_dir), Path(feats_output_dir))
        if (Path(feats_dir) / "failed").exists():  # the dump's failures name utterances, not speech
            shutil.copy(Path(feats_dir) / "failed", Path(feats_output_dir) / "failed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--feats", type=Path, nargs=2, metavar=("FEATS_DIR", "OUTPUT_FEATS_DIR"),
                        help="the set's Whisper features (stage 6) and where their rolled copy goes")
    args = parser.parse_args(argv)
    try:
        write_other_speech_set(args.data_dir, args.output_dir, *(args.feats or (None, None)))
    except (OSError, ValueError) as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
    print(f"{args.output_dir}: {args.data_dir} with each utterance given another's speech")
    return 0


if __name__ == "__main__":
    sys.exit(main())
