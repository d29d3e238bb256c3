"""Times stage 1 on a generated tree of the full AISHELL-1 size and records the figures.

The tree has the openslr 33 layout with the real split sizes (train 120,098 / dev 14,326 /
test 7,176 utterances of 340 / 40 / 20 speakers = 141,600 entries), empty wav files, an AISHELL
transcript and the three AISHELL-NER files whose sentences cycle through the shipped dev
transcript. Generation is not timed; preparation (espnet_llm.data_prep.aishell.prepare) and
utt2history are. The figures are printed and written to the recipe's docs/benchmarks.md (run from
egs2/aishell_ner/llm1)::

    python -m espnet_llm.benchmarks.data_prep [--work_dir /tmp/bench] [--doc docs/benchmarks.md]
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import shutil
import sys
import tempfile
import time
from contextlib import redirect_stderr, redirect_stdout
from itertools import cycle
from pathlib import Path

from espnet_llm.data_prep.aishell import SETS, prepare
from espnet_llm.data_prep.history import write_utt2history
from espnet_llm.resources import AISHELL_NER_DEV_TRANSCRIPT

# AISHELL-1 (openslr 33): utterances and speakers per set.
AISHELL_SIZES = {"train": (120098, 340), "dev": (14326, 40), "test": (7176, 20)}
SECTION_TITLE = "## Stage 1 data preparation (local/data.sh)"


def generate_tree(root: Path) -> int:
    """Write the full-size tree; returns the number of utterances."""
    sentences = cycle(line.split(maxsplit=1)[1] for line in AISHELL_NER_DEV_TRANSCRIPT.read_text(encoding="utf-8").splitlines())
    transcript, ner = [], {subset: [] for subset in SETS}
    speaker_number = 2  # AISHELL-1 speakers start at S0002
    for subset, (num_utts, num_speakers) in AISHELL_SIZES.items():
        for s in range(num_speakers):
            speaker = f"S{speaker_number:04d}"
            speaker_number += 1
            speaker_dir = root / "data_aishell" / "wav" / subset / speaker
            speaker_dir.mkdir(parents=True)
            # Spread the set's utterances over its speakers as evenly as the counts allow.
            count = num_utts // num_speakers + (s < num_utts % num_speakers)
            for w in range(1, count + 1):
                uttid = f"BAC009{speaker}W{w:04d}"
                (speaker_dir / f"{uttid}.wav").touch()
                marked = next(sentences).strip()
                transcript.append(f"{uttid} {' '.join(ch for ch in marked if ch not in '[]()<>')}")
                ner[subset].append(f"{uttid} {marked}")
    (root / "data_aishell" / "transcript").mkdir()
    (root / "data_aishell" / "transcript" / "aishell_transcript_v0.8.txt").write_text("\n".join(transcript) + "\n", encoding="utf-8")
    for subset, lines in ner.items():
        (root / f"aishell_ner_transcript.{subset}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(transcript)


def update_doc(doc: Path, section: str) -> None:
    """Replace this benchmark's section of the shared benchmarks file, leaving the others alone."""
    text = doc.read_text(encoding="utf-8") if doc.exists() else "# Benchmarks\n"
    start = text.find(SECTION_TITLE)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(SECTION_TITLE))
        text = text[:start] + section.rstrip("\n") + "\n" + ("\n" + text[end + 1:] if end >= 0 else "")
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text, encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work_dir", type=Path, help="where to generate the tree (default: a temporary directory, removed after)")
    parser.add_argument("--doc", type=Path, default=Path("docs/benchmarks.md"), help="run from the recipe directory")
    parser.add_argument("--k", type=int, default=3, help="history length for utt2history")
    args = parser.parse_args()

    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="bench_data_prep_"))
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
        start = time.time()
        num_utts = generate_tree(work_dir / "corpus")
        print(f"generated {num_utts:,} utterance entries in {time.time() - start:.1f} s under {work_dir}", flush=True)

        output_dir = work_dir / "data"
        ner_files = [work_dir / "corpus" / f"aishell_ner_transcript.{subset}.txt" for subset in SETS]
        load = os.getloadavg()[0]  # other work on the machine slows the figures down
        start = time.time()
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            summary = prepare(work_dir / "corpus" / "data_aishell", ner_files, output_dir)
        prepare_s = time.time() - start
        start = time.time()
        for subset in SETS:
            write_utt2history(output_dir / subset, args.k)
        history_s = time.time() - start
    finally:
        if args.work_dir is None:
            shutil.rmtree(work_dir, ignore_errors=True)

    written = sum(s.utterances for s in summary.sets.values())
    skipped = sum(summary.problems.values())
    total_s = prepare_s + history_s
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average {load:.1f}, "
               f"Python {platform.python_version()}")
    rows = [
        ("utterance entries", f"{num_utts:,}"),
        ("utterances written", f"{written:,} (skipped {skipped})"),
        ("prepare (scan, read, check, write)", f"{prepare_s:.2f} s"),
        (f"utt2history (k={args.k}, 3 sets)", f"{history_s:.2f} s"),
        ("stage 1 total", f"{total_s:.2f} s"),
        ("throughput", f"{num_utts / total_s:,.0f} utterances/s"),
    ]
    for name, value in rows:
        print(f"{name:<36}{value}")
    section = (
        f"{SECTION_TITLE}\n\n"
        f"`python -m espnet_llm.benchmarks.data_prep`: a generated tree of the full AISHELL-1 size (empty wav files,\n"
        f"real AISHELL-NER sentences), tarball extraction excluded; {machine}, {time.strftime('%Y-%m-%d')}.\n\n"
        "| measure | value |\n|---|---|\n" + "".join(f"| {name} | {value} |\n" for name, value in rows)
    )
    update_doc(args.doc, section)
    print(f"wrote {args.doc}")
    return 0 if skipped == 0 and written == num_utts else 1


if __name__ == "__main__":
    sys.exit(main())
