"""The contracts of this project's own data-directory tables, which Kaldi's tools do not know: ``text_ner`` and
``entities`` against ``text`` (AISHELL-NER's marks), ``utt2history`` against ``utt2spk``. Checked by
``kaldi_dir.validate_data_dir`` where the tables are present."""
from __future__ import annotations

from pathlib import Path

from espnet_llm.text.aishell_ner import MarkupError, parse_marked


def entities_field(entities) -> str:
    """An ``entities`` table value: ``PER:张三 LOC:北京``."""
    return " ".join(f"{e.type}:{e.text}" for e in entities)


def check_ner_tables(
    data_dir: Path, text_ner: dict[str, str], text: dict[str, str] | None, entities: dict[str, str] | None
) -> list[str]:
    """text_ner well marked, equal to text without its marks, its entities those of the entities table."""
    problems: list[str] = []
    for utt, marked in text_ner.items():
        try:
            plain, found = parse_marked(marked)
        except MarkupError as e:
            problems.append(f"{data_dir / 'text_ner'}: utterance {utt}: {e}")
            continue
        if text is not None and utt in text and text[utt] != plain:
            problems.append(f"{data_dir / 'text_ner'}: utterance {utt}: without marks '{plain}' differs from text '{text[utt]}'")
        if entities is not None and utt in entities and entities[utt] != entities_field(found):
            problems.append(f"{data_dir / 'entities'}: utterance {utt}: '{entities[utt]}' differs from the marks "
                            f"of text_ner '{entities_field(found)}'")
    return problems


def check_history(path: Path, utt2history: dict[str, str], utt2spk: dict[str, str]) -> list[str]:
    """Each history entry an earlier utterance of the same speaker, present here, oldest first."""
    problems: list[str] = []
    for utt, value in utt2history.items():
        previous = value.split()
        for prev in previous:
            if prev not in utt2spk:
                why = "is not in this directory"
            elif utt in utt2spk and utt2spk[prev] != utt2spk[utt]:
                why = f"belongs to speaker {utt2spk[prev]}, not {utt2spk[utt]}"
            elif prev >= utt:
                why = "does not come before it"
            else:
                continue
            problems.append(f"{path}: utterance {utt}: history entry {prev} {why}")
        if previous != sorted(previous):
            problems.append(f"{path}: utterance {utt}: history is not oldest first")
    return problems
