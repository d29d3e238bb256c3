"""AISHELL-NER transcripts: entities marked in place, ``[person]``, ``(location)``, ``<organization>``.

Hand-written because no library reads this markup. Data preparation uses the strict parser
(malformed marks are an error to report); model output goes through the lenient one, which
never raises and lists what it had to repair.

    python -m espnet_llm.text.aishell_ner <text_ner> <text>   # a Kaldi text file without its entity marks
"""
from __future__ import annotations

import sys
import unicodedata
from dataclasses import dataclass

OPEN_TO_CLOSE = {"[": "]", "(": ")", "<": ">"}
OPEN_TO_TYPE = {"[": "PER", "(": "LOC", "<": "ORG"}
TYPE_TO_MARKS = {t: (o, OPEN_TO_CLOSE[o]) for o, t in OPEN_TO_TYPE.items()}
ENTITY_TYPES = ("PER", "LOC", "ORG")
MARK_CHARS = frozenset("[]()<>")


@dataclass(frozen=True)
class Entity:
    type: str  # PER, LOC or ORG
    text: str
    start: int  # character offsets into the unmarked transcript
    end: int


class MarkupError(ValueError):
    """A transcript whose entity marks are unbalanced, nested or empty."""


def normalize_transcript(text: str) -> str:
    """Remove all whitespace and map full-width Latin letters, digits and marks to half-width."""
    out = []
    for ch in text:
        if ch.isspace():
            continue
        if "\uff01" <= ch <= "\uff5e":  # the full-width ASCII block (ｔ, ｋ, ０-９, （, ［, ...)
            ch = unicodedata.normalize("NFKC", ch)
        out.append(ch)
    return "".join(out)


def strip_marks(text: str) -> str:
    return "".join(ch for ch in text if ch not in MARK_CHARS)


def parse_marked(text: str) -> tuple[str, list[Entity]]:
    """Split a marked transcript into its plain text and entities; raise MarkupError if malformed."""
    plain: list[str] = []
    entities: list[Entity] = []
    open_mark, open_at, open_col = None, 0, 0
    for col, ch in enumerate(text):
        if ch in OPEN_TO_CLOSE:
            if open_mark is not None:
                raise MarkupError(f"nested mark '{ch}' at column {col} inside '{open_mark}' opened at column {open_col}")
            open_mark, open_at, open_col = ch, len(plain), col
        elif ch in MARK_CHARS:  # a closing mark
            if open_mark is None:
                raise MarkupError(f"closing mark '{ch}' at column {col} without an opening mark")
            if OPEN_TO_CLOSE[open_mark] != ch:
                raise MarkupError(f"mark '{open_mark}' opened at column {open_col} closed by '{ch}' at column {col}")
            if len(plain) == open_at:
                raise MarkupError(f"empty entity '{open_mark}{ch}' at column {open_col}")
            entities.append(Entity(OPEN_TO_TYPE[open_mark], "".join(plain[open_at:]), open_at, len(plain)))
            open_mark = None
        else:
            plain.append(ch)
    if open_mark is not None:
        raise MarkupError(f"mark '{open_mark}' opened at column {open_col} is never closed")
    return "".join(plain), entities


def parse_marked_lenient(text: str) -> tuple[str, list[Entity], list[str]]:
    """Parse model output: never raises; drops marks it cannot pair and says which, in the problems list."""
    plain: list[str] = []
    entities: list[Entity] = []
    problems: list[str] = []
    open_mark, open_at = None, 0
    for col, ch in enumerate(text):
        if ch in OPEN_TO_CLOSE:
            if open_mark is not None:
                problems.append(f"nested '{ch}' at column {col}: earlier '{open_mark}' dropped")
            open_mark, open_at = ch, len(plain)
        elif ch in MARK_CHARS:
            if open_mark is None:
                problems.append(f"unpaired '{ch}' at column {col} dropped")
                continue
            if OPEN_TO_CLOSE[open_mark] != ch:
                problems.append(f"'{open_mark}' closed by '{ch}' at column {col}: both dropped")
                open_mark = None
                continue
            if len(plain) == open_at:
                problems.append(f"empty entity at column {col} dropped")
            else:
                entities.append(Entity(OPEN_TO_TYPE[open_mark], "".join(plain[open_at:]), open_at, len(plain)))
            open_mark = None
        else:
            plain.append(ch)
    if open_mark is not None:
        problems.append(f"'{open_mark}' never closed: dropped")
    return "".join(plain), entities, problems


def mark_entities(plain: str, entities: list[Entity]) -> str:
    """Inverse of parse_marked: write the marks back into the plain transcript."""
    out, pos = [], 0
    for ent in sorted(entities, key=lambda e: e.start):
        opening, closing = TYPE_TO_MARKS[ent.type]
        out += [plain[pos:ent.start], opening, plain[ent.start:ent.end], closing]
        pos = ent.end
    out.append(plain[pos:])
    return "".join(out)


def place_entities(text: str, entities: list[Entity]) -> tuple[list[Entity], list[Entity]]:
    """(placed, unplaced): the entities (of another copy of the transcript) found in ``text``, in order, with
    their offsets into ``text``; and those whose string it does not have after the previous one's end."""
    placed, unplaced, pos = [], [], 0
    for ent in sorted(entities, key=lambda e: e.start):
        at = text.find(ent.text, pos)
        if at < 0:
            unplaced.append(ent)
            continue
        placed.append(Entity(ent.type, ent.text, at, at + len(ent.text)))
        pos = at + len(ent.text)
    return placed, unplaced


def strip_marks_of_table(marked_table: str, plain_table: str) -> None:
    """Write a Kaldi text file (``<uttid> <marked transcript>`` lines) with the transcripts' marks removed."""
    with open(marked_table, encoding="utf-8", newline="") as marked, \
            open(plain_table, "w", encoding="utf-8", newline="") as plain:
        for line in marked:
            uttid, space, transcript = line.partition(" ")
            plain.write(uttid + space + strip_marks(transcript))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m espnet_llm.text.aishell_ner <text_ner> <text>")
    strip_marks_of_table(sys.argv[1], sys.argv[2])
