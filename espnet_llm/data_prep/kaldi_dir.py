"""Kaldi-style data directories: read, validate, fix, copy, subset, split and combine them.

Hand-written because the espnet wheel ships none of Kaldi's ``utils/`` data-directory tools;
``egs2/aishell_ner/llm1/utils/*.sh`` are thin wrappers around the command line at the bottom.

A data directory holds one table per file, ``<id> <value>`` per line, sorted by id in byte order
(``LC_ALL=C sort``, which is Python's order for UTF-8 text). Per-utterance tables are listed in
``UTT_TABLES``; ``spk2utt`` is derived from ``utt2spk``. The project's own tables (``text_ner``,
``entities``, ``utt2history``) are checked against ``text``/``utt2spk`` by ``table_contracts``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from espnet_llm.data_prep.table_contracts import check_history, check_ner_tables

# Per-utterance tables, in the order reports name them.
UTT_TABLES = ("wav.scp", "utt2spk", "text", "text_ner", "entities", "utt2history", "utt2num_samples", "utt2dur")
# Tables whose value may be empty: a transcript can be empty (stage 4 removes it), an utterance can
# have no entities, the first utterance of a speaker has no history.
EMPTY_VALUE_OK = frozenset({"text", "text_ner", "entities", "utt2history"})
MAX_REPORTED = 20  # problems printed per check before "... and N more"


class DataDirError(RuntimeError):
    """A data directory that cannot be processed at all (missing required file, impossible split)."""


@dataclass
class Table:
    """One ``<id> <value>`` file: entries in file order, plus what was wrong with its lines."""

    path: Path
    entries: dict[str, str] = field(default_factory=dict)
    malformed: list[str] = field(default_factory=list)  # "file:line: why", line dropped
    duplicates: list[str] = field(default_factory=list)  # "file:line: ...", later copy dropped
    unsorted: str | None = None  # the first out-of-order line, if any


def read_table(path: str | Path, allow_empty_value: bool | None = None) -> Table:
    """Read ``<id> <value>`` lines; malformed and duplicate lines are dropped and described."""
    path = Path(path)
    if allow_empty_value is None:
        allow_empty_value = path.name in EMPTY_VALUE_OK
    table = Table(path)
    first_line: dict[str, int] = {}
    previous = None
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                table.malformed.append(f"{where}: not UTF-8 ({e.reason} at byte {e.start})")
                continue
            parts = line.strip().split(maxsplit=1)
            if not parts:
                table.malformed.append(f"{where}: empty line")
                continue
            key = parts[0]
            value = parts[1] if len(parts) > 1 else ""
            if not value and not allow_empty_value:
                table.malformed.append(f"{where}: '{key}' has no value")
                continue
            if key in table.entries:
                table.duplicates.append(f"{where}: duplicate id '{key}' (first on line {first_line[key]})")
                continue
            if previous is not None and key < previous and table.unsorted is None:
                table.unsorted = f"{where}: '{key}' comes after '{previous}'"
            first_line[key] = lineno
            table.entries[key] = value
            previous = key
    return table


def read_utt2spk(path: str | Path) -> dict[str, str]:
    """A strict ``<uttid> <speaker>`` reader: a malformed line is an error naming it."""
    utt2spk = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2:
                raise ValueError(f"{path}:{lineno}: expected '<uttid> <speaker>', got {line.rstrip()!r}")
            utt2spk[fields[0]] = fields[1]
    return utt2spk


def write_table(path: str | Path, entries: dict[str, str]) -> None:
    """Write a table sorted by id; an empty value leaves just the id on its line."""
    with open(path, "w", encoding="utf-8") as f:
        for key in sorted(entries):
            value = entries[key]
            f.write(f"{key} {value}\n" if value else f"{key}\n")


def spk2utt_from_utt2spk(utt2spk: dict[str, str]) -> dict[str, str]:
    grouped: dict[str, list[str]] = {}
    for utt in sorted(utt2spk):
        grouped.setdefault(utt2spk[utt], []).append(utt)
    return {spk: " ".join(utts) for spk, utts in grouped.items()}


def present_utt_tables(data_dir: Path) -> list[str]:
    return [name for name in UTT_TABLES if (data_dir / name).is_file()]


def _require(data_dir: Path, names: tuple[str, ...]) -> None:
    if not data_dir.is_dir():
        raise DataDirError(f"{data_dir}: no such data directory")
    missing = [n for n in names if not (data_dir / n).is_file()]
    if missing:
        raise DataDirError(f"{data_dir}: missing {', '.join(missing)}")


# ----------------------------------------------------------------------------------------------
# validate


def validate_data_dir(data_dir: str | Path, require_text: bool = True, check_audio_files: bool = True) -> list[str]:
    """Every problem that makes ``data_dir`` unusable, one string each (empty list = valid).

    Checks: required files; well-formed, unique, sorted lines; the same utterance ids in every
    per-utterance table; ``spk2utt`` equal to the one derived from ``utt2spk`` and each speaker's
    utterances contiguous in id order (what per-speaker splitting needs); ``text_ner`` well marked
    and equal to ``text`` without its marks; ``entities`` equal to the entities of ``text_ner``;
    ``utt2history`` naming earlier utterances of the same speaker present here; positive
    ``utt2num_samples``; audio files named in ``wav.scp`` existing (commands ending in ``|`` are not run).
    """
    data_dir = Path(data_dir)
    required = ("wav.scp", "utt2spk", "spk2utt") + (("text",) if require_text else ())
    _require(data_dir, required)
    problems: list[str] = []

    tables = {name: read_table(data_dir / name) for name in present_utt_tables(data_dir)}
    spk2utt = read_table(data_dir / "spk2utt")
    for table in [*tables.values(), spk2utt]:
        problems += table.malformed + table.duplicates
        if table.unsorted:
            problems.append(f"{table.unsorted}: not sorted (LC_ALL=C sort order)")

    utt_ids = set(tables["utt2spk"].entries)
    for name, table in tables.items():
        missing = utt_ids - set(table.entries)
        extra = set(table.entries) - utt_ids
        if missing:
            problems.append(f"{data_dir / name}: {len(missing)} utterance(s) of utt2spk missing, e.g. {min(missing)}")
        if extra:
            problems.append(f"{data_dir / name}: {len(extra)} utterance(s) not in utt2spk, e.g. {min(extra)}")

    utt2spk = tables["utt2spk"].entries
    for utt, spk in utt2spk.items():
        if len(spk.split()) != 1:
            problems.append(f"{data_dir / 'utt2spk'}: utterance {utt}: speaker '{spk}' is not one id")
    expected = spk2utt_from_utt2spk(utt2spk)
    if spk2utt.entries != expected:
        differing = sorted(set(expected) ^ set(spk2utt.entries) | {s for s in expected if spk2utt.entries.get(s) != expected[s]})
        problems.append(
            f"{data_dir / 'spk2utt'}: disagrees with utt2spk for {len(differing)} speaker(s), e.g. {differing[0]} "
            f"(regenerate it with utils/utt2spk_to_spk2utt.pl or utils/fix_data_dir.sh)"
        )
    seen_speakers, last_speaker = set(), None
    for utt in sorted(utt2spk):
        spk = utt2spk[utt]
        if spk != last_speaker:
            if spk in seen_speakers:
                problems.append(f"{data_dir / 'utt2spk'}: utterances of speaker {spk} are not contiguous in id order "
                                f"(at {utt}); give utterance ids a speaker prefix")
                break
            seen_speakers.add(spk)
            last_speaker = spk

    if "text_ner" in tables:
        entries = {name: tables[name].entries if name in tables else None for name in ("text", "entities")}
        problems += check_ner_tables(data_dir, tables["text_ner"].entries, entries["text"], entries["entities"])
    if "utt2history" in tables:
        problems += check_history(data_dir / "utt2history", tables["utt2history"].entries, utt2spk)
    if "utt2num_samples" in tables:
        for utt, value in tables["utt2num_samples"].entries.items():
            if not value.isdigit():
                problems.append(f"{data_dir / 'utt2num_samples'}: utterance {utt}: '{value}' is not a sample count")
    if check_audio_files:
        for utt, value in tables["wav.scp"].entries.items():
            if not value.endswith("|") and not os.path.isfile(value):
                problems.append(f"{data_dir / 'wav.scp'}: utterance {utt}: audio file {value} does not exist")
    return problems


# ----------------------------------------------------------------------------------------------
# fix, copy, subset, combine


def _dropped_lines_report(tables) -> list[str]:
    report: list[str] = []
    for table in tables:
        problems = table.malformed + table.duplicates
        if problems:
            report.append(f"{table.path}: dropped {len(table.malformed)} malformed and {len(table.duplicates)} duplicate line(s)")
            report += [f"  {p}" for p in problems[:MAX_REPORTED]]
            if len(problems) > MAX_REPORTED:
                report.append(f"  ... and {len(problems) - MAX_REPORTED} more")
    return report


def _load(data_dir: Path) -> tuple[dict[str, dict[str, str]], list[str]]:
    """The per-utterance tables of a directory, and the report of the lines that had to be dropped."""
    read = [read_table(data_dir / name) for name in present_utt_tables(data_dir)]
    return {t.path.name: t.entries for t in read}, _dropped_lines_report(read)


def _write_dir(dst: Path, tables: dict[str, dict[str, str]], keep: set[str]) -> int:
    """Write the given per-utterance tables restricted to ``keep`` plus spk2utt; returns the number of
    history references dropped because they point outside ``keep``."""
    dst.mkdir(parents=True, exist_ok=True)
    dropped_refs = 0
    for name, entries in tables.items():
        kept = {utt: value for utt, value in entries.items() if utt in keep}
        if name == "utt2history":
            for utt, value in kept.items():
                refs = value.split()
                present = [r for r in refs if r in keep]
                dropped_refs += len(refs) - len(present)
                kept[utt] = " ".join(present)
        write_table(dst / name, kept)
    write_table(dst / "spk2utt", spk2utt_from_utt2spk({u: s for u, s in tables["utt2spk"].items() if u in keep}))
    return dropped_refs


def fix_data_dir(data_dir: str | Path) -> list[str]:
    """Keep the utterances present in every per-utterance table, drop malformed and duplicate lines,
    sort every table, regenerate spk2utt. Originals go to ``<data_dir>/.backup/``.
    Returns the report lines (what was removed, with counts)."""
    data_dir = Path(data_dir)
    _require(data_dir, ("wav.scp", "utt2spk"))
    names = present_utt_tables(data_dir)
    read = {name: read_table(data_dir / name) for name in names}
    report = _dropped_lines_report(read.values())

    all_utts = set().union(*(t.entries for t in read.values()))
    keep = set.intersection(*(set(t.entries) for t in read.values()))
    for name, table in read.items():
        missing = all_utts - set(table.entries)
        if missing:
            report.append(f"{data_dir}: removed {len(missing)} utterance(s) missing from {name}, e.g. {min(missing)}")

    backup = data_dir / ".backup"
    backup.mkdir(exist_ok=True)
    for name in [*names, "spk2utt"]:
        if (data_dir / name).is_file():
            shutil.copy2(data_dir / name, backup / name)
    dropped_refs = _write_dir(data_dir, {n: t.entries for n, t in read.items()}, keep)
    if dropped_refs:
        report.append(f"{data_dir / 'utt2history'}: dropped {dropped_refs} reference(s) to removed utterances "
                      f"(re-run espnet_llm.data_prep.history to refill)")
    report.append(f"{data_dir}: kept {len(keep)} of {len(all_utts)} utterances")
    return report


def copy_data_dir(src: str | Path, dst: str | Path, utt_prefix: str = "", spk_prefix: str = "") -> list[str]:
    """Copy the tables of ``src`` to ``dst``, optionally prefixing utterance and speaker ids
    (speed perturbation's ``sp0.9-``). ``utt2history`` references are prefixed alike.
    Returns the report of dropped lines."""
    src, dst = Path(src), Path(dst)
    _require(src, ("wav.scp", "utt2spk"))
    tables, report = _load(src)
    renamed = {}
    for name, entries in tables.items():
        if name == "utt2spk":
            entries = {u: spk_prefix + s for u, s in entries.items()}
        elif name == "utt2history":
            entries = {u: " ".join(utt_prefix + r for r in v.split()) for u, v in entries.items()}
        renamed[name] = {utt_prefix + u: v for u, v in entries.items()}
    _write_dir(dst, renamed, set(renamed["utt2spk"]))
    return report


def subset_data_dir(src: str | Path, dst: str | Path, utt_ids=None, spk_ids=None) -> list[str]:
    """Write to ``dst`` the utterances of ``src`` named in ``utt_ids`` or spoken by ``spk_ids``.
    History references to utterances left out are dropped and counted. Returns report lines."""
    src, dst = Path(src), Path(dst)
    if (utt_ids is None) == (spk_ids is None):
        raise ValueError("give exactly one of utt_ids and spk_ids")
    _require(src, ("wav.scp", "utt2spk"))
    tables, report = _load(src)
    utt2spk = tables["utt2spk"]
    wanted = set(utt_ids) if utt_ids is not None else set(spk_ids)
    known = set(utt2spk) if utt_ids is not None else set(utt2spk.values())
    keep = {u for u in utt2spk if (u if utt_ids is not None else utt2spk[u]) in wanted}
    unknown = wanted - known
    if unknown:
        what = "utterance" if utt_ids is not None else "speaker"
        report.append(f"{src}: {len(unknown)} {what} id(s) of the list not found, e.g. {min(unknown)}")
    dropped_refs = _write_dir(dst, tables, keep)
    if dropped_refs:
        report.append(f"{dst / 'utt2history'}: dropped {dropped_refs} reference(s) to utterances outside the subset")
    report.append(f"{dst}: {len(keep)} of {len(utt2spk)} utterances")
    return report


def combine_data_dirs(dst: str | Path, srcs: list[str | Path]) -> list[str]:
    """Concatenate data directories. Tables missing from some source are left out (and reported);
    an utterance id in two sources is an error."""
    dst, srcs = Path(dst), [Path(s) for s in srcs]
    for src in srcs:
        _require(src, ("wav.scp", "utt2spk"))
    present = [set(present_utt_tables(s)) for s in srcs]
    common = [name for name in UTT_TABLES if all(name in p for p in present)]
    report = [f"{dst}: left out {name}: not in every source" for name in UTT_TABLES
              if name not in common and any(name in p for p in present)]
    combined: dict[str, dict[str, str]] = {name: {} for name in common}
    for src in srcs:
        tables, dropped = _load(src)
        report += dropped
        for name in common:
            entries = tables[name]
            clash = set(entries) & set(combined[name])
            if clash:
                raise DataDirError(f"{src / name}: {len(clash)} utterance id(s) also in another source, e.g. {min(clash)}")
            combined[name].update(entries)
    dst.mkdir(parents=True, exist_ok=True)
    _write_dir(dst, combined, set(combined["utt2spk"]))
    report.append(f"{dst}: {len(combined['utt2spk'])} utterances from {len(srcs)} directories")
    return report


# ----------------------------------------------------------------------------------------------
# split


def contiguous_partition(sizes: list[int], n: int) -> list[tuple[int, int]]:
    """Cut the sequence of groups (with ``sizes`` items each) into ``n`` non-empty contiguous
    runs of groups with item totals as even as possible; returns ``[start, end)`` group ranges."""
    if n < 1 or n > len(sizes):
        raise DataDirError(f"cannot split {len(sizes)} group(s) into {n} non-empty part(s)")
    cumulative = [0]
    for size in sizes:
        cumulative.append(cumulative[-1] + size)
    total = cumulative[-1]
    bounds = [0]
    for k in range(1, n):
        target = total * k / n
        lowest, highest = bounds[-1] + 1, len(sizes) - (n - k)  # leave one group for every later part
        bounds.append(min(range(lowest, highest + 1), key=lambda b: (abs(cumulative[b] - target), b)))
    bounds.append(len(sizes))
    return list(zip(bounds[:-1], bounds[1:]))


def split_keys(keys: list[str], n: int, key2group: dict[str, str] | None = None) -> list[list[str]]:
    """Split ``keys`` (in their order) into ``n`` contiguous parts; with ``key2group`` the keys of a
    group (speaker) stay in one part, so its keys must be contiguous."""
    groups: list[list[str]] = []
    last = object()
    for key in keys:
        group = key2group[key] if key2group is not None else key
        if key2group is None or group != last:
            groups.append([])
        groups[-1].append(key)
        last = group
    if key2group is not None and len({key2group[g[0]] for g in groups}) != len(groups):
        raise DataDirError("the keys of a speaker are not contiguous; sort by utterance id with speaker-prefixed ids")
    return [[k for g in groups[a:b] for k in g] for a, b in contiguous_partition([len(g) for g in groups], n)]


def split_data_dir(data_dir: str | Path, n: int, per_utt: bool = False) -> list[Path]:
    """Write ``<data_dir>/split<n>[utt]/<1..n>``: per speaker (default, keeping every speaker's
    utterances and their history together) or per utterance (history references that cross parts
    are then dropped: split per speaker when history matters). The directory must be valid
    (run fix_data_dir first): a malformed line is an error here, not a silent loss."""
    data_dir = Path(data_dir)
    _require(data_dir, ("wav.scp", "utt2spk"))
    tables, dropped = _load(data_dir)
    if dropped:
        raise DataDirError("\n".join(dropped))
    utt2spk = tables["utt2spk"]
    parts = split_keys(sorted(utt2spk), n, None if per_utt else utt2spk)
    root = data_dir / f"split{n}{'utt' if per_utt else ''}"
    out = []
    for index, part in enumerate(parts, 1):
        _write_dir(root / str(index), tables, set(part))
        out.append(root / str(index))
    return out


def split_scp(scp: str | Path, outputs: list[str | Path], utt2spk: str | Path | None = None) -> None:
    """Split one table into contiguous, even parts (one per output file), keeping speakers whole
    when ``utt2spk`` is given, like Kaldi's split_scp.pl."""
    table = read_table(scp, allow_empty_value=True)
    if table.malformed or table.duplicates:
        raise DataDirError("\n".join(table.malformed + table.duplicates))
    key2group = read_table(utt2spk).entries if utt2spk else None
    keys = list(table.entries)
    if key2group is not None:
        missing = [k for k in keys if k not in key2group]
        if missing:
            raise DataDirError(f"{scp}: {len(missing)} id(s) not in {utt2spk}, e.g. {missing[0]}")
    for part, out in zip(split_keys(keys, len(outputs), key2group), outputs):
        with open(out, "w", encoding="utf-8") as f:
            for key in part:
                value = table.entries[key]
                f.write(f"{key} {value}\n" if value else f"{key}\n")


# ----------------------------------------------------------------------------------------------
# command line (the utils/*.sh wrappers)


def _read_id_list(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.split()[0] for line in f if line.strip()]


def _print_report(lines: list[str]) -> None:
    for line in lines:
        print(line, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m espnet_llm.data_prep.kaldi_dir", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("validate", help="check a data directory; exit 1 listing the problems")
    p.add_argument("data_dir")
    p.add_argument("--no-text", "--no_text", dest="require_text", action="store_false")
    p.add_argument("--no-audio-check", "--no_audio_check", dest="check_audio_files", action="store_false")

    p = commands.add_parser("fix", help="keep utterances present in every table, sort, regenerate spk2utt")
    p.add_argument("data_dir")

    p = commands.add_parser("copy", help="copy a data directory, optionally prefixing ids")
    p.add_argument("--utt-prefix", "--utt_prefix", default="")
    p.add_argument("--spk-prefix", "--spk_prefix", default="")
    p.add_argument("src")
    p.add_argument("dst")

    p = commands.add_parser("subset", help="copy the utterances of a list (or of a speaker list)")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--utt-list", "--utt_list")
    group.add_argument("--spk-list", "--spk_list")
    p.add_argument("src")
    p.add_argument("dst")

    p = commands.add_parser("combine", help="concatenate data directories")
    p.add_argument("dst")
    p.add_argument("srcs", nargs="+")

    p = commands.add_parser("split", help="split into <data_dir>/split<N>[utt]/<1..N>")
    p.add_argument("--per-utt", "--per_utt", action="store_true")
    p.add_argument("data_dir")
    p.add_argument("num_parts", type=int)

    p = commands.add_parser("split-scp", help="split one table into the given output files")
    p.add_argument("--utt2spk", default=None)
    p.add_argument("scp")
    p.add_argument("outputs", nargs="+")

    p = commands.add_parser("split-keys", help="split one table into <prefix>.1.scp ... <prefix>.<N>.scp")
    p.add_argument("scp")
    p.add_argument("num_parts", type=int)
    p.add_argument("prefix")

    p = commands.add_parser("utt2spk-to-spk2utt", help="read utt2spk (file or stdin), write spk2utt to stdout")
    p.add_argument("utt2spk", nargs="?", default="/dev/stdin")

    args = parser.parse_args(argv)
    try:
        if args.command == "validate":
            problems = validate_data_dir(args.data_dir, args.require_text, args.check_audio_files)
            if problems:
                _print_report(problems[:MAX_REPORTED])
                if len(problems) > MAX_REPORTED:
                    print(f"... and {len(problems) - MAX_REPORTED} more", file=sys.stderr)
                print(f"validate_data_dir: {args.data_dir}: {len(problems)} problem(s)", file=sys.stderr)
                return 1
            utt2spk = read_table(Path(args.data_dir) / "utt2spk").entries
            print(f"validate_data_dir: {args.data_dir}: OK ({len(utt2spk)} utterances, "
                  f"{len(set(utt2spk.values()))} speakers)", file=sys.stderr)
        elif args.command == "fix":
            _print_report(fix_data_dir(args.data_dir))
        elif args.command == "copy":
            _print_report(copy_data_dir(args.src, args.dst, args.utt_prefix, args.spk_prefix))
        elif args.command == "subset":
            ids = _read_id_list(args.utt_list or args.spk_list)
            _print_report(subset_data_dir(args.src, args.dst, utt_ids=ids if args.utt_list else None,
                                          spk_ids=ids if args.spk_list else None))
        elif args.command == "combine":
            _print_report(combine_data_dirs(args.dst, args.srcs))
        elif args.command == "split":
            split_data_dir(args.data_dir, args.num_parts, args.per_utt)
        elif args.command == "split-scp":
            split_scp(args.scp, args.outputs, args.utt2spk)
        elif args.command == "split-keys":
            split_scp(args.scp, [f"{args.prefix}.{n}.scp" for n in range(1, args.num_parts + 1)])
        elif args.command == "utt2spk-to-spk2utt":
            table = read_table(args.utt2spk, allow_empty_value=False)
            if table.malformed or table.duplicates:
                raise DataDirError("\n".join(table.malformed + table.duplicates))
            for spk, utts in spk2utt_from_utt2spk(table.entries).items():
                sys.stdout.write(f"{spk} {utts}\n")
    except (DataDirError, OSError) as e:
        print(f"{parser.prog} {args.command}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
