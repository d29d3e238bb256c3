"""The Conformer baseline's CTC weight, chosen on the validation set as its users tune it.

Reads ``<tuning_dir>/ctc<w>/<set>/cer/result.json`` of each weight tried (local/conformer.sh, stage 12),
writes ``<tuning_dir>/choice.txt`` (each weight's CER, then the choice) and prints the weight of the lowest CER
(the smaller weight on a tie)::

    python -m espnet_llm.scoring.ctc_weight_tuning exp/conformer/asr/ctc_weight_tuning dev
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from espnet_llm.scoring.cer import ErrorCounts


def tried_weights(tuning_dir: Path, valid_set: str) -> dict[str, float]:
    """'<weight>' -> its CER in % on the validation set."""
    cers = {}
    for result in sorted(tuning_dir.glob(f"ctc*/{valid_set}/cer/result.json")):
        counts = ErrorCounts(**json.loads(result.read_text(encoding="utf-8"))["counts"])
        cers[result.parts[-4][len("ctc"):]] = counts.error_rate
    if not cers:
        raise FileNotFoundError(f"no ctc<weight>/{valid_set}/cer/result.json under {tuning_dir}")
    return cers


def choose(cers: dict[str, float]) -> str:
    return min(cers, key=lambda weight: (round(cers[weight], 6), float(weight)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tuning_dir", type=Path)
    parser.add_argument("valid_set")
    args = parser.parse_args(argv)
    try:
        cers = tried_weights(args.tuning_dir, args.valid_set)
    except (OSError, ValueError, KeyError) as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
    best = choose(cers)
    lines = [f"ctc_weight {weight} CER {cer:.1f}" for weight, cer in sorted(cers.items(), key=lambda i: float(i[0]))]
    (args.tuning_dir / "choice.txt").write_text("\n".join(lines + [f"chosen {best}"]) + "\n", encoding="utf-8")
    print(best)
    return 0


if __name__ == "__main__":
    sys.exit(main())
