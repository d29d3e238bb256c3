"""The bundled mini corpus: layout, audio format, determinism, speaker split, and stage 1 on it."""
import hashlib
from pathlib import Path

import pytest
import soundfile

from espnet_llm.data_prep import mini_corpus
from espnet_llm.data_prep.aishell import prepare
from espnet_llm.data_prep.history import write_utt2history
from espnet_llm.data_prep.mandarin_tts import MandarinSpeaker
from espnet_llm.data_prep.mini_corpus import (
    MiniCorpusConfig, build_mini_corpus, check_sentences, select_sentences, speaker_voice, spoken_text,
)
from espnet_llm.resources import AISHELL_NER_DEV_TRANSCRIPT
from espnet_llm.text.aishell_ner import normalize_transcript, strip_marks

SMALL = MiniCorpusConfig(seed=3, num_speakers=6, utts_per_speaker=3, num_dev_speakers=1, num_test_speakers=1)
SETS = ("train", "dev", "test")


def file_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def read_table(path: Path) -> dict[str, str]:
    return dict(line.split(maxsplit=1) for line in path.read_text(encoding="utf-8").splitlines())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mini") / "mini_aishell"
    build_mini_corpus(root, SMALL, nj=2)
    return root


def speakers_by_set(root: Path) -> dict[str, set[str]]:
    return {s: {p.name for p in (root / "data_aishell" / "wav" / s).iterdir()} for s in SETS}


def test_layout_and_audio_format(corpus):
    assert (corpus / "data_aishell" / "transcript" / "aishell_transcript_v0.8.txt").is_file()
    for subset in SETS:
        assert (corpus / "aishell_ner" / f"aishell_ner_transcript.{subset}.txt").is_file()
    assert "Apache License" in (corpus / "aishell_ner" / "LICENSE").read_text()
    wavs = sorted((corpus / "data_aishell" / "wav").glob("*/S*/BAC009S*W*.wav"))
    assert len(wavs) == SMALL.num_speakers * SMALL.utts_per_speaker
    for wav in wavs:
        info = soundfile.info(str(wav))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert 0.5 < info.duration < 15
        assert wav.parent.name == wav.stem[6:11]  # speaker directory matches the id


def test_speakers_split_disjoint_and_voices_heard_in_training(corpus):
    speakers = speakers_by_set(corpus)
    assert [len(speakers[s]) for s in SETS] == [4, 1, 1]
    assert not (speakers["train"] & speakers["dev"] or speakers["train"] & speakers["test"] or speakers["dev"] & speakers["test"])
    train_voices = {speaker_voice(s) for s in speakers["train"]}
    assert {speaker_voice(s) for s in speakers["dev"] | speakers["test"]} <= train_voices


def test_sentences_are_real_consecutive_runs_each_read_in_an_order_of_its_own(corpus):
    real_runs = {}  # AISHELL speaker -> its sentences in W order
    for uttid, marked in read_table(AISHELL_NER_DEV_TRANSCRIPT).items():
        real_runs.setdefault(uttid[6:11], []).append((int(uttid[12:]), marked))
    transcript = read_table(corpus / "data_aishell" / "transcript" / "aishell_transcript_v0.8.txt")
    orders = {}  # script -> the reading orders of its readers
    for subset in SETS:
        ner = read_table(corpus / "aishell_ner" / f"aishell_ner_transcript.{subset}.txt")
        by_speaker = {}
        for uttid, marked in sorted(ner.items()):
            assert " " in transcript[uttid] or len(strip_marks(marked)) <= 3  # word-spaced like AISHELL-1
            assert normalize_transcript(transcript[uttid]) == normalize_transcript(strip_marks(marked))
            by_speaker.setdefault(uttid[6:11], []).append((int(uttid[12:]), marked))
        for read in by_speaker.values():
            numbers = [n for n, _ in read]
            assert numbers == list(range(numbers[0], numbers[0] + SMALL.utts_per_speaker))  # W in reading order
            texts = [m for _, m in read]
            # verbatim annotations of a real run of consecutive sentences of one AISHELL speaker
            assert any(sorted(texts) == sorted(m for _, m in sentences[i:i + len(texts)])
                       and sentences[i + len(texts) - 1][0] - sentences[i][0] == len(texts) - 1
                       for sentences in real_runs.values() for i in range(len(sentences) - len(texts) + 1))
            orders.setdefault(frozenset(texts), []).append(texts)
    # readers of one script read it in different orders (so the history does not give the next sentence)
    assert any(len({tuple(o) for o in read}) > 1 for read in orders.values())


def test_held_out_speakers_read_training_text_in_a_voice_that_did_not_read_it(corpus):
    voices_of_text = {}
    for uttid, marked in read_table(corpus / "aishell_ner" / "aishell_ner_transcript.train.txt").items():
        voices_of_text.setdefault(marked, set()).add(speaker_voice(uttid[6:11]))
    assert max(len(v) for v in voices_of_text.values()) == min(SMALL.readers_per_script, 4)  # voices per script
    for subset in ("dev", "test"):
        for uttid, marked in read_table(corpus / "aishell_ner" / f"aishell_ner_transcript.{subset}.txt").items():
            assert marked in voices_of_text and speaker_voice(uttid[6:11]) not in voices_of_text[marked]


def test_same_seed_same_bytes_other_seed_other_sentences(corpus, tmp_path):
    again = tmp_path / "again"
    build_mini_corpus(again, SMALL, nj=1)
    assert file_hashes(again) == file_hashes(corpus)
    other = tmp_path / "other"
    build_mini_corpus(other, MiniCorpusConfig(**{**SMALL.__dict__, "seed": 4}), nj=2)
    assert file_hashes(other) != file_hashes(corpus)


def test_stage1_prepares_the_mini_corpus_cleanly(corpus, tmp_path):
    ner_files = [corpus / "aishell_ner" / f"aishell_ner_transcript.{s}.txt" for s in SETS]
    summary = prepare(corpus / "data_aishell", ner_files, tmp_path / "data")
    assert sum(summary.problems.values()) == 0
    assert [summary.sets[s].utterances for s in SETS] == [12, 3, 3]
    history = write_utt2history(tmp_path / "data" / "train", k=2)
    for line in history.read_text().splitlines():
        ids = line.split()
        numbers = [int(u[12:]) for u in ids]
        # W numbers follow the reading order, so the history is the directly preceding sentences
        assert numbers[1:] == list(range(numbers[0] - len(ids) + 1, numbers[0]))
        assert len({u[6:11] for u in ids}) == 1


def test_rebuild_is_skipped_for_the_same_seed(tmp_path, capsys):
    args = ["--output_dir", str(tmp_path / "m"), "--num_speakers", "6", "--utts_per_speaker", "1",
            "--num_dev_speakers", "1", "--num_test_speakers", "1"]
    assert mini_corpus.main(args) == 0
    wav = next((tmp_path / "m").rglob("*.wav"))
    stamp = wav.stat().st_mtime_ns
    assert mini_corpus.main(args) == 0
    assert "already built" in capsys.readouterr().out
    assert wav.stat().st_mtime_ns == stamp
    assert mini_corpus.main(args + ["--seed", "1"]) == 0
    assert "already built" not in capsys.readouterr().out


def test_missing_tools_foreign_directories_and_bad_sizes_are_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="too few to hold out 2 dev/test speakers"):
        build_mini_corpus(tmp_path / "few", MiniCorpusConfig(num_speakers=3, num_dev_speakers=1, num_test_speakers=1))
    assert not (tmp_path / "few").exists()
    foreign = tmp_path / "corpus"
    (foreign / "data_aishell").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="did not make"):
        build_mini_corpus(foreign, SMALL)
    monkeypatch.setattr(mini_corpus.shutil, "which", lambda tool: None if tool == "sox" else "/usr/bin/" + tool)
    with pytest.raises(mini_corpus.MissingToolError, match="sox: run tools/setup.sh"):
        build_mini_corpus(tmp_path / "new", SMALL)


@pytest.fixture(scope="module")
def tts() -> MandarinSpeaker:
    return MandarinSpeaker()


def test_every_sentence_of_the_default_corpus_is_spoken_in_mandarin(tts):
    chosen = select_sentences(MiniCorpusConfig(), tts)
    assert [len(chosen[s]) for s in SETS] == [360, 60, 60]
    for sentences in chosen.values():
        for sentence in sentences:
            text, voice = spoken_text(sentence), speaker_voice(sentence.speaker)
            phonemes = tts.phonemes(text, voice)
            assert "(" not in phonemes, (sentence.uttid, text, voice, phonemes)  # no "(en)" language switch


def test_a_sentence_read_in_another_language_is_refused_by_name(tts, tmp_path):
    # libespeak-ng 1.52 reads the syllable xiong of 凶 in English
    text = normalize_transcript("敬老院内七旬翁打死九旬室友凶手")
    jobs = [("BAC009S0730W0484", text, mini_corpus.VOICES[2], tmp_path / "a.wav")]
    with pytest.raises(ValueError, match=r"sentence BAC009S0730W0484: .*cmn\+m3.*partly as en"):
        check_sentences(tts, jobs)
    sentences = [mini_corpus.Sentence(f"BAC009S0730W{i:04d}", "S0730", i, "凶手" * i) for i in range(1, 5)]
    sentences += [mini_corpus.Sentence(f"BAC009S0731W{i:04d}", "S0731", i, "你好" * i) for i in range(1, 5)]
    with pytest.raises(ValueError, match=r"has 1 speakers with 2 consecutive sentences .* in Mandarin, 2 are needed"):
        mini_corpus.choose_scripts({"S0730": sentences[:4], "S0731": sentences[4:]}, 2, 2, tts)
    assert not list(tmp_path.iterdir())
