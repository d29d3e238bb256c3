"""The three tasks' prompt and target layouts in ChatGLM3's chat format, and the parser of model output.

Every sequence reads ``[gMASK] sop <|user|> {speech} <|task|> <|assistant|> {target} </s>``; the
encoder-decoder model leaves ``{speech}`` out (it attends to the speech instead). Targets:

- ``asr_short``: the transcript of the utterance;
- ``asr_long``:  the transcripts of the K previous utterances, then the current one, joined by ``<|sep|>``;
- ``ner``:       the ``asr_long`` target, then ``<|ner|>``, then the current utterance with entity marks
                 (chain of thought: first what was said, then which parts are entities).

Hand-written: this layout is the project's own; no library knows it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from espnet_llm.text.aishell_ner import Entity, mark_entities, parse_marked_lenient, strip_marks

TASKS = ("asr_short", "asr_long", "ner")
TASK_TOKEN = {"asr_short": "<|asr_short|>", "asr_long": "<|asr_long|>", "ner": "<|ner|>"}
SEPARATOR = "<|sep|>"
NER_TOKEN = "<|ner|>"


@dataclass
class ParsedOutput:
    """What a generated sequence says about the current utterance."""

    text: str  # plain transcript of the current utterance
    marked: str  # the same with entity marks (equal to text when the task has no NER)
    entities: list[Entity] = field(default_factory=list)
    history: list[str] = field(default_factory=list)  # transcripts it gave for the previous utterances
    problems: list[str] = field(default_factory=list)  # what had to be repaired; empty when well formed


class PromptLayout:
    """Token ids around the speech and of the target, for one task."""

    def __init__(self, tokenizer, task: str):
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        self.tokenizer = tokenizer
        self.task = task
        tid = tokenizer.token_id
        self.prefix_ids = [tid("[gMASK]"), tid("sop"), tid("<|user|>")]
        self.suffix_ids = [tid(TASK_TOKEN[task]), tid("<|assistant|>")]
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

    def parse(self, ids: list[int]) -> ParsedOutput:
        """Read a generated id sequence back; never raises, lists what it repaired."""
        problems: list[str] = []
        ids = list(ids)
        for stop in self.stop_ids:  # anything after an end token is not part of the answer
            if stop in ids:
                ids = ids[: ids.index(stop)]
        ner_part: list[int] | None = None
        if self.ner_id in ids:
            at = ids.index(self.ner_id)
            ids, ner_part = ids[:at], ids[at + 1:]
            if self.task != "ner":
                problems.append(f"{NER_TOKEN} in {self.task} output: what follows it is ignored")
                ner_part = None
        segments = _split(ids, self.sep_id)
        if not self.uses_history and len(segments) > 1:
            problems.append(f"{len(segments) - 1} {SEPARATOR} in {self.task} output: kept the last part")
        history = [self.tokenizer.decode(s) for s in segments[:-1]]
        text = self.tokenizer.decode(segments[-1])
        if self.task != "ner":
            return ParsedOutput(text=strip_marks(text), marked=text, history=history, problems=problems)
        if ner_part is None:
            problems.append(f"no {NER_TOKEN}: no entities")
            return ParsedOutput(text=strip_marks(text), marked=strip_marks(text), history=history, problems=problems)
        if self.ner_id in ner_part or self.sep_id in ner_part:
            problems.append(f"task tokens after {NER_TOKEN}: dropped")
            ner_part = [i for i in ner_part if i not in (self.ner_id, self.sep_id)]
        plain, entities, mark_problems = parse_marked_lenient(self.tokenizer.decode(ner_part))
        problems += mark_problems
        if plain != strip_marks(text):
            problems.append("the marked transcript differs from the transcript before it: entities kept, text from the former")
        return ParsedOutput(
            text=strip_marks(text), marked=mark_entities(plain, entities), entities=entities,
            history=history, problems=problems,
        )


def _split(ids: list[int], sep: int) -> list[list[int]]:
    parts: list[list[int]] = [[]]
    for i in ids:
        if i == sep:
            parts.append([])
        else:
            parts[-1].append(i)
    return parts
