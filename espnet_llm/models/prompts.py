"""The three tasks' prompt and target layouts in ChatGLM3's chat format, and the parser of model output.

Every sequence is one ChatGLM3 chat turn, each role token followed by its empty metadata line as ChatGLM3 was
trained (llm.tokenizer.build_message): ``[gMASK] sop <|user|> \\n {speech} <|task|> <|assistant|> \\n {target} </s>``;
the encoder-decoder model leaves ``{speech}`` out (it attends to the speech instead). Targets:

- ``asr_short``: the transcript of the utterance;
- ``asr_long``:  the transcripts of the K previous utterances, then the current one, joined by ``<|sep|>``;
- ``ner``:       the ``asr_long`` target, then ``<|ner|>``, then the current utterance with entity marks
                 (chain of thought: first what was said, then which parts are entities).

Hand-written: this layout is the project's own; no library knows it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from transformers import LogitsProcessor

from espnet_llm.llm.tokenizer import NER_TOKEN, SEPARATOR, TASK_TOKEN
from espnet_llm.text.aishell_ner import Entity, mark_entities, parse_marked_lenient, place_entities, strip_marks

TASKS = tuple(TASK_TOKEN)
# Decoding caps max_new_tokens from the speech (PromptLayout.answer_budget): Mandarin runs at 3 to 5 characters
# a second, fast speech at 7 or so (AISHELL's read news at about 4), and ChatGLM3's tokenizer gives a character
# one token or less, so 8 tokens a second cover a transcript; the margin covers <|ner|>, the entity marks, the
# end token and the rare character that falls back to its 3 UTF-8 bytes.
TOKENS_PER_SECOND = 8.0
ANSWER_MARGIN = 16
# What the parser repairs or flags, by kind (stable names: decoding counts them, RESULTS.md tables them).
PROBLEM_KINDS = {
    "truncated": "no end token within max_new_tokens: the answer may be cut short",
    "repetition": "the answer ends in the same tokens over and over (search gone into a loop): the unit kept once",
    "trailing_separator": f"a {SEPARATOR} with nothing after it: dropped",
    "extra_separator": f"more {SEPARATOR} than history utterances",
    "missing_separator": f"fewer {SEPARATOR} than history utterances",
    "empty_current": "no transcript of the current utterance at all",
    "ner_fallback_text": f"the current transcript taken from the marked one after {NER_TOKEN}",
    "no_ner_token": f"a ner answer without {NER_TOKEN}: no entities",
    "ner_text_mismatch": "the marked transcript's text is not the transcript: the transcript kept, its entities placed in it",
    "malformed_marks": "entity marks that could not be paired: dropped",
    "stray_task_token": f"{NER_TOKEN} in an ASR answer, or {SEPARATOR} / {NER_TOKEN} after {NER_TOKEN}: dropped",
}
# A loop at the end of an answer: the same tokens back to back, 3 times at least and over 8 tokens at least, so
# that a reduplication such as 谢谢谢谢 (4 tokens) is none and 的的的的的的的的 or 北京北京北京北京 is one.
REPETITION_MIN_REPEATS = 3
REPETITION_MIN_SPAN = 8


@dataclass(frozen=True)
class Problem:
    kind: str  # one of PROBLEM_KINDS
    message: str  # this output's particulars

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


@dataclass
class ParsedOutput:
    """What a generated sequence says about the current utterance."""

    text: str  # plain transcript of the current utterance
    marked: str  # the same with entity marks (equal to text when the task has no NER)
    entities: list[Entity] = field(default_factory=list)
    history: list[str] = field(default_factory=list)  # transcripts it gave for the previous utterances
    problems: list[Problem] = field(default_factory=list)  # what had to be repaired; empty when well formed

    @property
    def kinds(self) -> list[str]:
        """The kinds of problem, each once, in the order found."""
        return list(dict.fromkeys(p.kind for p in self.problems))


class PromptLayout:
    """Token ids around the speech and of the target, for one task."""

    def __init__(self, tokenizer, task: str):
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        self.tokenizer = tokenizer
        self.task = task
        tid = tokenizer.token_id
        # the speech and the task token are the user message; the answer follows the assistant's metadata line
        self.prefix_ids = tokenizer.prefix_ids + tokenizer.build_message("user", "")
        self.suffix_ids = [tid(TASK_TOKEN[task])] + tokenizer.build_message("assistant", "")
        self.sep_id = tid(SEPARATOR)
        self.ner_id = tid(NER_TOKEN)
        self.eos_id = tokenizer.eos_id
        # Generation stops at </s>; ChatGLM3 also ends a turn by starting the next one.
        self.stop_ids = [self.eos_id, tid("<|user|>"), tid("<|observation|>")]

    @property
    def uses_history(self) -> bool:
        return self.task != "asr_short"

    def target_ids(self, text: str, marked: str | None = None, history: list[str] = ()) -> list[int]:
        """The ids the model learns to produce, end token included."""
        enc = self.tokenizer.encode
        ids: list[int] = []
        if self.uses_history:
            for previous in history:
                ids += enc(previous) + [self.sep_id]
        ids += enc(text)
        if self.task == "ner":
            if marked is None:
                raise ValueError("the ner task needs the entity-marked transcript (text_ner)")
            ids += [self.ner_id] + enc(marked)
        return ids + [self.eos_id]

    def answer_budget(
        self, seconds: float, current_seconds: float, num_history: int, tokens_per_second: float = TOKENS_PER_SECOND
    ) -> int:
        """The most tokens a well-formed answer takes for ``seconds`` of speech, the last ``current_seconds`` the
        current utterance's: the transcripts (for ner the current one again, marked), separators and a margin."""
        spoken = seconds + (current_seconds if self.task == "ner" else 0.0)
        return math.ceil(tokens_per_second * spoken) + (num_history if self.uses_history else 0) + ANSWER_MARGIN

    def parse(self, ids: list[int], num_history: int, truncated: bool = False) -> ParsedOutput:
        """Read a generated id sequence back; never raises, lists what it repaired or doubts (PROBLEM_KINDS).

        ``num_history``: the history utterances of the row (its speech segments but one; 0 at a speaker's
        first utterance, and for asr_short), so the ``<|sep|>`` a well-formed answer has. ``truncated``: the
        generation ran to max_new_tokens instead of ending.

        The current utterance's transcript, once trailing ``<|sep|>`` are dropped, is the last part, also where
        there are more or fewer separators than history utterances (flagged): its speech comes last and its
        transcript ends the answer, so a history sentence split or repeated, or two run together, leave it
        last. Not so in an answer that ran to max_new_tokens with extra separators: it went on past the current
        utterance, which is the part after the ``num_history``-th separator. For ner, where the separators do
        not match the history or the current part is empty, the plain text of the marked transcript after
        ``<|ner|>`` is the current transcript: it is the model's own copy of the current utterance.
        """
        problems: list[Problem] = []
        ids = list(ids)
        for stop in self.stop_ids:  # anything after an end token is not part of the answer
            if stop in ids:
                ids = ids[: ids.index(stop)]
        if truncated:
            problems.append(Problem("truncated", f"no end token after {len(ids)} tokens"))
        loop = _loop_at_end(ids)
        if loop:
            period, start = loop
            problems.append(Problem("repetition", f"ends in {(len(ids) - start) / period:.1f} repeats of {period} "
                                                  "token(s): kept once"))
            ids = ids[: start + period]
        ner_part: list[int] | None = None
        if self.ner_id in ids:
            at = ids.index(self.ner_id)
            ids, ner_part = ids[:at], ids[at + 1:]
            if self.task != "ner":
                problems.append(Problem("stray_task_token", f"{NER_TOKEN} in {self.task} output: what follows ignored"))
                ner_part = None
        parts = _split(ids, self.sep_id)
        trailing = 0
        while len(parts) > 1 and not parts[-1]:
            parts.pop()
            trailing += 1
        if trailing:
            problems.append(Problem("trailing_separator", f"{trailing} {SEPARATOR} with nothing after: dropped"))
        expected = num_history if self.uses_history else 0
        found = len(parts) - 1
        current = found
        if found != expected and any(parts):
            if truncated and found > expected:
                current = expected
            problems.append(Problem(
                "extra_separator" if found > expected else "missing_separator",
                f"{found} {SEPARATOR} for {expected} history utterance(s): part {current + 1} of {len(parts)} taken "
                "as the current transcript",
            ))
        history = [self.tokenizer.decode(p) for p in parts[:current]]
        text = marked = self.tokenizer.decode(parts[current])
        entities: list[Entity] = []
        if self.task == "ner":
            text, marked, entities = self._read_ner(strip_marks(text), ner_part, found == expected, problems)
        if not text:
            problems.append(Problem("empty_current", "no transcript of the current utterance"))
        return ParsedOutput(
            text=strip_marks(text), marked=marked, entities=entities, history=history, problems=problems
        )

    def _read_ner(
        self, text: str, ner_part: list[int] | None, separators_match: bool, problems: list[Problem]
    ) -> tuple[str, str, list[Entity]]:
        """(text, marked, entities) of a ner answer whose part before ``<|ner|>`` says ``text``."""
        if ner_part is None:
            problems.append(Problem("no_ner_token", f"no {NER_TOKEN}: no entities"))
            return text, text, []
        if self.ner_id in ner_part or self.sep_id in ner_part:
            problems.append(Problem("stray_task_token", f"task tokens after {NER_TOKEN}: dropped"))
            ner_part = [i for i in ner_part if i not in (self.ner_id, self.sep_id)]
        plain, entities, mark_problems = parse_marked_lenient(self.tokenizer.decode(ner_part))
        problems += [Problem("malformed_marks", m) for m in mark_problems]
        if plain and plain != text and (not text or not separators_match):
            why = "nothing" if not text else "separators that do not match the history"
            problems.append(Problem("ner_fallback_text", f"{why} before {NER_TOKEN}: the marked transcript's text"))
            text = plain
        elif plain != text:
            # the entities are returned with ``text``: their offsets index it, not the marked copy
            placed, unplaced = place_entities(text, entities)
            problems.append(Problem(
                "ner_text_mismatch",
                "the marked transcript differs from the transcript before it: text from the latter, entities "
                "placed in it" + (f"; not in it: {' '.join(e.text for e in unplaced)}" if unplaced else ""),
            ))
            return text, mark_entities(plain, entities), placed
        return text, mark_entities(plain, entities), entities


class AnswerShape(LogitsProcessor):
    """Holds generation to the target layout of a row with K history utterances: exactly K ``<|sep|>`` (no end,
    and no ``<|ner|>``, before the K-th; no more after it) and, for ner, no end before ``<|ner|>`` and nothing
    but marked text after it. A long-form model that has not learnt to count its segments otherwise stops
    after a history transcript or invents more, and the current utterance is scored against the wrong text.

    Hand-written: transformers' processors ban tokens everywhere or force a fixed sequence, not this.
    """

    def __init__(self, layout: PromptLayout, num_history: list[int]):
        self.layout = layout
        self.num_history = torch.tensor(num_history)  # per row of input_ids (beams of a row side by side)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        layout, banned = self.layout, torch.finfo(scores.dtype).min
        history = self.num_history.to(scores.device)[:, None]
        seps = (input_ids == layout.sep_id).sum(1, keepdim=True)
        after_ner = (input_ids == layout.ner_id).any(1, keepdim=True)
        early = seps < history
        # a ner answer ends with its marked transcript, after <|ner|>
        cannot_end = early | ~after_ner if layout.task == "ner" else early
        scores[:, layout.stop_ids] = scores[:, layout.stop_ids].masked_fill(cannot_end, banned)
        scores[:, [layout.sep_id]] = scores[:, [layout.sep_id]].masked_fill(~early | after_ner, banned)
        if layout.task == "ner":
            scores[:, [layout.ner_id]] = scores[:, [layout.ner_id]].masked_fill(early | after_ner, banned)
        else:
            scores[:, layout.ner_id] = banned
        return scores


def _loop_at_end(ids: list[int]) -> tuple[int, int] | None:
    """(period, start) of the shortest unit that ``ids`` end in as a loop (REPETITION_*), or None: from ``start``
    on, ``ids`` repeat with that period."""
    n = len(ids)
    for period in range(1, n // REPETITION_MIN_REPEATS + 1):
        start = n - period  # move back while ids[start:] keeps this period
        while start > 0 and ids[start - 1] == ids[start - 1 + period]:
            start -= 1
        if n - start >= max(REPETITION_MIN_REPEATS * period, REPETITION_MIN_SPAN):
            return period, start
    return None


def _split(ids: list[int], sep: int) -> list[list[int]]:
    parts: list[list[int]] = [[]]
    for i in ids:
        if i == sep:
            parts.append([])
        else:
            parts[-1].append(i)
    return parts
