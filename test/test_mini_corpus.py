"""The bundled mini corpus: held-out text and voices, layout, audio format, determinism, and stage 1 on it."""
import hashlib
from pathlib import Path

import numpy as np
import pytest
import soundfile

from espnet_llm.mini import corpus as mini_corpus
from espnet_llm.data_prep.aishell import prepare
from espnet_llm.data_prep.history import write_utt2history
from espnet_llm.mini.corpus import (
    HELD_OUT_VARIANTS, TRAIN_VARIANTS, MiniCorpusConfig, build_mini_corpus, check_mandarin, plan_corpus, read_sentences,
    spoken_text, training_overlap, vocabulary,
)
from espnet_llm.resources import AISHELL_NER_DEV_TRANSCRIPT
from espnet_llm.text.aishell_ner import normalize_transcript, parse_marked, strip_marks

SMALL = MiniCorpusConfig(seed=3, num_dev_speakers=1, num_test_speakers=1, held_out_utts_per_speaker=3,
                         num_train_speakers=3, max_train_utts_per_speaker=4)
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


@pytest.fixture(scope="module")
def default_plan() -> mini_corpus.Plan:
    return plan_corpus(MiniCorpusConfig(), check_mandarin)


def speakers_by_set(root: Path) -> dict[str, set[str]]:
    return {s: {p.name for p in (root / "data_aishell" / "wav" / s).iterdir()} for s in SETS}


def test_layout_and_audio_format(corpus):
    assert (corpus / "data_aishell" / "transcript" / "aishell_transcript_v0.8.txt").is_file()
    for subset in SETS:
        assert (corpus / "aishell_ner" / f"aishell_ner_transcript.{subset}.txt").is_file()
    assert "Apache License" in (corpus / "aishell_ner" / "LICENSE").read_text()
    wavs = sorted((corpus / "data_aishell" / "wav").glob("*/S*/BAC009S*W*.wav"))
    assert len(wavs) == 3 * 4 + 3 + 3
    for wav in wavs:
        info = soundfile.info(str(wav))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert 0.5 < info.duration < 15
        assert wav.parent.name == wav.stem[6:11]  # speaker directory matches the id


def test_the_default_corpus_holds_out_dev_and_test_text_and_voices(default_plan, capsys):
    plan = default_plan
    sizes = {subset: len(plan.sentences[subset]) for subset in SETS}
    assert sizes["train"] >= 3900 and sizes["dev"] == sizes["test"] == 100, sizes
    assert training_overlap(plan) == {"dev": set(), "test": set()}
    train_text = {spoken_text(s) for s in plan.sentences["train"]}
    assert len(train_text) == sizes["train"]  # each sentence read once
    speakers = {subset: {s.speaker for s in plan.sentences[subset]} for subset in SETS}
    assert not (speakers["train"] & speakers["dev"] or speakers["train"] & speakers["test"]
                or speakers["dev"] & speakers["test"])
    variant = {spk: plan.voice[spk].name.split("+")[1] for spk in plan.voice}
    assert {variant[s] for s in speakers["train"]} <= set(TRAIN_VARIANTS)
    held_out = [variant[s] for s in speakers["dev"] | speakers["test"]]
    assert set(held_out) <= set(HELD_OUT_VARIANTS) and len(set(held_out)) == len(held_out)
    assert len({plan.voice[s] for s in speakers["train"]}) == len(speakers["train"])  # a voice of its own
    # the LM's text holds neither the held-out nor the training speech's sentences
    assert not set(plan.lm_text) & (train_text | {spoken_text(s) for s in plan.sentences["dev"] + plan.sentences["test"]})
    train_entities = {e.text for s in plan.sentences["train"] for e in parse_marked(s.marked)[1]}
    with capsys.disabled():
        for subset in ("dev", "test"):
            entities = [e.text for s in plan.sentences[subset] for e in parse_marked(s.marked)[1]]
            unseen = sum(e not in train_entities for e in entities)
            print(f"\n{subset}: {len(entities)} entities, {unseen} ({100 * unseen / len(entities):.0f} %) "
                  f"of their strings unseen in training")
            assert len(entities) >= 40  # NER F1 moves at most 2.5 points an entity


def test_sentences_are_a_speakers_real_sentences_in_order_within_the_vocabulary(corpus):
    real = read_table(AISHELL_NER_DEV_TRANSCRIPT)
    vocab = vocabulary(read_sentences(), SMALL.vocabulary)
    transcript = read_table(corpus / "data_aishell" / "transcript" / "aishell_transcript_v0.8.txt")
    for subset in SETS:
        ner = read_table(corpus / "aishell_ner" / f"aishell_ner_transcript.{subset}.txt")
        for uttid, marked in ner.items():
            assert real[uttid].strip() == marked  # the real id and annotation: a speaker reads its own story
            assert set(normalize_transcript(strip_marks(marked))) <= vocab
            assert " " in transcript[uttid] or len(strip_marks(marked)) <= 3  # word-spaced like AISHELL-1
            assert normalize_transcript(transcript[uttid]) == normalize_transcript(strip_marks(marked))
    # held-out speakers read consecutive kept sentences of theirs, in their reading order
    for subset in ("dev", "test"):
        ids = sorted(read_table(corpus / "aishell_ner" / f"aishell_ner_transcript.{subset}.txt"))
        speaker = ids[0][6:11]
        kept = [s.uttid for s in read_sentences()[speaker] if set(spoken_text(s)) <= vocab]
        start = kept.index(ids[0])
        assert ids == kept[start:start + len(ids)]


def test_held_out_speakers_read_the_window_of_their_sentences_richest_in_entities():
    sentences = [mini_corpus.Sentence(f"BAC009S0724W{i:04d}", "S0724", i, m)
                 for i, m in enumerate(["甲乙", "[张三]来", "丙丁", "(北京)和(上海)", "[李四]", "戊己"])]
    assert [s.index for s in mini_corpus.richest_window(sentences, 3)] == [1, 2, 3]  # the first with 3 entities
    assert [s.index for s in mini_corpus.richest_window(sentences, 6)] == list(range(6))


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
        assert len({u[6:11] for u in ids}) == 1 and ids[1:] == sorted(ids[1:]) and all(u < ids[0] for u in ids[1:])


def test_rebuild_is_skipped_for_the_same_seed(tmp_path, capsys):
    args = ["--output_dir", str(tmp_path / "m"), "--num_train_speakers", "2", "--max_train_utts_per_speaker", "1",
            "--num_dev_speakers", "1", "--num_test_speakers", "1", "--held_out_utts_per_speaker", "1"]
    assert mini_corpus.main(args) == 0
    wav = next((tmp_path / "m").rglob("*.wav"))
    stamp = wav.stat().st_mtime_ns
    assert mini_corpus.main(args) == 0
    assert "already built" in capsys.readouterr().out
    assert wav.stat().st_mtime_ns == stamp
    assert mini_corpus.main(args + ["--seed", "1"]) == 0
    assert "already built" not in capsys.readouterr().out


def test_missing_tools_foreign_directories_and_bad_sizes_are_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="has .* sentences in the vocabulary .* 1000 are needed"):
        build_mini_corpus(tmp_path / "few", MiniCorpusConfig(held_out_utts_per_speaker=1000, num_train_speakers=1))
    with pytest.raises(ValueError, match="too few to hold out 40"):
        build_mini_corpus(tmp_path / "few", MiniCorpusConfig(num_dev_speakers=20, num_test_speakers=20))
    assert not (tmp_path / "few").exists()
    foreign = tmp_path / "corpus"
    (foreign / "data_aishell").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="did not make"):
        build_mini_corpus(foreign, SMALL)
    monkeypatch.setattr(mini_corpus.shutil, "which", lambda tool: None if tool == "sox" else "/usr/bin/" + tool)
    with pytest.raises(mini_corpus.MissingToolError, match="sox: run tools/setup.sh"):
        build_mini_corpus(tmp_path / "new", SMALL)


def test_a_sentence_read_in_another_language_is_left_out_and_counted():
    # libespeak-ng 1.52 reads the syllable xiong of 凶 in English; checked in a child process
    voice = mini_corpus.Voice("cmn+m3", 50, 220)
    assert check_mandarin([(normalize_transcript("七旬翁打死九旬室友凶手"), voice), ("你好中国", voice)]) == [False, True]
    plan = plan_corpus(SMALL, lambda jobs: ["的" not in text for text, _ in jobs])  # as if 的 were read in English
    assert plan.refused["read partly in another language"] > 0
    assert all("的" not in spoken_text(s) for sentences in plan.sentences.values() for s in sentences)


def test_audio_cut_short_is_refused_by_name(tmp_path):
    wav = tmp_path / "BAC009S0724W0122.wav"
    soundfile.write(wav, np.zeros(800, dtype=np.int16), 16000)  # 0.05 s for 8 characters
    with pytest.raises(mini_corpus.SynthesisError, match=r"1 of 1 utterances .* BAC009S0724W0122"):
        mini_corpus.check_durations([("BAC009S0724W0122", "广州市房地产中介", None, wav)])
