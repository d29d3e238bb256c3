"""A check of a training config that ESPnet leaves to the first optimiser step: numbers that YAML read as text.

PyYAML follows YAML 1.1, where ``2e-3`` (no dot) is not a float but the string "2e-3"; ESPnet passes it on and
torch fails at the first step with a TypeError naming neither the file nor the key. The dry run now refuses it.
"""
from __future__ import annotations

import argparse
import re

NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def numbers_as_text(args: argparse.Namespace) -> list[str]:
    """``<section> <key>: '<text>'`` of every value of a ``*_conf`` section that is a number written as text."""
    found = []
    for section, conf in sorted(vars(args).items()):
        if section.endswith("_conf") and isinstance(conf, dict):
            found += [f"{section} {key}: {value!r}" for key, value in conf.items()
                      if isinstance(value, str) and NUMBER.match(value.strip())]
    return found


def check_numbers(args: argparse.Namespace) -> None:
    found = numbers_as_text(args)
    if found:
        config = getattr(args, "config", None) or "the training config"
        raise ValueError(
            f"{config}: {'; '.join(found)}: text, not a number, to YAML (PyYAML reads 2e-3 as a string): write it "
            "with a dot and a signed exponent (2.0e-3) or as a decimal (0.002)"
        )
