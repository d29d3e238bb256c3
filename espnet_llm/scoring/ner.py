"""Named-entity scores of entity-marked transcripts (AISHELL-NER markup), with an error breakdown.

The metric. AISHELL-NER's own definition is not published in a form we could reach; this is ours.
Per utterance, the reference and hypothesis entities are multisets of (type, text) pairs; positions
do not count, so an entity recognised elsewhere in the sentence, or with its context misrecognised,
is still correct. True positives are the size of the multiset intersection, summed over
utterances; precision = TP / hypothesis entities, recall = TP / reference entities, F1 their
harmonic mean, micro-averaged over all entities and per type (PER, LOC, ORG).

The error breakdown (the paper's four kinds). After the correct entities are taken out, the
remaining reference and hypothesis entities of an utterance are paired, greedily, best first:
  1. equal text, different type (anywhere in the sentence);
  2. overlapping spans: the hypothesis transcript is aligned to the reference transcript
     character by character (sclite's alignment) and a pair overlaps when a hypothesis entity
     character is aligned to a character of the reference entity; more overlap pairs first.
A pair with a different type is a *wrong type* error (whatever its text); a pair of the same
type is a *wrong text* error. An unpaired reference entity is *omitted*; an unpaired
hypothesis entity is a *false alarm*. So, per type and in total,
  reference entities  = correct + wrong text + wrong type + omitted     (by reference type)
  hypothesis entities = correct + wrong text + wrong type + false alarm (false alarm by hypothesis type)

Hypotheses are model output and go through the lenient parser: utterances whose marks had to be
repaired are counted and listed. A missing hypothesis is scored as an empty one and listed.
A malformed reference is reported with its file and line, counted, and left out.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from espnet_llm.scoring.alignment import CORRECT, SUBSTITUTION, align
from espnet_llm.scoring.cer import read_numbered_text
from espnet_llm.text.aishell_ner import (
    ENTITY_TYPES,
    Entity,
    MarkupError,
    normalize_transcript,
    parse_marked,
    parse_marked_lenient,
)

log = logging.getLogger(__name__)

OMITTED, WRONG_TEXT, WRONG_TYPE, FALSE_ALARM = "omitted", "wrong_text", "wrong_type", "false_alarm"
ERROR_KINDS = (OMITTED, WRONG_TEXT, WRONG_TYPE, FALSE_ALARM)
ERROR_NAMES = {
    OMITTED: "omitted entity",
    WRONG_TEXT: "entity with wrong text",
    WRONG_TYPE: "wrong type",
    FALSE_ALARM: "false alarm",
}
NAMED_IN_LOG = 5  # utterance ids a warning names (a console line); result.json lists every one


@dataclass(frozen=True)
class EntityError:
    kind: str  # one of ERROR_KINDS
    ref: Entity | None
    hyp: Entity | None


@dataclass
class UtteranceScore:
    correct: list[Entity]  # reference entities matched exactly
    errors: list[EntityError]


def _overlap(ref_entity: Entity, hyp_entity: Entity, ref_index_of_hyp: list[int | None]) -> int:
    return sum(
        1
        for j in range(hyp_entity.start, hyp_entity.end)
        if ref_index_of_hyp[j] is not None and ref_entity.start <= ref_index_of_hyp[j] < ref_entity.end
    )


def score_utterance(ref_plain: str, ref_entities: list[Entity], hyp_plain: str,
                    hyp_entities: list[Entity]) -> UtteranceScore:
    """Exact multiset matches, then the error of every other entity (see the module docstring)."""
    ref_index_of_hyp: list[int | None] = [None] * len(hyp_plain)
    if ref_entities and hyp_entities:
        for pair in align(list(ref_plain), list(hyp_plain)):
            if pair.op in (CORRECT, SUBSTITUTION):
                ref_index_of_hyp[pair.hyp_index] = pair.ref_index

    candidates = []  # (sort key, ref index, hyp index, exact)
    for i, r in enumerate(ref_entities):
        for j, h in enumerate(hyp_entities):
            overlap = _overlap(r, h, ref_index_of_hyp)
            if r.text == h.text and r.type == h.type:
                rank = 0
            elif r.text == h.text:
                rank = 1
            elif overlap > 0:
                rank = 2
            else:
                continue
            candidates.append(((rank, -overlap, r.start, h.start), i, j, rank == 0))
    # all exact pairs come first, and within one (type, text) any pairing is complete, so the
    # number of exact pairs is the multiset intersection
    candidates.sort()

    used_ref, used_hyp = set(), set()
    correct, errors = [], []
    for _, i, j, exact in candidates:
        if i in used_ref or j in used_hyp:
            continue
        used_ref.add(i)
        used_hyp.add(j)
        r, h = ref_entities[i], hyp_entities[j]
        if exact:
            correct.append(r)
        else:
            errors.append(EntityError(WRONG_TYPE if r.type != h.type else WRONG_TEXT, r, h))
    errors += [EntityError(OMITTED, r, None) for i, r in enumerate(ref_entities) if i not in used_ref]
    errors += [EntityError(FALSE_ALARM, None, h) for j, h in enumerate(hyp_entities) if j not in used_hyp]
    return UtteranceScore(correct, errors)


@dataclass
class NerCounts:
    ref: Counter = field(default_factory=Counter)  # entities by type
    hyp: Counter = field(default_factory=Counter)
    correct: Counter = field(default_factory=Counter)
    errors: dict = field(default_factory=lambda: {k: Counter() for k in ERROR_KINDS})

    def add(self, ref_entities: list[Entity], hyp_entities: list[Entity], score: UtteranceScore) -> None:
        self.ref.update(e.type for e in ref_entities)
        self.hyp.update(e.type for e in hyp_entities)
        self.correct.update(e.type for e in score.correct)
        for err in score.errors:
            self.errors[err.kind][(err.hyp if err.kind == FALSE_ALARM else err.ref).type] += 1

    def prf(self, entity_type: str | None = None) -> dict[str, float]:
        """Precision, recall, F1 (fractions) of one type, or micro-averaged over all with None."""
        def total(c: Counter) -> int:
            return c[entity_type] if entity_type else sum(c.values())

        tp, n_ref, n_hyp = total(self.correct), total(self.ref), total(self.hyp)
        precision = tp / n_hyp if n_hyp else 0.0
        recall = tp / n_ref if n_ref else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {"ref": n_ref, "hyp": n_hyp, "correct": tp, "precision": precision, "recall": recall, "f1": f1}


@dataclass
class NerResult:
    counts: NerCounts
    utterances: int
    malformed_hypotheses: dict[str, list[str]]  # uttid -> problems the lenient parser repaired
    missing_hypotheses: list[str]
    extra_hypotheses: list[str]
    malformed_references: dict[str, str]  # uttid -> error

    def to_json(self) -> dict:
        c = self.counts
        return {
            "utterances": self.utterances,
            "micro": c.prf(),
            "per_type": {t: c.prf(t) for t in ENTITY_TYPES},
            "errors": {k: {t: c.errors[k][t] for t in ENTITY_TYPES} for k in ERROR_KINDS},
            "malformed_hypotheses": self.malformed_hypotheses,
            "missing_hypotheses": self.missing_hypotheses,
            "extra_hypotheses": self.extra_hypotheses,
            "malformed_references": self.malformed_references,
        }

    def prf_table(self) -> str:
        return prf_table(self.to_json())

    def error_table(self) -> str:
        return error_table(self.to_json())


def prf_table(summary: dict) -> str:
    """Markdown table of P/R/F1 in % per type and micro, from a result.json dict."""
    lines = ["|type|Ref|Hyp|Correct|P|R|F1|", "|---|---|---|---|---|---|---|"]
    for name, s in [(t, summary["per_type"][t]) for t in ENTITY_TYPES] + [("all (micro)", summary["micro"])]:
        scores = [f"{100 * s[k]:.1f}" for k in ("precision", "recall", "f1")] if s["ref"] + s["hyp"] else ["-"] * 3
        lines.append(f"|{name}|{s['ref']}|{s['hyp']}|{s['correct']}|" + "|".join(scores) + "|")
    return "\n".join(lines)


def error_table(summary: dict) -> str:
    """Markdown table of the error breakdown by entity type, from a result.json dict."""
    lines = ["|error|" + "|".join(ENTITY_TYPES) + "|all|", "|---" * (len(ENTITY_TYPES) + 2) + "|"]
    for kind in ERROR_KINDS:
        by_type = [summary["errors"][kind][t] for t in ENTITY_TYPES]
        lines.append(f"|{ERROR_NAMES[kind]}|" + "|".join(map(str, by_type)) + f"|{sum(by_type)}|")
    return "\n".join(lines)


def _entity_str(e: Entity | None) -> str:
    return f"{e.type}:{e.text}" if e else "-"


def score_ner(ref_text_ner: str | Path, hyp_text_ner: str | Path, out_dir: str | Path) -> NerResult:
    """Score marked hypotheses against marked references; write result.txt, result.json, errors.txt and
    utterances.json (each scored utterance's correct, hypothesis and reference entities: what a paired
    bootstrap resamples)."""
    ref_path, hyp_path, out_dir = Path(ref_text_ner), Path(hyp_text_ner), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    refs, hyps = read_numbered_text(ref_path), read_numbered_text(hyp_path)

    counts = NerCounts()
    malformed_hyp: dict[str, list[str]] = {}
    malformed_ref: dict[str, str] = {}
    missing = [u for u in refs if u not in hyps]
    extra = [u for u in hyps if u not in refs]
    n_scored = 0
    per_utterance = {}
    with open(out_dir / "errors.txt", "w", encoding="utf-8") as err_out:
        err_out.write("# uttid\terror\treference\thypothesis\n")
        for uttid in sorted(refs):
            lineno, ref_marked = refs[uttid]
            try:
                ref_plain, ref_entities = parse_marked(normalize_transcript(ref_marked))
            except MarkupError as e:
                malformed_ref[uttid] = f"{ref_path}:{lineno}: {e}"
                log.warning("%s:%d: %s: malformed reference left out: %s", ref_path, lineno, uttid, e)
                continue
            hyp_plain, hyp_entities, problems = parse_marked_lenient(
                normalize_transcript(hyps.get(uttid, (0, ""))[1]))
            if problems:
                malformed_hyp[uttid] = problems
            score = score_utterance(ref_plain, ref_entities, hyp_plain, hyp_entities)
            counts.add(ref_entities, hyp_entities, score)
            per_utterance[uttid] = {"correct": len(score.correct), "hyp": len(hyp_entities), "ref": len(ref_entities)}
            n_scored += 1
            for err in score.errors:
                err_out.write(f"{uttid}\t{err.kind}\t{_entity_str(err.ref)}\t{_entity_str(err.hyp)}\n")

    for what, ids in (("have no hypothesis, scored as empty", missing),
                      ("have malformed marks, repaired by the lenient parser", list(malformed_hyp)),
                      ("have no reference and are not scored", extra)):
        if ids:
            log.warning("%s: %d utterances %s: %s%s", hyp_path, len(ids), what,
                        " ".join(ids[:NAMED_IN_LOG]), " ..." if len(ids) > NAMED_IN_LOG else "")

    result = NerResult(counts, n_scored, malformed_hyp, missing, extra, malformed_ref)
    with open(out_dir / "result.json", "w", encoding="utf-8") as f:
        json.dump(result.to_json(), f, ensure_ascii=False, indent=1)
    with open(out_dir / "utterances.json", "w", encoding="utf-8") as f:
        json.dump(per_utterance, f, ensure_ascii=False)
    summary = [
        f"reference: {ref_path}", f"hypothesis: {hyp_path}",
        f"utterances scored: {n_scored}; missing hypotheses: {len(missing)}; "
        f"malformed hypotheses: {len(malformed_hyp)}; malformed references left out: {len(malformed_ref)}; "
        f"hypotheses without reference: {len(extra)}",
        "", result.prf_table(), "", result.error_table(), "",
    ]
    for uttid, problems in malformed_hyp.items():
        summary.append(f"malformed hypothesis {uttid}: " + "; ".join(problems))
    (out_dir / "result.txt").write_text("\n".join(summary) + "\n", encoding="utf-8")
    return result
