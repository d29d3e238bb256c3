"""The figures the recipe prints after its data stages: utterances, speakers, hours and entities by
type per data directory, what a char token list holds, and the disk cost of dumped Whisper features.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from espnet_llm.data_prep.kaldi_dir import read_table
from espnet_llm.speech.framing import WHISPER_FRAMES_PER_SECOND
from espnet_llm.text.aishell_ner import ENTITY_TYPES, MARK_CHARS, parse_marked_lenient

SPECIAL_TOKENS = ("<blank>", "<unk>", "<sos/eos>")


@dataclass
class DataDirSummary:
    name: str
    utterances: int
    speakers: int
    hours: float | None  # None without utt2num_samples (before stage 3)
    entities: Counter = field(default_factory=Counter)


def summarize_data_dir(data_dir: str | Path, fs: int = 16000) -> DataDirSummary:
    data_dir = Path(data_dir)
    utt2spk = read_table(data_dir / "utt2spk").entries
    hours = None
    if (data_dir / "utt2num_samples").is_file():
        hours = sum(int(n) for n in read_table(data_dir / "utt2num_samples").entries.values()) / fs / 3600
    entities: Counter = Counter()
    if (data_dir / "entities").is_file():
        for value in read_table(data_dir / "entities").entries.values():
            entities.update(item.split(":", 1)[0] for item in value.split())
    elif (data_dir / "text_ner").is_file():
        for marked in read_table(data_dir / "text_ner").entries.values():
            entities.update(e.type for e in parse_marked_lenient(marked)[1])
    return DataDirSummary(str(data_dir), len(utt2spk), len(set(utt2spk.values())), hours, entities)


def format_table(summaries: list[DataDirSummary]) -> str:
    width = max([len("set")] + [len(s.name) for s in summaries])
    header = f"{'set':<{width}} {'utts':>8} {'spks':>5} {'hours':>8} " + " ".join(f"{t:>6}" for t in ENTITY_TYPES)
    rows = [header]
    for s in summaries:
        hours = f"{s.hours:8.3f}" if s.hours is not None else f"{'-':>8}"
        rows.append(f"{s.name:<{width}} {s.utterances:>8} {s.speakers:>5} {hours} "
                    + " ".join(f"{s.entities[t]:>6}" for t in ENTITY_TYPES))
    return "\n".join(rows)


def describe_token_list(path: str | Path) -> list[str]:
    """One line on the token list, plus a warning for every problem a model trained on it would have."""
    tokens = Path(path).read_text(encoding="utf-8").split("\n")
    tokens = [t for t in tokens if t]
    lines = [f"{path}: {len(tokens)} tokens, {sum(t in MARK_CHARS for t in tokens)} of them entity marks"]
    if tuple(tokens[:2]) != SPECIAL_TOKENS[:2] or tokens[-1:] != [SPECIAL_TOKENS[2]]:
        lines.append(f"WARNING: {path} does not start with <blank> <unk> and end with <sos/eos>")
    missing = sorted(MARK_CHARS - set(tokens))
    if missing:
        lines.append(f"WARNING: entity marks {' '.join(missing)} are not in the token list: the training text "
                     f"has no entity of that type, so the model cannot output one")
    return lines


def describe_feature_dumps(feats_dirs: list[str | Path]) -> str:
    """The arks' bytes of stage 6's dumps over the hours of audio they cover."""
    size = sum(ark.stat().st_size for d in feats_dirs for ark in Path(d).glob("parts/*/data/feats.*.ark"))
    frames = sum(int(n) for d in feats_dirs for n in read_table(Path(d) / "utt2num_frames").entries.values())
    hours = frames / WHISPER_FRAMES_PER_SECOND / 3600
    return f"{size / 1e6:.1f} MB of Whisper features for {hours:.3f} h of audio: {size / hours / 1e6:.1f} MB per hour"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m espnet_llm.data_prep.summary", description=__doc__.split("\n")[0])
    parser.add_argument("--fs", type=int, default=16000)
    parser.add_argument("--token_list", action="append", default=[], help="also describe this token list")
    parser.add_argument("--whisper_feats", action="append", default=[], help="a dump of stage 6, to add up")
    parser.add_argument("data_dirs", nargs="*")
    args = parser.parse_args(argv)
    if args.data_dirs:
        print(format_table([summarize_data_dir(d, args.fs) for d in args.data_dirs]))
    for token_list in args.token_list:
        print("\n".join(describe_token_list(token_list)))
    if args.whisper_feats:
        print(describe_feature_dumps(args.whisper_feats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
