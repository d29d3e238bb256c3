"""Speed perturbation of a training data directory (stage 2), the ESPnet way.

Each factor other than 1.0 gives a copy with ``sp<factor>-`` prefixed utterance and speaker ids
whose ``wav.scp`` entries pipe the audio through ``sox ... speed <factor>`` (pitch and tempo
change together); stage 3 runs those pipes when it formats the audio. The copies and the original
are combined into one directory. ``utt2num_samples``/``utt2dur`` are not carried over (the length
changes); ``utt2history`` references get the prefix of their copy, and the recipe regenerates the
file with ``espnet_llm.data_prep.history`` anyway.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from espnet_llm.data_prep.kaldi_dir import (
    DataDirError, combine_data_dirs, copy_data_dir, read_table, write_table,
)

SOX_MISSING = "sox not found: run tools/setup.sh (it installs Debian's sox) or install sox by hand"


def sox_speed_command(wav_entry: str, factor: str) -> str:
    """The wav.scp entry that plays ``wav_entry`` (a file or a ``cmd |`` pipe) at ``factor`` speed."""
    if wav_entry.endswith("|"):
        return f"{wav_entry} sox -t wav - -t wav - speed {factor} |"
    return f"sox {wav_entry} -t wav - speed {factor} |"


def perturb_data_dir_speed(src: str | Path, dst: str | Path, factor: str) -> list[str]:
    """Write ``dst``: ``src`` at ``factor`` speed with ``sp<factor>-`` prefixed ids."""
    src, dst = Path(src), Path(dst)
    prefix = f"sp{factor}-"
    report = copy_data_dir(src, dst, utt_prefix=prefix, spk_prefix=prefix)
    for stale in ("utt2num_samples", "utt2dur"):
        (dst / stale).unlink(missing_ok=True)
    wav_scp = read_table(dst / "wav.scp").entries
    write_table(dst / "wav.scp", {utt: sox_speed_command(entry, factor) for utt, entry in wav_scp.items()})
    return report


def perturb_and_combine(src: str | Path, dst: str | Path, factors: list[str]) -> list[str]:
    """``dst`` = ``src`` at every factor (1.0 means ``src`` itself, unprefixed)."""
    if not factors:
        raise DataDirError("no speed perturbation factors given")
    for factor in factors:
        try:
            if float(factor) <= 0:
                raise ValueError
        except ValueError:
            raise DataDirError(f"speed factor '{factor}' is not a positive number") from None
    if any(float(f) != 1.0 for f in factors) and shutil.which("sox") is None:
        raise DataDirError(SOX_MISSING)
    report: list[str] = []
    with tempfile.TemporaryDirectory(prefix="speed_perturb.", dir=Path(dst).parent) as tmp:
        parts = []
        for factor in factors:
            if float(factor) == 1.0:
                parts.append(Path(src))
            else:
                part = Path(tmp) / f"sp{factor}"
                report += perturb_data_dir_speed(src, part, factor)
                parts.append(part)
        if Path(dst).exists():
            shutil.rmtree(dst)
        report += combine_data_dirs(dst, parts)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m espnet_llm.data_prep.speed_perturb", description=__doc__.split("\n")[0])
    parser.add_argument("--factors", required=True, help='space-separated speed factors, e.g. "0.9 1.0 1.1"')
    parser.add_argument("src")
    parser.add_argument("dst")
    args = parser.parse_args(argv)
    Path(args.dst).parent.mkdir(parents=True, exist_ok=True)
    try:
        for line in perturb_and_combine(args.src, args.dst, args.factors.split()):
            print(line, file=sys.stderr)
    except DataDirError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
