"""The bundled mini corpus: real AISHELL-NER sentences spoken in Mandarin by espeak-ng, in the AISHELL-1 layout.

It lets the whole recipe run anywhere, and measures what AISHELL-1's test set measures: sentences and voices
that training never had. The text is the shipped AISHELL-NER dev transcript (Apache-2.0,
``espnet_llm.resources``), 40 AISHELL speakers' readings of news. The corpus keeps the sentences written
wholly in its vocabulary, the ``vocabulary`` most frequent characters of the transcript (800: 89.5 % of its
character tokens), that espeak-ng 1.52 reads wholly in Mandarin (it reads Latin letters, and a few syllables
such as 凶 and 穷, in English). As in AISHELL-1, speakers are split between the sets:

- ``num_dev_speakers`` and ``num_test_speakers`` AISHELL speakers, drawn by the seed, read
  ``held_out_utts_per_speaker`` consecutive kept sentences in their own order (real news sentences, the
  window of them with the most entities);
- every other speaker reads all its kept sentences, in order, but none whose text a dev or test
  sentence has: dev and test text never occurs in training (``training_overlap`` says so), and none read
  before (AISHELL has some prompts twice).

Each sentence is read once, with its real AISHELL id, so a speaker's previous utterances are the
sentences before it in the same story. Every speaker has a voice of its own (an espeak-ng variant, pitch
and rate); dev and test speakers speak with variants that no training speaker has. The transcript
sentences that are neither dev, test nor training speech are the text on which stage 5 pretrains the
tiny LLM (``lm_text``). Output, deterministic for a seed and libespeak-ng version::

    <output_dir>/data_aishell/wav/{train,dev,test}/<SPK>/<uttid>.wav     16 kHz mono 16-bit
    <output_dir>/data_aishell/transcript/aishell_transcript_v0.8.txt     word-spaced like AISHELL-1
    <output_dir>/aishell_ner/aishell_ner_transcript.{train,dev,test}.txt (+ LICENSE, README.md)
    <output_dir>/lm_text.txt                                             the other sentences, one a line

    python -m espnet_llm.mini.corpus --output_dir downloads/mini_aishell --seed 0 --nj 2
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import soundfile

from espnet_llm.mini.mandarin_tts import MandarinSpeaker, Voice
from espnet_llm.resources import AISHELL_NER_DEV_TRANSCRIPT
from espnet_llm.text.aishell_ner import normalize_transcript, parse_marked

BUILD_VERSION = 5  # bump when the output for a given configuration changes
SAMPLE_RATE = 16000
SETS = ("train", "dev", "test")
# espeak-ng's Mandarin is 0.2-0.3 s a character at the rates below; a wav under this is cut short
MIN_SECONDS_PER_CHARACTER = 0.1

# espeak-ng variants (voices/!v) that speak Mandarin like a person: training speakers take these ...
TRAIN_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5", "adam", "anika",
                  "aunty", "belinda", "benjamin", "david", "ed", "edward", "grandpa", "ian", "john", "linda", "max",
                  "michel", "paul", "quincy", "rob", "robert", "steph", "travis", "victor", "zac", "norbert")
# ... and dev and test speakers these, so that no held-out voice is heard in training
HELD_OUT_VARIANTS = ("Andy", "Annie", "Alicia", "Lee", "shelby", "grandma", "iven", "kaukovalta")
PITCHES = (30, 40, 50, 60, 70)
RATES = (190, 205, 220, 235)


@dataclass(frozen=True)
class MiniCorpusConfig:
    seed: int = 0
    vocabulary: int = 800  # the most frequent characters of the transcript; kept sentences use only these
    num_dev_speakers: int = 2
    num_test_speakers: int = 2
    held_out_utts_per_speaker: int = 50
    num_train_speakers: int = 0  # 0: every other speaker of the transcript (36)
    max_train_utts_per_speaker: int = 0  # 0: all kept sentences of each training speaker


@dataclass(frozen=True)
class Sentence:
    uttid: str
    speaker: str
    index: int  # the W number: position in the speaker's reading order
    marked: str  # the AISHELL-NER line's transcript, verbatim


class MissingToolError(RuntimeError):
    """sox is not installed."""


class SynthesisError(RuntimeError):
    """sox failed on one utterance, or its audio came out shorter than its text can be read."""


def read_sentences(path: Path = AISHELL_NER_DEV_TRANSCRIPT) -> dict[str, list[Sentence]]:
    """AISHELL-NER lines grouped by speaker, in reading order."""
    by_speaker: dict[str, list[Sentence]] = defaultdict(list)
    with open(path, encoding="utf-8") as f:
        for line in f:
            uttid, marked = line.split(maxsplit=1)
            # AISHELL ids: BAC009 + speaker S0724 + W + sentence number 0121
            by_speaker[uttid[6:11]].append(Sentence(uttid, uttid[6:11], int(uttid[12:]), marked.strip()))
    for sentences in by_speaker.values():
        sentences.sort(key=lambda s: s.index)
    return dict(by_speaker)


def spoken_text(sentence: Sentence) -> str:
    return normalize_transcript(parse_marked(sentence.marked)[0])


def vocabulary(by_speaker: dict[str, list[Sentence]], size: int) -> set[str]:
    counts = Counter(c for sentences in by_speaker.values() for s in sentences for c in spoken_text(s))
    return {c for c, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:size]}


def voices(speakers: list[str], variants: tuple[str, ...], rng: random.Random) -> dict[str, Voice]:
    """A voice of its own for each speaker: variants in turn, pitch and rate drawn."""
    order = rng.sample(variants, len(variants))
    return {spk: Voice(f"cmn+{order[i % len(order)]}", rng.choice(PITCHES), rng.choice(RATES))
            for i, spk in enumerate(speakers)}


@dataclass(frozen=True)
class Plan:
    sentences: dict[str, list[Sentence]]  # set -> sentences read, in id order
    voice: dict[str, Voice]  # speaker -> voice
    lm_text: list[str]  # transcript sentences (plain) that are neither speech nor held out
    refused: dict[str, int]  # why candidate sentences were left out -> count


def plan_corpus(config: MiniCorpusConfig, in_mandarin) -> Plan:
    """Which speaker reads which sentence in which voice. ``in_mandarin(list of (text, voice))`` says, for each,
    whether espeak-ng reads it wholly in Mandarin (it runs in a child process: see ``check_mandarin``)."""
    rng = random.Random(config.seed)
    by_speaker = read_sentences()
    vocab = vocabulary(by_speaker, config.vocabulary)
    speakers = sorted(by_speaker)
    rng.shuffle(speakers)
    held_out_count = config.num_dev_speakers + config.num_test_speakers
    train_speakers = speakers[held_out_count:]
    if config.num_train_speakers:
        train_speakers = train_speakers[:config.num_train_speakers]
    split = {"dev": sorted(speakers[:config.num_dev_speakers]),
             "test": sorted(speakers[config.num_dev_speakers:held_out_count]),
             "train": sorted(train_speakers)}
    if held_out_count >= len(speakers) or not split["train"]:
        raise ValueError(f"the transcript has {len(speakers)} speakers: too few to hold out {held_out_count}")
    if max(config.num_dev_speakers, config.num_test_speakers) > len(HELD_OUT_VARIANTS):
        raise ValueError(f"at most {len(HELD_OUT_VARIANTS)} dev or test speakers: one held-out voice variant each")
    voice = voices(split["train"], TRAIN_VARIANTS, rng)
    held_out_variants = rng.sample(HELD_OUT_VARIANTS, len(HELD_OUT_VARIANTS))
    for subset in ("dev", "test"):  # dev and test speakers do not share a variant either
        voice.update(voices(split[subset], tuple(held_out_variants[:len(split[subset])]), rng))
        held_out_variants = held_out_variants[len(split[subset]):]

    candidates = [s for subset in SETS for spk in split[subset] for s in by_speaker[spk]
                  if set(spoken_text(s)) <= vocab]
    refused = Counter({"outside the vocabulary": sum(len(by_speaker[spk]) for subset in SETS for spk in split[subset])
                       - len(candidates)})
    mandarin = in_mandarin([(spoken_text(s), voice[s.speaker]) for s in candidates])
    readable = defaultdict(list)
    for sentence, ok in zip(candidates, mandarin):
        if ok:
            readable[sentence.speaker].append(sentence)
        else:
            refused["read partly in another language"] += 1

    chosen: dict[str, list[Sentence]] = {}
    for subset in ("dev", "test"):
        chosen[subset] = []
        for spk in split[subset]:
            if len(readable[spk]) < config.held_out_utts_per_speaker:
                raise ValueError(f"speaker {spk} has {len(readable[spk])} sentences in the vocabulary that espeak-ng "
                                 f"reads in Mandarin, {config.held_out_utts_per_speaker} are needed")
            chosen[subset] += richest_window(readable[spk], config.held_out_utts_per_speaker)
    held_out_text = {spoken_text(s) for subset in ("dev", "test") for s in chosen[subset]}
    chosen["train"] = []
    read = set()  # AISHELL has some prompts twice: each sentence is read once, where it first comes
    for spk in split["train"]:
        kept = [s for s in readable[spk] if spoken_text(s) not in held_out_text]
        refused["its text is a dev or test sentence"] += len(readable[spk]) - len(kept)
        once = []
        for s in kept:
            if spoken_text(s) in read:
                refused["read before"] += 1
            elif len(once) < (config.max_train_utts_per_speaker or len(kept)):
                once.append(s)
                read.add(spoken_text(s))
        chosen["train"] += once
    speech_text = held_out_text | {spoken_text(s) for s in chosen["train"]}
    lm_text = sorted({spoken_text(s) for sentences in by_speaker.values() for s in sentences} - speech_text)
    return Plan(chosen, voice, lm_text, dict(refused))


def richest_window(sentences: list[Sentence], length: int) -> list[Sentence]:
    """The ``length`` consecutive sentences with the most entities (the first such): NER F1 on a held-out set
    needs entities, and AISHELL-NER's are unevenly spread (a random 80 sentences held 9)."""
    entities = [len(parse_marked(s.marked)[1]) for s in sentences]
    start = max(range(len(sentences) - length + 1), key=lambda i: (sum(entities[i:i + length]), -i))
    return sentences[start:start + length]


def training_overlap(plan: Plan) -> dict[str, set[str]]:
    """Dev and test sentences (plain text) that training speech or the LM text also holds: empty by construction."""
    seen = {spoken_text(s) for s in plan.sentences["train"]} | set(plan.lm_text)
    return {subset: {spoken_text(s) for s in plan.sentences[subset]} & seen for subset in ("dev", "test")}


def word_spaced(marked: str, rng: random.Random) -> str:
    """AISHELL-1 transcripts are word-segmented: entities become words, the rest chunks of 1-3 characters."""
    plain, entities = parse_marked(marked)
    bounds = sorted({0, len(plain), *(e.start for e in entities), *(e.end for e in entities)})
    entity_spans = {(e.start, e.end) for e in entities}
    words = []
    for start, end in zip(bounds, bounds[1:]):
        if (start, end) in entity_spans:
            words.append(plain[start:end])
            continue
        while start < end:
            step = min(rng.randint(1, 3), end - start)
            words.append(plain[start:start + step])
            start += step
    return " ".join(words)


def check_tools() -> None:
    if shutil.which("sox") is None:
        raise MissingToolError("the mini corpus needs sox: run tools/setup.sh (or apt-get install -y sox)")


def _in_mandarin(jobs: list[tuple[str, Voice]]) -> list[bool]:
    tts = MandarinSpeaker()
    return [not tts.other_languages(text, voice) for text, voice in jobs]


def check_mandarin(jobs: list[tuple[str, Voice]]) -> list[bool]:
    """Whether each voice reads its text wholly in Mandarin, asked in a child process: a process that has made
    thousands of phoneme calls writes truncated audio in the children it forks, with no error."""
    with multiprocessing.get_context("fork").Pool(1) as pool:
        return pool.apply(_in_mandarin, (jobs,))


def speak_to_wav(job: tuple[str, str, Voice, Path]) -> None:
    _, text, voice, wav_path = job
    tts = MandarinSpeaker()
    resample(tts.speak(text, voice), tts.sample_rate, wav_path)


def check_durations(jobs: list[tuple[str, str, Voice, Path]]) -> None:
    """Every wav must last as long as its text takes to read: libespeak-ng can cut audio short without an error."""
    short = [(uttid, wav_path) for uttid, text, _, wav_path in jobs
             if soundfile.info(str(wav_path)).duration < MIN_SECONDS_PER_CHARACTER * len(text)]
    if short:
        raise SynthesisError(f"{len(short)} of {len(jobs)} utterances came out shorter than "
                             f"{MIN_SECONDS_PER_CHARACTER} s a character, the first {short[0][0]} ({short[0][1]})")


def resample(samples, sample_rate: int, wav_path: Path) -> None:
    """sox resamples espeak-ng's 22.05 kHz to 16 kHz mono 16-bit (no dither: the same bytes every run)."""
    sox = ["sox", "-q", "-D", "-t", "raw", "-r", str(sample_rate), "-e", "signed-integer", "-b", "16", "-c", "1", "-",
           "-c", "1", "-b", "16", str(wav_path), "gain", "-n", "-3", "rate", str(SAMPLE_RATE)]
    try:
        subprocess.run(sox, input=samples.astype("<i2").tobytes(), capture_output=True, check=True)
    except subprocess.CalledProcessError as error:
        raise SynthesisError(f"{wav_path}: {' '.join(error.cmd)} failed: {error.stderr.decode(errors='replace')}") from error


def stamp_path(output_dir: Path) -> Path:
    return output_dir / ".mini_corpus.json"


def stamp_content(config: MiniCorpusConfig, state: str) -> str:
    return json.dumps({"version": BUILD_VERSION, "config": asdict(config), "state": state}, sort_keys=True)


def is_built(output_dir: Path, config: MiniCorpusConfig) -> bool:
    stamp = stamp_path(output_dir)
    return stamp.exists() and stamp.read_text() == stamp_content(config, "complete")


def build_mini_corpus(output_dir: Path, config: MiniCorpusConfig = MiniCorpusConfig(), nj: int = 2) -> Plan:
    """Build (or rebuild) the corpus. Every sentence is checked before anything in ``output_dir`` changes."""
    check_tools()
    tts = MandarinSpeaker()
    plan = plan_corpus(config, check_mandarin)
    output_dir = Path(output_dir)
    corpus_dir, ner_dir = output_dir / "data_aishell", output_dir / "aishell_ner"
    spacing_rng = random.Random(config.seed)
    transcript_lines, jobs = [], []
    for subset, sentences in plan.sentences.items():
        for s in sentences:
            transcript_lines.append(f"{s.uttid} {word_spaced(s.marked, spacing_rng)}")
            wav_path = corpus_dir / "wav" / subset / s.speaker / f"{s.uttid}.wav"
            jobs.append((s.uttid, spoken_text(s), plan.voice[s.speaker], wav_path))

    if corpus_dir.exists() or ner_dir.exists():
        if not stamp_path(output_dir).exists():
            raise FileExistsError(f"{output_dir} holds a corpus this builder did not make; choose another --output_dir")
        shutil.rmtree(corpus_dir, ignore_errors=True)
        shutil.rmtree(ner_dir, ignore_errors=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    stamp_path(output_dir).write_text(stamp_content(config, "building"))
    (corpus_dir / "transcript").mkdir(parents=True)
    (corpus_dir / "transcript" / "aishell_transcript_v0.8.txt").write_text(
        "".join(line + "\n" for line in sorted(transcript_lines)), encoding="utf-8")
    ner_dir.mkdir(parents=True)
    for subset, sentences in plan.sentences.items():
        (ner_dir / f"aishell_ner_transcript.{subset}.txt").write_text(
            "".join(f"{s.uttid} {s.marked}\n" for s in sorted(sentences, key=lambda s: s.uttid)), encoding="utf-8")
    shutil.copy(AISHELL_NER_DEV_TRANSCRIPT.parent / "LICENSE", ner_dir / "LICENSE")
    (ner_dir / "README.md").write_text(
        "Sentences and entity marks from the AISHELL-NER dev transcript (Chen et al., ICASSP 2022),\n"
        f"Apache License 2.0 (LICENSE); audio spoken by libespeak-ng {tts.version} for the espnet_llm mini corpus.\n",
        encoding="utf-8")
    (output_dir / "lm_text.txt").write_text("".join(t + "\n" for t in plan.lm_text), encoding="utf-8")

    start = time.time()
    print(f"speaking {len(jobs)} utterances with libespeak-ng {tts.version} in {nj} jobs "
          f"(left out of the transcript's other sentences: "
          + ", ".join(f"{n} {why}" for why, n in sorted(plan.refused.items())) + ")", flush=True)
    for job in jobs:
        job[-1].parent.mkdir(parents=True, exist_ok=True)
    # One forked process per utterance: libespeak-ng carries synthesis state from one utterance to the next
    with multiprocessing.get_context("fork").Pool(max(1, nj), maxtasksperchild=1) as pool:
        for done, _ in enumerate(pool.imap_unordered(speak_to_wav, jobs, chunksize=1), 1):
            if done % 500 == 0 or done == len(jobs):
                print(f"  {done}/{len(jobs)} utterances ({done / (time.time() - start):.0f}/s)", flush=True)
    check_durations(jobs)
    stamp_path(output_dir).write_text(stamp_content(config, "complete"))
    return plan


def corpus_hours(output_dir: Path) -> float:
    """Duration from the wav sizes (44-byte header, 2 bytes per sample)."""
    num_bytes = sum(p.stat().st_size - 44 for p in (Path(output_dir) / "data_aishell" / "wav").rglob("*.wav"))
    return num_bytes / (2 * SAMPLE_RATE) / 3600


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--nj", type=int, default=2, help="parallel espeak-ng/sox jobs")
    defaults = MiniCorpusConfig()
    for name, value in asdict(defaults).items():
        parser.add_argument(f"--{name}", type=int, default=value)
    args = parser.parse_args(argv)
    config = MiniCorpusConfig(**{name: getattr(args, name) for name in asdict(defaults)})
    if is_built(args.output_dir, config):
        print(f"mini corpus already built in {args.output_dir} with seed {config.seed}: skipping")
        return 0
    start = time.time()
    try:
        plan = build_mini_corpus(args.output_dir, config, args.nj)
    except (RuntimeError, FileExistsError, ValueError) as error:  # MissingEspeakError is a RuntimeError
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
    print(f"mini corpus in {args.output_dir}: " + ", ".join(f"{subset} {len(s)}" for subset, s in plan.sentences.items())
          + f" utterances ({', '.join(f'{subset} {len({s.speaker for s in plan.sentences[subset]})}' for subset in SETS)}"
          f" speakers), {corpus_hours(args.output_dir):.2f} h, {len(plan.lm_text)} other sentences for the LM, "
          f"built in {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
