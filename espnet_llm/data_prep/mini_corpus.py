"""The bundled mini corpus: real AISHELL-NER sentences spoken in Mandarin by espeak-ng, in the AISHELL-1 layout.

It lets the whole recipe run anywhere. The text is the shipped AISHELL-NER dev transcript
(Apache-2.0, ``espnet_llm.resources``): scripts that are real runs of consecutive sentences of
one AISHELL speaker, the richest in entities among the runs no longer than the median that
espeak-ng reads wholly in Mandarin (it reads Latin letters, and a few syllables such as 凶 and
穷, in English), one script per source speaker. Each speaker is voiced by one espeak-ng 1.52
Mandarin variant (``mandarin_tts``) chosen by its speaker number, so the mapping is the same for
every seed; speakers are picked round-robin over the voices and dev and test speakers are held
out only where another speaker of the same voice stays in training.

Training speakers read in groups of ``readers_per_script`` voices, each group one script, and
each dev and test speaker reads a training script in a voice that never read it in training:
the held-out sets measure whether a model hears which sentence is spoken by a voice it has not
heard say it. Every reader reads its script in an order of its own (its W numbers follow its
reading order), so a speaker's previous utterances are real context but do not tell which
sentence comes next: a long-form model must listen to the current utterance. With 0.4 h of
speech no model learns Mandarin for new sentences (on held-out text every system, the Conformer
included, stayed near 100% CER), so the mini corpus checks that the recipe learns from speech;
its figures say nothing about AISHELL-1. Every sentence's phonemes are checked before anything
is written: a voice that leaves Mandarin for any part of a sentence is refused, naming it.
Output, deterministic for a seed and libespeak-ng version::

    <output_dir>/data_aishell/wav/{train,dev,test}/<SPK>/<uttid>.wav     16 kHz mono 16-bit
    <output_dir>/data_aishell/transcript/aishell_transcript_v0.8.txt     word-spaced like AISHELL-1
    <output_dir>/aishell_ner/aishell_ner_transcript.{train,dev,test}.txt (+ LICENSE, README.md)

    python -m espnet_llm.data_prep.mini_corpus --output_dir downloads/mini_aishell --seed 0 --nj 2
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
from collections import defaultdict
from dataclasses import asdict, dataclass
from itertools import zip_longest
from pathlib import Path

from espnet_llm.data_prep.mandarin_tts import LanguageSwitchError, MandarinSpeaker, Voice
from espnet_llm.resources import AISHELL_NER_DEV_TRANSCRIPT
from espnet_llm.text.aishell_ner import normalize_transcript, parse_marked

BUILD_VERSION = 4  # bump when the output for a given configuration changes
SAMPLE_RATE = 16000
SETS = ("train", "dev", "test")


# A few espeak-ng Mandarin variants standing for speakers (speaker S<n> gets VOICES[n % len(VOICES)]).
VOICES = (
    Voice("cmn", 50, 220),
    Voice("cmn+f2", 65, 210),
    Voice("cmn+m3", 35, 230),
    Voice("cmn+f4", 75, 200),
)


@dataclass(frozen=True)
class MiniCorpusConfig:
    seed: int = 0
    num_speakers: int = 16
    utts_per_speaker: int = 30
    num_dev_speakers: int = 2
    num_test_speakers: int = 2
    readers_per_script: int = 3  # training speakers that read the same sentences, in different voices


@dataclass(frozen=True)
class Sentence:
    uttid: str
    speaker: str
    index: int  # the W number: position in the speaker's reading order
    marked: str  # the AISHELL-NER line's transcript, verbatim


class MissingToolError(RuntimeError):
    """sox is not installed."""


class SynthesisError(RuntimeError):
    """sox failed on one utterance."""


def speaker_voice(speaker: str) -> Voice:
    return VOICES[int(speaker[1:]) % len(VOICES)]


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
    return by_speaker


def choose_speakers(speakers: list[str], config: MiniCorpusConfig, rng: random.Random) -> dict[str, list[str]]:
    """Pick speakers round-robin over the voices, then hold out dev and test speakers from the last picks
    whose voice another (training) speaker still has."""
    pools = [[s for s in sorted(speakers) if speaker_voice(s) == voice] for voice in VOICES]
    for pool in pools:
        rng.shuffle(pool)
    picked = []
    for i in range(config.num_speakers):
        pool = pools[i % len(pools)]
        if i // len(pools) >= len(pool):
            raise ValueError(f"num_speakers={config.num_speakers} is more than the transcript offers per voice")
        picked.append(pool[i // len(pools)])
    held_out_count = config.num_dev_speakers + config.num_test_speakers
    held_out: list[str] = []
    for speaker in reversed(picked):
        if len(held_out) == held_out_count:
            break
        remaining = [s for s in picked if s != speaker and s not in held_out]
        if speaker_voice(speaker) in {speaker_voice(s) for s in remaining}:
            held_out.append(speaker)
    if len(held_out) < held_out_count:
        raise ValueError(
            f"num_speakers={config.num_speakers} is too few to hold out {held_out_count} dev/test speakers "
            f"whose voices are also in training ({len(VOICES)} voices)"
        )
    return {
        "train": sorted(s for s in picked if s not in held_out),
        "dev": sorted(held_out[:config.num_dev_speakers]),
        "test": sorted(held_out[config.num_dev_speakers:]),
    }


def spoken_text(sentence: Sentence) -> str:
    return normalize_transcript(parse_marked(sentence.marked)[0])


def choose_scripts(by_speaker: dict[str, list[Sentence]], count: int, length: int,
                   tts: MandarinSpeaker) -> list[list[Sentence]]:
    """`count` runs of `length` consecutive sentences, of different source speakers, that espeak-ng reads in
    Mandarin: the richest in entities among the runs no longer (in characters) than the median run, so that
    the held-out sets, which read these scripts, hold enough entities for NER F1 to mean something."""
    runs = [sentences[i:i + length] for sentences in by_speaker.values() for i in range(len(sentences) - length + 1)
            if sentences[i + length - 1].index - sentences[i].index == length - 1]
    chars = [sum(len(s.marked) for s in run) for run in runs]
    median = sorted(chars)[len(chars) // 2] if chars else 0
    entities = {s.uttid: len(parse_marked(s.marked)[1]) for sentences in by_speaker.values() for s in sentences}
    short = [run for run, n in zip(runs, chars) if n <= median]
    ranked = sorted(short, key=lambda run: (-sum(entities[s.uttid] for s in run), run[0].uttid))
    foreign: dict[str, bool] = {}  # checked lazily: most sentences are never candidates

    def in_mandarin(sentence: Sentence) -> bool:
        if sentence.uttid not in foreign:
            foreign[sentence.uttid] = bool(tts.other_languages(spoken_text(sentence), VOICES[0]))
        return not foreign[sentence.uttid]

    chosen: list[list[Sentence]] = []
    used: set[str] = set()
    for run in ranked:
        if len(chosen) == count:
            break
        if run[0].speaker not in used and all(in_mandarin(s) for s in run):
            chosen.append(run)
            used.add(run[0].speaker)
    if len(chosen) < count:
        raise ValueError(f"the transcript has {len(chosen)} speakers with {length} consecutive sentences that "
                         f"libespeak-ng {tts.version} reads in Mandarin, {count} are needed: lower "
                         f"utts_per_speaker or the number of scripts")
    return chosen


def reading_order(speaker: str, script: list[Sentence], rng: random.Random) -> list[Sentence]:
    """The script as one speaker reads it: in an order of its own, numbered (W) in that order."""
    order = rng.sample(script, len(script))
    first = script[0].index
    return [Sentence(f"BAC009{speaker}W{first + k:04d}", speaker, first + k, s.marked) for k, s in enumerate(order)]


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


_TTS: MandarinSpeaker | None = None  # the builder's, inherited by each forked process that speaks


def speak_to_wav(job: tuple[str, str, Voice, Path]) -> None:
    _, text, voice, wav_path = job
    resample(_TTS.speak(text, voice), _TTS.sample_rate, wav_path)


def check_sentences(tts: MandarinSpeaker, jobs: list[tuple[str, str, Voice, Path]]) -> None:
    """Every sentence must be read in Mandarin by its voice; the first that is not is named."""
    for uttid, text, voice, _ in jobs:
        try:
            tts.check_mandarin(text, voice)
        except LanguageSwitchError as error:
            raise ValueError(f"sentence {uttid}: {error} (libespeak-ng {tts.version})") from None


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


def select_sentences(config: MiniCorpusConfig, tts: MandarinSpeaker) -> dict[str, list[Sentence]]:
    """The sentences of each set. Training speakers read in groups of ``readers_per_script`` (of different
    voices), each group one script; each dev and test speaker reads the script of a group with no speaker of
    its voice. Every speaker reads in its own order, with its own ids."""
    rng = random.Random(config.seed)
    by_speaker = read_sentences()
    split = choose_speakers(list(by_speaker), config, rng)
    # voices interleaved, so that a group's readers have different voices
    by_voice = [[spk for spk in split["train"] if speaker_voice(spk) == voice] for voice in VOICES]
    train = [spk for rank in zip_longest(*by_voice) for spk in rank if spk]
    groups = [train[i:i + config.readers_per_script] for i in range(0, len(train), config.readers_per_script)]
    scripts = choose_scripts(by_speaker, len(groups), config.utts_per_speaker, tts)
    chosen = {"train": [s for group, script in zip(groups, scripts) for spk in group
                        for s in reading_order(spk, script, rng)]}
    order = rng.sample(range(len(groups)), len(groups))  # spread the held-out speakers over the scripts
    for subset in ("dev", "test"):
        chosen[subset] = []
        for speaker in split[subset]:
            # a script read in training in this very voice would be the same audio: never that one
            fits = [g for g in order if speaker_voice(speaker) not in {speaker_voice(t) for t in groups[g]}]
            if not fits:
                raise ValueError(f"every script is read in training in the voice of {speaker}: "
                                 f"lower readers_per_script ({config.readers_per_script}) or add speakers")
            order.remove(fits[0])
            order.append(fits[0])
            chosen[subset] += reading_order(speaker, scripts[fits[0]], rng)
    return chosen


def build_mini_corpus(output_dir: Path, config: MiniCorpusConfig = MiniCorpusConfig(), nj: int = 2) -> dict[str, int]:
    """Build (or rebuild) the corpus; returns utterances per set. Every sentence is checked before
    anything in ``output_dir`` changes."""
    check_tools()
    tts = MandarinSpeaker()
    chosen = select_sentences(config, tts)
    output_dir = Path(output_dir)
    corpus_dir, ner_dir = output_dir / "data_aishell", output_dir / "aishell_ner"
    spacing_rng = random.Random(config.seed)
    transcript_lines, jobs = [], []
    for subset, sentences in chosen.items():
        for s in sentences:
            transcript_lines.append(f"{s.uttid} {word_spaced(s.marked, spacing_rng)}")
            wav_path = corpus_dir / "wav" / subset / s.speaker / f"{s.uttid}.wav"
            jobs.append((s.uttid, spoken_text(s), speaker_voice(s.speaker), wav_path))
    check_sentences(tts, jobs)

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
    for subset, sentences in chosen.items():
        (ner_dir / f"aishell_ner_transcript.{subset}.txt").write_text(
            "".join(f"{s.uttid} {s.marked}\n" for s in sorted(sentences, key=lambda s: s.uttid)), encoding="utf-8")
    shutil.copy(AISHELL_NER_DEV_TRANSCRIPT.parent / "LICENSE", ner_dir / "LICENSE")
    (ner_dir / "README.md").write_text(
        "Sentences and entity marks from the AISHELL-NER dev transcript (Chen et al., ICASSP 2022),\n"
        f"Apache License 2.0 (LICENSE); audio spoken by libespeak-ng {tts.version} for the espnet_llm mini corpus.\n",
        encoding="utf-8")

    start = time.time()
    print(f"speaking {len(jobs)} utterances with libespeak-ng {tts.version} in {nj} jobs", flush=True)
    for job in jobs:
        job[-1].parent.mkdir(parents=True, exist_ok=True)
    # One forked process per utterance: libespeak-ng carries synthesis state from one utterance to the next
    global _TTS
    _TTS = tts
    with multiprocessing.get_context("fork").Pool(max(1, nj), maxtasksperchild=1) as pool:
        for done, _ in enumerate(pool.imap_unordered(speak_to_wav, jobs), 1):
            if done % 100 == 0 or done == len(jobs):
                print(f"  {done}/{len(jobs)} utterances ({done / (time.time() - start):.0f}/s)", flush=True)
    stamp_path(output_dir).write_text(stamp_content(config, "complete"))
    return {subset: len(sentences) for subset, sentences in chosen.items()}


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
        counts = build_mini_corpus(args.output_dir, config, args.nj)
    except (RuntimeError, FileExistsError, ValueError) as error:  # MissingEspeakError is a RuntimeError
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
    print(f"mini corpus in {args.output_dir}: " + ", ".join(f"{subset} {n}" for subset, n in counts.items())
          + f" utterances, {config.num_speakers} speakers, {corpus_hours(args.output_dir):.2f} h, "
          f"built in {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
