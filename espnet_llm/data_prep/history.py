"""Historical context: ``utt2history`` lists, per utterance, the previous K utterances of its speaker.

AISHELL utterance ids number a speaker's sentences in reading order (``BAC009S0724W0121``,
``...W0122``), so the utterances before one in id order are the speech that came before it.
Line format: ``<uttid> <prev_1> ... <prev_k>``, oldest first, only ids of the same data
directory, fewer than K at the start of a speaker. Speed-perturbed copies (``sp0.9-`` on the
utterance and speaker ids) form their own speakers and so refer only to copies of the same
speed. The recipe re-runs this after perturbation and filtering so no id points at a removed
utterance::

    python -m espnet_llm.data_prep.history data/train --k 3
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

from espnet_llm.data_prep.kaldi_dir import read_utt2spk


def build_history(utt2spk: dict[str, str], k: int) -> dict[str, list[str]]:
    """Map each utterance to the ids of up to k earlier utterances of its speaker, oldest first."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    by_speaker: dict[str, list[str]] = defaultdict(list)
    for uttid, speaker in utt2spk.items():
        by_speaker[speaker].append(uttid)
    history = {}
    for uttids in by_speaker.values():
        uttids.sort()
        for i, uttid in enumerate(uttids):
            history[uttid] = uttids[max(0, i - k):i]
    return history


def write_utt2history(data_dir: Path, k: int) -> Path:
    history = build_history(read_utt2spk(data_dir / "utt2spk"), k)
    path = data_dir / "utt2history"
    path.write_text("".join(" ".join([uttid, *history[uttid]]) + "\n" for uttid in sorted(history)), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write <data_dir>/utt2history: each utterance's previous K of its speaker")
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--k", type=int, required=True, help="number of previous utterances to list")
    args = parser.parse_args(argv)
    try:
        path = write_utt2history(args.data_dir, args.k)
    except (OSError, ValueError) as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
    print(f"wrote {path} (k={args.k})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
