"""Stage 4: remove utterances too short or too long for training, or with an empty transcript.

The limits come from run.sh (``--min_wav_duration``, ``--max_wav_duration``; Whisper's encoder
takes at most 30 s). Every removal is counted per reason and the first few ids are named.
Sets used only for testing are not filtered (scores must cover the whole set): ``--report_only``
just counts what the limits would remove, so that over-long test audio is known before decoding.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from espnet_llm.data_prep.kaldi_dir import DataDirError, read_table, subset_data_dir

SHOWN_IDS = 5


def removal_reasons(data_dir: Path, min_seconds: float, max_seconds: float, fs: int) -> dict[str, list[str]]:
    """Utterance ids to remove, by reason (``too short``, ``too long``, ``empty transcript``)."""
    num_samples_path = data_dir / "utt2num_samples"
    if not num_samples_path.is_file():
        raise DataDirError(f"{num_samples_path}: missing (stage 3 writes it)")
    num_samples = read_table(num_samples_path).entries
    text_path = data_dir / "text"
    text = read_table(text_path).entries if text_path.is_file() else {}
    reasons: dict[str, list[str]] = {"too short": [], "too long": [], "empty transcript": []}
    for utt, value in num_samples.items():
        seconds = int(value) / fs
        if seconds < min_seconds:
            reasons["too short"].append(utt)
        elif seconds > max_seconds:
            reasons["too long"].append(utt)
        elif utt in text and not text[utt]:
            reasons["empty transcript"].append(utt)
    return reasons


def describe(reasons: dict[str, list[str]], min_seconds: float, max_seconds: float) -> list[str]:
    labels = {"too short": f"too short (< {min_seconds} s)", "too long": f"too long (> {max_seconds} s)",
              "empty transcript": "empty transcript"}
    lines = []
    for reason, utts in reasons.items():
        if utts:
            shown = " ".join(utts[:SHOWN_IDS]) + (" ..." if len(utts) > SHOWN_IDS else "")
            lines.append(f"  {labels[reason]}: {len(utts)} ({shown})")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m espnet_llm.data_prep.length_filter", description=__doc__.split("\n")[0])
    parser.add_argument("--min_duration", type=float, required=True, help="seconds")
    parser.add_argument("--max_duration", type=float, required=True, help="seconds")
    parser.add_argument("--fs", type=int, default=16000)
    parser.add_argument("--report_only", action="store_true", help="count, do not remove (test sets)")
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path, nargs="?", help="the filtered directory (not with --report_only)")
    args = parser.parse_args(argv)
    if (args.dst is None) != args.report_only:
        parser.error("give dst, or --report_only without dst")
    try:
        reasons = removal_reasons(args.src, args.min_duration, args.max_duration, args.fs)
        total = len(read_table(args.src / "utt2spk").entries)
        removed = set().union(*reasons.values())
        if args.report_only:
            print(f"{args.src}: kept all {total} utterances (a test set); outside the limits:"
                  f" {len(removed)}", file=sys.stderr)
        else:
            keep = [u for u in read_table(args.src / "utt2spk").entries if u not in removed]
            for line in subset_data_dir(args.src, args.dst, utt_ids=keep)[:-1]:  # the last line repeats the counts
                print(line, file=sys.stderr)
            print(f"{args.src} -> {args.dst}: kept {len(keep)} of {total} utterances, removed {len(removed)}", file=sys.stderr)
        for line in describe(reasons, args.min_duration, args.max_duration):
            print(line, file=sys.stderr)
    except DataDirError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    if not args.report_only and total and len(removed) == total:
        print(f"{parser.prog}: error: every utterance of {args.src} was removed; check the limits", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
