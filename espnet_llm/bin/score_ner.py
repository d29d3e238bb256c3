"""Score entity-marked hypotheses: NER precision/recall/F1 per type and micro, and the error breakdown.

    python -m espnet_llm.bin.score_ner --ref data/test/text_ner \
        --hyp exp/.../decode_speech_llm_valid.acc_current.ave/test/text_ner \
        --out_dir exp/.../decode_speech_llm_valid.acc_current.ave/test/score_ner

Writes result.txt (tables), result.json (counts), errors.txt (one line per entity error) and
utterances.json (the counts of each utterance).
"""
from __future__ import annotations

import argparse
import logging
import sys

from espnet_llm.scoring.cer import ScoringInputError
from espnet_llm.scoring.ner import score_ner


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", required=True, help="Kaldi text_ner of the references")
    parser.add_argument("--hyp", required=True, help="Kaldi text_ner of the hypotheses (model output)")
    parser.add_argument("--out_dir", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s")

    try:
        result = score_ner(args.ref, args.hyp, args.out_dir)
    except (ScoringInputError, FileNotFoundError) as error:  # bad input: one line that names it, no traceback
        sys.exit(f"ERROR: {error}")
    print(f"# NER of {args.hyp} ({result.utterances} utterances, "
          f"{len(result.malformed_hypotheses)} malformed, {len(result.missing_hypotheses)} missing)")
    print(result.prf_table())
    print()
    print(result.error_table())


if __name__ == "__main__":
    main()
