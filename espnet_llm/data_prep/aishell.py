"""Stage 1 of egs2/aishell_ner/llm1: AISHELL-1 audio + AISHELL-NER transcripts -> Kaldi data directories.

Input is the openslr 33 layout::

    data_aishell/wav/{train,dev,test}/<SPK>/<uttid>.wav   (or wav/<SPK>.tar.gz, unpacked here once)
    data_aishell/transcript/aishell_transcript_v0.8.txt   (<uttid> <word-segmented transcript>)

plus the AISHELL-NER transcripts (``<uttid> <transcript with [PER] (LOC) <ORG> marks>``), as one
combined file or as the train/dev/test files. For every set this writes ``wav.scp``, ``utt2spk``,
``spk2utt``, ``text`` (from the AISHELL transcript, normalized), ``text_ner`` (the normalized NER
transcript) and ``entities`` (``<uttid> PER:张三 LOC:北京``), all sorted by utterance id.

Bad input never stops the stage: audio without a transcript, a transcript without audio, malformed
marks, duplicate ids, a ``text`` that differs from ``text_ner`` without its marks, an empty transcript,
a line that is not valid UTF-8, a wav file that cannot be opened (a dangling symlink, a directory or FIFO
named .wav, a file name that is not UTF-8), a wav filed under another speaker's directory, a speaker
directory without wavs or that cannot be listed (a symlink loop), ids of audio and transcript that differ
only in case, and a speaker tarball that cannot be unpacked are each reported with file:line, path or
utterance id, counted in the summary, listed in ``<output_dir>/local/`` and skipped. Control and invisible
characters inside a transcript line (a stray CR, NUL, BEL, zero-width space, soft hyphen, a mid-line
byte-order mark) are removed, and counted and listed as such; lines end at LF (CRLF files read alike).

The sets are written to ``<output_dir>/<set>.tmp`` and renamed into place only when all are written, so a
stage 1 killed half-way leaves the previous data directories as they were.

It walks the tree with os.scandir and reads no audio, so the full AISHELL-1 size (141,600
utterances) takes seconds; ``python -m espnet_llm.benchmarks.data_prep`` measures it.
"""
from __future__ import annotations

import argparse
import os
import shutil
import stat
import sys
import tarfile
import time
import unicodedata
import urllib.error
import urllib.request
import zlib
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from espnet_llm.data_prep.table_contracts import entities_field
from espnet_llm.text.aishell_ner import ENTITY_TYPES, MarkupError, normalize_transcript, parse_marked

SETS = ("train", "dev", "test")
AISHELL_TRANSCRIPT = Path("transcript") / "aishell_transcript_v0.8.txt"
DATA_AISHELL_URL = "https://www.openslr.org/resources/33/data_aishell.tgz"
DATA_AISHELL_BYTES = 15582913665  # the size openslr serves; Kaldi's aishell recipe checks the same figure
WAV_HEADER_BYTES = 44
BYTES_PER_SECOND = 16000 * 2  # AISHELL-1 is 16 kHz 16-bit mono

# The kinds of bad input, in the order the summary lists them.
AUDIO_WITHOUT_TRANSCRIPT = "audio without transcript"
TRANSCRIPT_WITHOUT_AUDIO = "transcript without audio"
MALFORMED_MARKS = "malformed marks"
EMPTY_TRANSCRIPT = "empty transcript"
DUPLICATE_ID = "duplicate id"
TEXT_MISMATCH = "text differs from text_ner"
INVALID_UTF8 = "transcript line not UTF-8"
UNREADABLE_AUDIO = "unreadable wav file"
OTHER_SPEAKERS_DIRECTORY = "wav in another speaker's directory"
IDS_DIFFER_IN_CASE = "ids differ only in case"
SPEAKER_WITHOUT_AUDIO = "speaker directory without wavs"
UNREADABLE_SPEAKER = "speaker directory not listed"
BAD_TARBALL = "speaker tarball not unpacked"
INVISIBLE_CHARACTERS = "control or invisible characters removed"  # normalised, the line kept
PROBLEM_KINDS = (
    AUDIO_WITHOUT_TRANSCRIPT,
    TRANSCRIPT_WITHOUT_AUDIO,
    MALFORMED_MARKS,
    EMPTY_TRANSCRIPT,
    DUPLICATE_ID,
    TEXT_MISMATCH,
    INVALID_UTF8,
    UNREADABLE_AUDIO,
    OTHER_SPEAKERS_DIRECTORY,
    IDS_DIFFER_IN_CASE,
    SPEAKER_WITHOUT_AUDIO,
    UNREADABLE_SPEAKER,
    BAD_TARBALL,
    INVISIBLE_CHARACTERS,
)
KEPT = {INVISIBLE_CHARACTERS}  # kinds that repair an item instead of skipping it
BOM = "\ufeff"


class DataPrepError(RuntimeError):
    """A fatal problem: the corpus or the transcripts cannot be found or read at all."""


class ProblemReport:
    """Collects every skipped item by kind; prints the first few of each kind as they come."""

    def __init__(self, log_path: Path, max_printed_per_kind: int = 10):
        self.log_path = log_path
        self.max_printed_per_kind = max_printed_per_kind
        self.entries: dict[str, list[str]] = defaultdict(list)
        # Utterances already reported as lost (unreadable wav, undecodable line): their other half is not
        # reported again as audio without transcript or transcript without audio.
        self.lost_ids: set[str] = set()

    def add(self, kind: str, where: str, message: str, lost_id: str | None = None) -> None:
        if lost_id is not None:
            self.lost_ids.add(lost_id)
        # a file name may hold bytes that are not UTF-8 (os.fsdecode's surrogates): shown escaped, never fatal
        line = f"{kind}: {where}: {message}".encode("utf-8", "backslashreplace").decode("utf-8")
        self.entries[kind].append(line)
        count = len(self.entries[kind])
        if count <= self.max_printed_per_kind:
            print(f"WARNING: {line} ({'kept' if kind in KEPT else 'skipped'})", file=sys.stderr)
        elif count == self.max_printed_per_kind + 1:
            print(f"WARNING: more '{kind}' reports are listed in {self.log_path}", file=sys.stderr)

    def counts(self) -> dict[str, int]:
        return {kind: len(self.entries[kind]) for kind in PROBLEM_KINDS}

    def write(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        lines = [line for kind in PROBLEM_KINDS for line in self.entries[kind]]
        self.log_path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


@dataclass
class AudioFile:
    subset: str
    speaker: str
    path: str
    num_bytes: int


@dataclass
class TranscriptLine:
    text: str  # normalized: no whitespace, half-width Latin letters and digits
    where: str  # file:line


@dataclass
class Utterance:
    uttid: str
    speaker: str
    wav_path: str
    text: str
    text_ner: str
    entities: str  # "PER:张三 LOC:北京", possibly empty
    num_bytes: int


@dataclass
class SetSummary:
    utterances: int = 0
    speakers: int = 0
    seconds: float = 0.0  # estimated from the wav file sizes
    entities: Counter = field(default_factory=Counter)


@dataclass
class PrepSummary:
    sets: dict[str, SetSummary]
    problems: dict[str, int]
    elapsed_s: float


# ---------------------------------------------------------------- corpus on disk


def resolve_aishell_root(aishell_root: Path) -> Path:
    """Accept data_aishell itself or the directory holding it."""
    for candidate in (aishell_root, aishell_root / "data_aishell"):
        if (candidate / "wav").is_dir():
            return candidate
    raise DataPrepError(f"no AISHELL-1 corpus at {aishell_root}: expected {aishell_root}/wav/ (openslr 33 data_aishell)")


def _unpack_stamp(tarball: Path) -> Path:
    return tarball.with_name(f".{tarball.name}.unpacked")


def _unpack_one(tarball: Path) -> str | None:
    """Unpack into a temporary directory, then move the files into place; returns the error, if any.

    A truncated or corrupt tarball leaves nothing half-unpacked in wav/ and no stamp, so the next run
    tries it again from scratch.
    """
    staging = tarball.with_name(f".{tarball.name}.unpacking")
    shutil.rmtree(staging, ignore_errors=True)  # left by a run that was killed while unpacking
    try:
        with tarfile.open(tarball) as archive:
            archive.extractall(staging, filter="data")  # the data filter refuses paths leaving the directory
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        shutil.rmtree(staging, ignore_errors=True)
        return f"{type(error).__name__}: {error}"
    for directory, _, files in os.walk(staging):
        target = tarball.parent / Path(directory).relative_to(staging)
        target.mkdir(parents=True, exist_ok=True)
        for name in files:
            os.replace(Path(directory) / name, target / name)
    shutil.rmtree(staging)
    _unpack_stamp(tarball).touch()
    return None


def unpack_speaker_tarballs(wav_dir: Path, problems: ProblemReport, nj: int = 1) -> int:
    """Unpack the per-speaker wav/<SPK>.tar.gz of the openslr release once; returns how many were unpacked now.

    A tarball that cannot be unpacked is reported and its speaker skipped."""
    pending = [t for t in sorted(wav_dir.glob("*.tar.gz")) if not _unpack_stamp(t).exists()]
    if not pending:
        return 0
    if not os.access(wav_dir, os.W_OK):
        raise DataPrepError(f"{len(pending)} speaker tarballs in {wav_dir} need unpacking but the directory is not writable")
    print(f"unpacking {len(pending)} speaker tarballs in {wav_dir} with {nj} jobs", flush=True)
    start = time.time()
    unpacked = 0
    # Threads suffice: zlib and file writes release the GIL.
    with ThreadPoolExecutor(max_workers=max(1, nj)) as pool:
        for done, (tarball, error) in enumerate(zip(pending, pool.map(_unpack_one, pending)), 1):
            if error is None:
                unpacked += 1
            else:
                problems.add(BAD_TARBALL, str(tarball), f"{error}; its speaker is left out (tried again at the next run)")
            if done % 20 == 0 or done == len(pending):
                rate = done / max(time.time() - start, 1e-9)
                print(f"  unpacked {done}/{len(pending)} tarballs ({rate:.1f}/s)", flush=True)
    return unpacked


def scan_audio(wav_dir: Path, problems: ProblemReport) -> dict[str, AudioFile]:
    """Find wav/<set>/<SPK>/<uttid>.wav with os.scandir (no audio is opened)."""
    audio: dict[str, AudioFile] = {}
    for subset in SETS:
        set_dir = wav_dir / subset
        if not set_dir.is_dir():
            print(f"WARNING: no {set_dir}: the {subset} set will be empty", file=sys.stderr)
            continue
        with os.scandir(set_dir) as it:
            # a symlink first: is_dir() raises on a link loop (ELOOP), which the listing below reports
            speaker_dirs = sorted((e for e in it if e.is_symlink() or e.is_dir()), key=lambda e: e.name)
        for speaker_dir in speaker_dirs:
            try:
                with os.scandir(speaker_dir.path) as it:
                    wavs = sorted((e for e in it if e.name.lower().endswith(".wav")), key=lambda e: e.name)
            except OSError as error:  # a symlink loop (ELOOP), a link to nowhere, no permission
                problems.add(UNREADABLE_SPEAKER, speaker_dir.path, f"speaker {speaker_dir.name}: {error.strerror}")
                continue
            if not wavs:
                problems.add(SPEAKER_WITHOUT_AUDIO, speaker_dir.path, f"speaker {speaker_dir.name} has no .wav file")
            for wav in wavs:
                uttid = wav.name[:-4]
                found = audio_file(wav, uttid, subset, speaker_dir.name, problems)
                if found is None:
                    continue
                if uttid in audio:
                    problems.add(DUPLICATE_ID, wav.path, f"{uttid} also at {audio[uttid].path}; kept the first")
                    continue
                audio[uttid] = found
    return audio


def audio_file(wav: os.DirEntry, uttid: str, subset: str, speaker: str, problems: ProblemReport) -> AudioFile | None:
    """The wav file of ``uttid`` in ``speaker``'s directory, or None, reported, where it cannot be one."""
    try:
        uttid.encode("utf-8")
    except UnicodeEncodeError:
        problems.add(UNREADABLE_AUDIO, wav.path, "the file name is not UTF-8: no Kaldi table can name it",
                     lost_id=uttid)
        return None
    try:
        status = wav.stat()  # follows symlinks: a dangling one, or a loop, fails here
    except OSError as error:
        problems.add(UNREADABLE_AUDIO, wav.path, f"{uttid}: {error.strerror}", lost_id=uttid)
        return None
    if not stat.S_ISREG(status.st_mode):
        what = "a directory" if stat.S_ISDIR(status.st_mode) else "a FIFO" if stat.S_ISFIFO(status.st_mode) else \
            "not a regular file"
        problems.add(UNREADABLE_AUDIO, wav.path, f"{uttid}: {what}, not a wav file", lost_id=uttid)
        return None
    if speaker.casefold() not in uttid.casefold():  # AISHELL ids hold their speaker (BAC009S0002W0122 is S0002's)
        problems.add(OTHER_SPEAKERS_DIRECTORY, wav.path, f"{uttid} is filed under speaker {speaker}, whose id it does "
                     "not hold", lost_id=uttid)
        return None
    return AudioFile(subset, speaker, os.path.abspath(wav.path), status.st_size)


def read_transcripts(paths: list[Path], problems: ProblemReport) -> dict[str, TranscriptLine]:
    """Read ``<uttid> <transcript>`` files into one table; a repeated id is a duplicate, the first line wins.

    A byte-order mark is dropped at the start of every line, not only of the file: files joined with
    ``cat`` carry one in the middle."""
    table: dict[str, TranscriptLine] = {}
    for path in paths:
        if not path.is_file():
            raise DataPrepError(f"transcript file not found: {path}")
        try:
            with open(path, "rb") as f:
                # lines end at LF only (a CR inside a line is a stray character, removed below), CRLF alike
                raw_lines = [raw.removesuffix(b"\r") for raw in f.read().split(b"\n")]
        except OSError as error:
            raise DataPrepError(f"cannot read transcript file {path}: {error.strerror}") from None
        if raw_lines and not raw_lines[-1]:
            raw_lines.pop()
        for lineno, raw in enumerate(raw_lines, 1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                uttid = raw.split(maxsplit=1)[0].decode("utf-8", "replace") if raw.split() else ""
                problems.add(INVALID_UTF8, where, f"{uttid}: byte 0x{raw[error.start]:02x} at byte {error.start} "
                             "is not UTF-8", lost_id=uttid)
                continue
            line, removed = remove_invisible(line.lstrip(BOM))
            if removed:
                problems.add(INVISIBLE_CHARACTERS, where, f"{line.split(maxsplit=1)[0] if line.split() else ''}: "
                             f"removed {', '.join(removed)}")
            fields = line.split(maxsplit=1)
            if not fields:
                continue
            uttid = fields[0]
            if uttid in table:
                problems.add(DUPLICATE_ID, where, f"{uttid} already at {table[uttid].where}; kept the first")
                continue
            table[uttid] = TranscriptLine(normalize_transcript(fields[1] if len(fields) > 1 else ""), where)
    return table


def remove_invisible(line: str) -> tuple[str, list[str]]:
    """``line`` without control and format characters (Unicode Cc and Cf: CR, NUL, BEL, zero-width space, soft
    hyphen, byte-order mark...) but tabs, and the names of those removed, each once."""
    kept, removed = [], {}
    for ch in line:
        if ch != "\t" and unicodedata.category(ch) in ("Cc", "Cf"):
            removed[ch] = f"U+{ord(ch):04X} {unicodedata.name(ch, 'control')}"
        else:
            kept.append(ch)
    return "".join(kept), list(removed.values())


# ---------------------------------------------------------------- joining and writing


def join_utterances(
    audio: dict[str, AudioFile],
    transcript: dict[str, TranscriptLine],
    ner: dict[str, TranscriptLine],
    problems: ProblemReport,
) -> dict[str, list[Utterance]]:
    """Pair audio with both transcripts; every utterance that cannot be paired cleanly is reported and skipped."""
    by_set: dict[str, list[Utterance]] = {subset: [] for subset in SETS}
    # ids of the transcripts by their case-folded form: a wav named in another case is named as such
    folded = {uttid.casefold(): (uttid, line) for source in (ner, transcript) for uttid, line in source.items()
              if uttid not in audio}
    for uttid in sorted(audio):
        wav = audio[uttid]
        plain, marked = transcript.get(uttid), ner.get(uttid)
        if plain is None and marked is None and uttid.casefold() in folded:
            other, line = folded[uttid.casefold()]
            problems.add(IDS_DIFFER_IN_CASE, wav.path, f"{uttid} has no transcript line, but {line.where} has {other}: "
                         "ids that differ in case are different ids (rename the file or the line)", lost_id=other)
            continue
        if plain is None or marked is None:
            if uttid not in problems.lost_ids:
                missing = "the AISHELL transcript" if plain is None else "the AISHELL-NER transcripts"
                problems.add(AUDIO_WITHOUT_TRANSCRIPT, wav.path, f"{uttid} has no line in {missing}")
            continue
        if not plain.text or not marked.text:
            problems.add(EMPTY_TRANSCRIPT, (marked if plain.text else plain).where, f"{uttid} has an empty transcript")
            continue
        try:
            ner_plain, entities = parse_marked(marked.text)
        except MarkupError as error:
            problems.add(MALFORMED_MARKS, marked.where, f"{uttid}: {error}: {marked.text}")
            continue
        if ner_plain != plain.text:
            problems.add(TEXT_MISMATCH, marked.where, f"{uttid}: text '{plain.text}' ({plain.where}) vs text_ner without marks '{ner_plain}'")
            continue
        by_set[wav.subset].append(
            Utterance(
                uttid=uttid,
                speaker=wav.speaker,
                wav_path=wav.path,
                text=plain.text,
                text_ner=marked.text,
                entities=entities_field(entities),
                num_bytes=wav.num_bytes,
            )
        )
    for source in (transcript, ner):
        for uttid, line in source.items():
            if uttid not in audio and uttid not in problems.lost_ids:
                problems.add(TRANSCRIPT_WITHOUT_AUDIO, line.where, f"{uttid} has no wav file")
    return by_set


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def write_data_dir(data_dir: Path, utterances: list[Utterance]) -> SetSummary:
    """Write one Kaldi data directory; ``utterances`` is sorted by utterance id."""
    data_dir.mkdir(parents=True, exist_ok=True)
    spk2utt: dict[str, list[str]] = defaultdict(list)
    for utt in utterances:
        spk2utt[utt.speaker].append(utt.uttid)
    _write_lines(data_dir / "wav.scp", [f"{u.uttid} {u.wav_path}" for u in utterances])
    _write_lines(data_dir / "utt2spk", [f"{u.uttid} {u.speaker}" for u in utterances])
    _write_lines(data_dir / "spk2utt", [f"{spk} {' '.join(utts)}" for spk, utts in sorted(spk2utt.items())])
    _write_lines(data_dir / "text", [f"{u.uttid} {u.text}" for u in utterances])
    _write_lines(data_dir / "text_ner", [f"{u.uttid} {u.text_ner}" for u in utterances])
    _write_lines(data_dir / "entities", [f"{u.uttid} {u.entities}".rstrip() for u in utterances])
    entities = Counter(item.split(":", 1)[0] for u in utterances for item in u.entities.split())
    seconds = sum(max(u.num_bytes - WAV_HEADER_BYTES, 0) for u in utterances) / BYTES_PER_SECOND
    return SetSummary(len(utterances), len(spk2utt), seconds, entities)


def format_summary(summary: PrepSummary) -> str:
    rows = [("utterances", lambda s: f"{s.utterances:,}"), ("speakers", lambda s: f"{s.speakers:,}"),
            ("hours (wav sizes)", lambda s: f"{s.seconds / 3600:.2f}")]
    rows += [(f"entities {t}", lambda s, t=t: f"{s.entities[t]:,}") for t in ENTITY_TYPES]
    width = 2 + max(map(len, summary.problems))  # the longest kind of problem, indented
    lines = [f"{'stage 1 summary':<{width}}" + "".join(f"{subset:>10}" for subset in SETS)]
    for name, cell in rows:
        lines.append(f"{name:<{width}}" + "".join(f"{cell(summary.sets[subset]):>10}" for subset in SETS))
    lines.append(f"{'skipped (see warnings)':<{width}}{'count':>10}")
    lines += [f"  {kind:<{width - 2}}{count:>10,}" for kind, count in summary.problems.items()]
    return "\n".join(lines)


def prepare(
    aishell_root: Path,
    ner_transcripts: list[Path],
    output_dir: Path,
    nj: int = 1,
    max_printed_per_kind: int = 10,
) -> PrepSummary:
    """Stage 1: write ``output_dir/{train,dev,test}``; bad items are reported and skipped, never fatal."""
    start = time.time()
    root = resolve_aishell_root(Path(aishell_root))
    if not ner_transcripts:
        raise DataPrepError("no AISHELL-NER transcript given (--ner_transcripts)")
    problems = ProblemReport(Path(output_dir) / "local" / "stage1_problems.txt", max_printed_per_kind)
    unpack_speaker_tarballs(root / "wav", problems, nj)
    audio = scan_audio(root / "wav", problems)
    if not audio:
        raise DataPrepError(f"no wav files under {root}/wav/{{train,dev,test}}/<speaker>/")
    print(f"found {len(audio):,} wav files in {time.time() - start:.1f} s", flush=True)
    transcript = read_transcripts([root / AISHELL_TRANSCRIPT], problems)
    ner = read_transcripts([Path(p) for p in ner_transcripts], problems)
    by_set = join_utterances(audio, transcript, ner, problems)
    output_dir = Path(output_dir)
    for subset in SETS:  # what a killed stage 1 left
        shutil.rmtree(output_dir / f"{subset}.tmp", ignore_errors=True)
    sets = {subset: write_data_dir(output_dir / f"{subset}.tmp", by_set[subset]) for subset in SETS}
    problems.write()
    if not any(s.utterances for s in sets.values()):
        raise DataPrepError(f"no utterance survived the checks; see {problems.log_path}")
    for subset in SETS:  # every set written: now they replace the previous ones, each with one rename
        if (output_dir / subset).exists():
            shutil.rmtree(output_dir / subset)
        (output_dir / f"{subset}.tmp").rename(output_dir / subset)
    return PrepSummary(sets, problems.counts(), time.time() - start)


# ---------------------------------------------------------------- optional download


def download_data_aishell(download_dir: Path, url: str = DATA_AISHELL_URL, expected_bytes: int = DATA_AISHELL_BYTES) -> Path:
    """Fetch and unpack openslr 33 data_aishell.tgz into download_dir (resuming a partial file); returns data_aishell/."""
    download_dir = Path(download_dir)
    root = download_dir / "data_aishell"
    done_stamp = download_dir / ".data_aishell.unpacked"
    if done_stamp.exists():
        return root
    download_dir.mkdir(parents=True, exist_ok=True)
    archive = download_dir / "data_aishell.tgz"
    if not archive.exists() or archive.stat().st_size != expected_bytes:
        partial = archive.with_suffix(".tgz.part")
        have = partial.stat().st_size if partial.exists() else 0
        request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            with urllib.request.urlopen(request, timeout=60) as response, open(partial, "ab" if have else "wb") as out:
                if have and response.status != 206:  # the server ignored the range: start over
                    out.truncate(0)
                    have = 0
                last_print = time.time()
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    have += len(chunk)
                    if time.time() - last_print > 10:
                        print(f"  downloaded {have / 1e9:.2f} / {expected_bytes / 1e9:.2f} GB", flush=True)
                        last_print = time.time()
        except (urllib.error.URLError, OSError) as error:
            raise DataPrepError(
                f"cannot download {url}: {error}. Without a network, fetch data_aishell.tgz (openslr 33) "
                f"elsewhere, unpack it and set AISHELL in db.sh to its data_aishell directory"
            ) from error
        if partial.stat().st_size != expected_bytes:
            raise DataPrepError(f"{partial} has {partial.stat().st_size} bytes, expected {expected_bytes}: run again to resume")
        partial.rename(archive)
    print(f"unpacking {archive}", flush=True)
    with tarfile.open(archive) as tgz:
        tgz.extractall(download_dir, filter="data")
    done_stamp.touch()
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--aishell_root", type=Path, help="openslr 33 data_aishell directory (or its parent)")
    parser.add_argument("--ner_transcripts", type=Path, nargs="+", required=True,
                        help="AISHELL-NER transcript: the combined file or the train/dev/test files")
    parser.add_argument("--output_dir", type=Path, default=Path("data"))
    parser.add_argument("--nj", type=int, default=1, help="parallel jobs for unpacking speaker tarballs")
    parser.add_argument("--download_dir", type=Path, help="download data_aishell.tgz here first (needs a network)")
    args = parser.parse_args(argv)
    try:
        if args.download_dir is not None:
            downloaded = download_data_aishell(args.download_dir)
            args.aishell_root = args.aishell_root or downloaded
        if args.aishell_root is None:
            raise DataPrepError("give --aishell_root or --download_dir")
        summary = prepare(args.aishell_root, args.ner_transcripts, args.output_dir, args.nj)
    except DataPrepError as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
    print(format_summary(summary))
    total = sum(s.utterances for s in summary.sets.values())
    print(f"stage 1 wrote {total:,} utterances to {args.output_dir}/{{{','.join(SETS)}}} in {summary.elapsed_s:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
