"""Time CER (sclite and the fallback) and NER scoring on the full AISHELL-NER dev set (14,326 utterances).

The hypotheses are the shipped dev transcript with seeded character errors (3% deleted, 5%
substituted, 2% inserted), so marks are sometimes broken too. Prints the counts of both CER
back ends (they must agree) and the seconds each scorer takes.

    python -m espnet_llm.benchmarks.scoring [--work_dir DIR]
"""
from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from espnet_llm.resources import AISHELL_NER_DEV_TRANSCRIPT
from espnet_llm.scoring.cer import find_sclite, score_cer
from espnet_llm.scoring.ner import score_ner
from espnet_llm.text.aishell_ner import MARK_CHARS


def corrupt(text: str, rng: random.Random) -> str:
    out = []
    for ch in text:
        r = rng.random()
        if r < 0.03:
            continue
        out.append("错" if r < 0.08 and ch not in MARK_CHARS else ch)
        if r > 0.98:
            out.append("多")
    return "".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work_dir", default=None, help="default: a temporary directory")
    args = parser.parse_args()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="benchmark_scoring_"))
    work.mkdir(parents=True, exist_ok=True)

    rng = random.Random(0)
    lines = AISHELL_NER_DEV_TRANSCRIPT.read_text(encoding="utf-8").splitlines()
    (work / "ref").write_text("\n".join(lines) + "\n", encoding="utf-8")
    hyps = [f"{uttid} {corrupt(text, rng)}" for uttid, text in (line.split(maxsplit=1) for line in lines)]
    (work / "hyp").write_text("\n".join(hyps) + "\n", encoding="utf-8")

    backends = ["sclite", "fallback"] if find_sclite() else ["fallback"]
    for backend in backends:
        start = time.perf_counter()
        result = score_cer(work / "ref", work / "hyp", work / f"score_cer_{backend}", backend=backend)
        seconds = time.perf_counter() - start
        print(f"CER {backend:8s} {seconds:6.1f} s  {result.counts.error_rate:.2f}%  {result.counts}")
    start = time.perf_counter()
    ner = score_ner(work / "ref", work / "hyp", work / "score_ner")
    seconds = time.perf_counter() - start
    micro = ner.counts.prf()
    print(f"NER          {seconds:6.1f} s  P {100 * micro['precision']:.1f} R {100 * micro['recall']:.1f} "
          f"F1 {100 * micro['f1']:.1f}  ({len(ner.malformed_hypotheses)} malformed hypotheses)")
    print(f"({len(lines)} utterances; outputs in {work})")


if __name__ == "__main__":
    main()
