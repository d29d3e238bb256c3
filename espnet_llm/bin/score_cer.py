"""Score a decoding's CER the ESPnet way: ref.trn, hyp.trn, sclite's result.txt, result.json.

    python -m espnet_llm.bin.score_cer --ref data/test/text \
        --hyp exp/.../decode_speech_llm_valid.acc_current.ave/test/text \
        --out_dir exp/.../decode_speech_llm_valid.acc_current.ave/test/score_cer
"""
from __future__ import annotations

import argparse
import logging
import sys

from espnet_llm.scoring.cer import ScoringInputError, markdown_table, score_cer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", required=True, help="Kaldi text of the references (marks are removed)")
    parser.add_argument("--hyp", required=True, help="Kaldi text of the hypotheses (marks are removed)")
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--utt2spk", default=None, help="default: utt2spk beside --ref, if there")
    parser.add_argument("--backend", choices=("auto", "sclite", "fallback"), default="auto",
                        help="auto: sclite where installed, else the fallback with the same counts")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s")

    try:
        result = score_cer(args.ref, args.hyp, args.out_dir, args.utt2spk, args.backend)
    except (ScoringInputError, FileNotFoundError) as error:  # bad input: one line that names it, no traceback
        sys.exit(f"ERROR: {error}")
    print(f"# CER of {args.hyp} ({result.backend}; {len(result.missing_hypotheses)} missing hypotheses)")
    print(markdown_table([(args.hyp, result.counts)]))


if __name__ == "__main__":
    main()
