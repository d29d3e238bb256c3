"""Write RESULTS.md from the scored experiments under an exp directory (layout: espnet_llm.scoring.results).

    python -m espnet_llm.bin.make_results --expdir exp --out RESULTS.md [--cer_set dev --runs "<system>/<phase> ..."]

With --cer_set, it then prints the CER of each of --runs on that set (those scored on it).
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from espnet_llm.scoring.results import find_runs, latest_decodings, write_results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--expdir", default="exp")
    parser.add_argument("--out", default="RESULTS.md")
    parser.add_argument("--cer_set", help="print the CER of each of --runs on this set")
    parser.add_argument("--runs", default="", help="<system>/<phase> names, space-separated")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s")

    # written beside it and renamed: a run killed while writing leaves the earlier RESULTS.md, not half of one
    tmp = Path(args.out).with_name(Path(args.out).name + ".tmp")
    summary = write_results(args.expdir, tmp)
    os.replace(tmp, args.out)
    print(f"# wrote {args.out}")
    print(summary)
    if args.cer_set:
        print_cers(Path(args.expdir), args.runs.split(), args.cer_set)


def print_cers(expdir: Path, runs: list[str], dset: str) -> None:
    print(f"{dset} CER of each run (its latest decoding):")
    latest = {run.name: run for run in latest_decodings(find_runs(expdir))}
    for name in runs:
        if name in latest and dset in latest[name].cer:
            print("  %-24s %s CER %6.1f %%" % (name, dset, latest[name].cer[dset].counts.error_rate))


if __name__ == "__main__":
    main()
