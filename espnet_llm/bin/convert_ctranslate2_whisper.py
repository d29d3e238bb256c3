"""Convert a CTranslate2 (faster-whisper) Whisper directory into a transformers Whisper directory.

    python -m espnet_llm.bin.convert_ctranslate2_whisper --ct2_dir downloads/faster-whisper-base \\
        --output_dir downloads/whisper-base

Reads ``--ct2_dir``/model.bin (and its config.json, vocabulary and tokenizer.json) and writes
``--output_dir``/config.json, model.safetensors (WhisperForConditionalGeneration, encoder and decoder,
the stored dtype kept) and tokenizer.json. Prints one line per CTranslate2 variable (its transformers
names, shape and dtype), then the time taken and the process's peak resident memory: the weights are
streamed one variable at a time, so the peak stays near the imports' plus the largest variable.
"""
from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

from espnet_llm.speech.ctranslate2_checkpoint import convert_ctranslate2_whisper

MIB = 2**20


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (VmHWM)."""
    with open("/proc/self/status") as status:
        return int(re.search(r"VmHWM:\s+(\d+) kB", status.read())[1]) / 1024


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ct2_dir", type=Path, required=True, help="CTranslate2 Whisper directory (model.bin)")
    parser.add_argument("--output_dir", type=Path, required=True, help="transformers Whisper directory to write")
    args = parser.parse_args(argv)
    before = peak_rss_mib()
    start = time.time()
    report = convert_ctranslate2_whisper(args.ct2_dir, args.output_dir)
    seconds = time.time() - start
    for line in report:
        print(line)
    size = (args.ct2_dir / "model.bin").stat().st_size / MIB
    peak = peak_rss_mib()
    print(f"{len(report)} CTranslate2 variables of {args.ct2_dir}/model.bin ({size:.0f} MiB) -> {args.output_dir} "
          f"in {seconds:.1f} s; peak RSS {peak:.0f} MiB ({before:.0f} MiB after the imports, "
          f"+{peak - before:.0f} MiB converting)")


if __name__ == "__main__":
    main()
