"""Write RESULTS.md from the scored experiments under an exp directory (layout: espnet_llm.scoring.results).

    python -m espnet_llm.bin.make_results --expdir exp --out RESULTS.md
"""
from __future__ import annotations

import argparse
import logging

from espnet_llm.scoring.results import write_results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--expdir", default="exp")
    parser.add_argument("--out", default="RESULTS.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s")

    summary = write_results(args.expdir, args.out)
    print(f"# wrote {args.out}")
    print(summary)


if __name__ == "__main__":
    main()
