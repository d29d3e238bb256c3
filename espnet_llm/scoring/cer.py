"""Character error rate the ESPnet way: trn files, sclite, and ESPnet's result tables.

The reference and hypothesis are Kaldi ``text`` files (``<uttid> <transcript>``). Both go through
the same normalisation (whitespace removed, full-width Latin to half-width, entity marks stripped)
and are split into characters, written as ESPnet's trn lines ``<c h a r s>\\t(<spk>-<uttid>)``, and
scored by ``sclite -r ref.trn trn -h hyp.trn trn -i rm -o all stdout`` into ``result.txt``.
Where sclite is not installed, or fails, ``alignment.py`` gives the same counts (sclite's costs and
tie breaking) and a ``result.txt`` with the same Sum/Avg line.

A reference utterance without a hypothesis is scored as an empty hypothesis (all deleted) and
listed; a hypothesis without a reference is listed and not scored.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from espnet_llm.data_prep.kaldi_dir import read_utt2spk
from espnet_llm.scoring.alignment import CORRECT, DELETION, INSERTION, SUBSTITUTION, align, count_errors
from espnet_llm.text.aishell_ner import normalize_transcript, strip_marks

log = logging.getLogger(__name__)

ESPNET_TABLE_HEADER = "|dataset|Snt|Wrd|Corr|Sub|Del|Ins|Err|S.Err|\n|---|---|---|---|---|---|---|---|---|"
# Debian's sctk puts sclite here and only a `sctk` dispatcher on PATH
SCLITE_CANDIDATES = ("sclite", "/usr/lib/sctk/bin/sclite")
BOM = "\ufeff"


class ScoringInputError(ValueError):
    """A reference or hypothesis file that cannot be scored; the message names the file and line."""


class ScliteError(RuntimeError):
    """sclite ran but gave no counts."""


@dataclass
class ErrorCounts:
    sentences: int = 0
    words: int = 0  # reference tokens (characters)
    correct: int = 0
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    sentence_errors: int = 0

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    def add_utterance(self, correct: int, substitutions: int, deletions: int, insertions: int) -> None:
        self.sentences += 1
        self.words += correct + substitutions + deletions
        self.correct += correct
        self.substitutions += substitutions
        self.deletions += deletions
        self.insertions += insertions
        self.sentence_errors += int(substitutions + deletions + insertions > 0)

    def percentages(self) -> dict[str, float]:
        """sclite's percentages: of reference words, and of sentences for S.Err."""
        def pct(x: int, total: int) -> float:
            return 100.0 * x / total if total else 0.0

        return {
            "Corr": pct(self.correct, self.words),
            "Sub": pct(self.substitutions, self.words),
            "Del": pct(self.deletions, self.words),
            "Ins": pct(self.insertions, self.words),
            "Err": pct(self.errors, self.words),
            "S.Err": pct(self.sentence_errors, self.sentences),
        }

    @property
    def error_rate(self) -> float:
        return self.percentages()["Err"]

    def table_row(self, dataset: str) -> str:
        """One row of ESPnet's |dataset|Snt|Wrd|Corr|Sub|Del|Ins|Err|S.Err| table (sclite's %.1f)."""
        cells = [dataset, str(self.sentences), str(self.words)]
        cells += [f"{v:.1f}" for v in self.percentages().values()]
        return "|" + "|".join(cells) + "|"


def markdown_table(rows: list[tuple[str, ErrorCounts]]) -> str:
    return "\n".join([ESPNET_TABLE_HEADER] + [counts.table_row(name) for name, counts in rows])


@dataclass
class CerResult:
    counts: ErrorCounts
    backend: str  # "sclite" or "fallback"
    missing_hypotheses: list[str] = field(default_factory=list)
    extra_hypotheses: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "backend": self.backend,
            "counts": asdict(self.counts),
            "percent": self.counts.percentages(),
            "missing_hypotheses": self.missing_hypotheses,
            "extra_hypotheses": self.extra_hypotheses,
        }

    @classmethod
    def from_json(cls, data: dict) -> "CerResult":
        return cls(ErrorCounts(**data["counts"]), data["backend"],
                   data["missing_hypotheses"], data["extra_hypotheses"])


def read_numbered_text(path: str | Path) -> dict[str, tuple[int, str]]:
    """uttid -> (line number, transcript) of ``<uttid> <transcript>`` lines.

    A repeated id or a line that is not UTF-8 is an error naming the file and line; a byte-order mark at
    the start of any line (files joined with ``cat``) is dropped."""
    texts: dict[str, tuple[int, str]] = {}
    with open(path, "rb") as f:
        raw_lines = f.read().splitlines()
    for lineno, raw in enumerate(raw_lines, 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ScoringInputError(f"{path}:{lineno}: byte 0x{raw[error.start]:02x} at byte {error.start} is not UTF-8") from None
        parts = line.lstrip(BOM).split(maxsplit=1)
        if not parts:
            continue
        if parts[0] in texts:
            raise ScoringInputError(f"{path}:{lineno}: utterance id {parts[0]} appears twice (first at line {texts[parts[0]][0]})")
        texts[parts[0]] = (lineno, parts[1] if len(parts) > 1 else "")
    return texts


def read_kaldi_text(path: str | Path) -> dict[str, str]:
    """``<uttid> <transcript>`` lines (the transcript may be empty); a repeated id is an error."""
    return {uttid: text for uttid, (_, text) in read_numbered_text(path).items()}


def cer_tokens(transcript: str) -> list[str]:
    """The characters scored for CER: normalised as the references are, entity marks removed."""
    return list(strip_marks(normalize_transcript(transcript)))


def trn_line(tokens: list[str], speaker: str, uttid: str) -> str:
    return " ".join(tokens) + f"\t({speaker}-{uttid})\n"


def find_sclite() -> str | None:
    for candidate in SCLITE_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


_SCLITE_SUM = re.compile(
    r"^\s*\|\s*Sum\s*\|\s*(\d+)\s+(\d+)\s*\|\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s*\|", re.M
)


def parse_sclite_counts(result_txt: str) -> ErrorCounts:
    """Read the counts (not the percentages) from the 'Sum' line of sclite's count summary."""
    match = _SCLITE_SUM.search(result_txt)
    if match is None:
        raise ScliteError("no 'Sum' line of counts in sclite's output (was it run with -o all or -o sum?)")
    snt, wrd, corr, sub, dele, ins, _err, serr = map(int, match.groups())
    return ErrorCounts(snt, wrd, corr, sub, dele, ins, serr)


_UTTERANCE_SCORES = re.compile(r"^id: (\(.*\))\nScores: \(#C #S #D #I\) (\d+) (\d+) (\d+) (\d+)[ \t]*$", re.M)


def read_utterance_counts(result_txt: str | Path) -> dict[str, tuple[int, int, int, int]]:
    """trn id -> (correct, substitutions, deletions, insertions) of every utterance of a ``result.txt``.

    sclite's alignment dump (``-o all``) and the fallback's report write the same ``id:`` and ``Scores:`` lines,
    so one reader serves both backends. Ids are lower-cased because sclite prints them so: the two backends'
    ids then agree."""
    text = Path(result_txt).read_text(encoding="utf-8")
    return {m[1].lower(): (int(m[2]), int(m[3]), int(m[4]), int(m[5])) for m in _UTTERANCE_SCORES.finditer(text)}


def run_sclite(sclite: str, ref_trn: Path, hyp_trn: Path, result_txt: Path) -> ErrorCounts:
    cmd = [sclite, "-r", str(ref_trn), "trn", "-h", str(hyp_trn), "trn", "-i", "rm", "-o", "all", "stdout"]
    proc = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8")
    result_txt.write_text(proc.stdout, encoding="utf-8")
    if proc.returncode != 0:
        raise ScliteError(f"sclite failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return parse_sclite_counts(proc.stdout)


def _fallback_report(utterances: list[tuple[str, list[str], list[str]]], counts: ErrorCounts) -> str:
    """result.txt of the fallback: sclite's Sum/Avg summary line, then one alignment per utterance."""
    p = counts.percentages()
    lines = [
        "Scored without sclite by espnet_llm.scoring.alignment, with sclite's costs and tie-breaking.",
        "",
        "| SPKR   | # Snt # Wrd | Corr    Sub    Del    Ins    Err  S.Err |",
        f"| Sum/Avg| {counts.sentences:4d} {counts.words:6d} | "
        + " ".join(f"{p[k]:6.1f}" for k in ("Corr", "Sub", "Del", "Ins", "Err", "S.Err")) + " |",
        f"| Sum    | {counts.sentences:4d} {counts.words:6d} | "
        + " ".join(f"{x:6d}" for x in (counts.correct, counts.substitutions, counts.deletions,
                                        counts.insertions, counts.errors, counts.sentence_errors)) + " |",
        "",
    ]
    for trn_id, ref, hyp in utterances:
        ref_row, hyp_row, eval_row = [], [], []
        pairs = align(ref, hyp)
        scores = [sum(p.op == op for p in pairs) for op in (CORRECT, SUBSTITUTION, DELETION, INSERTION)]
        for pair in pairs:
            r = ref[pair.ref_index] if pair.ref_index is not None else "*"
            h = hyp[pair.hyp_index] if pair.hyp_index is not None else "*"
            width = max(len(r), len(h))
            ref_row.append(r.ljust(width))
            hyp_row.append(h.ljust(width))
            eval_row.append(("" if pair.op == CORRECT else pair.op).ljust(width))
        lines += [
            f"id: {trn_id}",
            "Scores: (#C #S #D #I) " + " ".join(map(str, scores)),
            "REF:  " + " ".join(ref_row),
            "HYP:  " + " ".join(hyp_row),
            "Eval: " + " ".join(eval_row),
            "",
        ]
    return "\n".join(lines)


def score_cer(
    ref_text: str | Path,
    hyp_text: str | Path,
    out_dir: str | Path,
    utt2spk: str | Path | None = None,
    backend: str = "auto",
) -> CerResult:
    """Score ``hyp_text`` against ``ref_text``; write ref.trn, hyp.trn, result.txt, result.json.

    ``utt2spk`` defaults to the one beside ``ref_text`` (speaker = utterance id without one).
    ``backend``: "auto" (sclite where installed and working, else the fallback), "sclite" or "fallback".
    """
    if backend not in ("auto", "sclite", "fallback"):
        raise ValueError(f"backend must be auto, sclite or fallback, not {backend!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    refs = read_kaldi_text(ref_text)
    hyps = read_kaldi_text(hyp_text)
    if utt2spk is None and (Path(ref_text).parent / "utt2spk").exists():
        utt2spk = Path(ref_text).parent / "utt2spk"
    speakers = read_utt2spk(utt2spk) if utt2spk else {}

    missing = [u for u in refs if u not in hyps]
    extra = [u for u in hyps if u not in refs]
    if missing:
        log.warning("%s: %d of %d reference utterances have no hypothesis, scored as all deleted: %s%s",
                    hyp_text, len(missing), len(refs), " ".join(missing[:10]), " ..." if len(missing) > 10 else "")
    if extra:
        log.warning("%s: %d hypotheses have no reference and are not scored: %s%s",
                    hyp_text, len(extra), " ".join(extra[:10]), " ..." if len(extra) > 10 else "")

    utterances = []  # (trn id, ref tokens, hyp tokens), in reference order
    with open(out_dir / "ref.trn", "w", encoding="utf-8") as ref_trn, \
            open(out_dir / "hyp.trn", "w", encoding="utf-8") as hyp_trn:
        for uttid in sorted(refs):
            speaker = speakers.get(uttid, uttid)
            ref_tokens = cer_tokens(refs[uttid])
            hyp_tokens = cer_tokens(hyps.get(uttid, ""))
            ref_trn.write(trn_line(ref_tokens, speaker, uttid))
            hyp_trn.write(trn_line(hyp_tokens, speaker, uttid))
            utterances.append((f"({speaker}-{uttid})", ref_tokens, hyp_tokens))

    sclite = find_sclite() if backend != "fallback" else None
    if backend == "sclite" and sclite is None:
        raise FileNotFoundError("sclite not found: install Debian's sctk (apt-get install -y sctk)")
    counts = None
    if sclite:
        try:
            counts = run_sclite(sclite, out_dir / "ref.trn", out_dir / "hyp.trn", out_dir / "result.txt")
        except (ScliteError, OSError) as error:
            if backend == "sclite":
                raise
            log.warning("%s does not work, scoring with the fallback aligner instead: %s", sclite, error)
            sclite = None
    if counts is None:
        counts = ErrorCounts()
        for _, ref_tokens, hyp_tokens in utterances:
            counts.add_utterance(*count_errors(ref_tokens, hyp_tokens))
        (out_dir / "result.txt").write_text(_fallback_report(utterances, counts), encoding="utf-8")

    result = CerResult(counts, "sclite" if sclite else "fallback", missing, extra)
    with open(out_dir / "result.json", "w", encoding="utf-8") as f:
        json.dump(result.to_json(), f, ensure_ascii=False, indent=1)
    return result
