"""Stage 1 (espnet_llm.data_prep.aishell, local/data.sh) and utt2history on small generated AISHELL trees."""
import subprocess
import tarfile
from pathlib import Path

import pytest

from espnet_llm.data_prep import aishell
from espnet_llm.data_prep.aishell import DataPrepError, download_data_aishell, prepare, unpack_speaker_tarballs
from espnet_llm.data_prep.history import build_history
from espnet_llm.data_prep.history import main as history_main

RECIPE_DIR = Path(__file__).resolve().parent.parent / "egs2" / "aishell_ner" / "llm1"
KALDI_FILES = ("wav.scp", "utt2spk", "spk2utt", "text", "text_ner", "entities")

# (set, speaker, uttid, AISHELL transcript or None, AISHELL-NER transcript or None); audio exists when set is not None.
GOOD = [
    ("train", "S0001", "BAC009S0001W0001", "张三 在 北京", "[张三]在(北京)"),
    ("train", "S0001", "BAC009S0001W0002", "黑色 ｔ 恤", "黑色ｔ恤"),
    ("train", "S0001", "BAC009S0001W0003", "清华 大学 招生", "<清华大学>招生"),
    ("dev", "S0002", "BAC009S0002W0001", "上海 下雨", "(上海)下雨"),
    ("test", "S0003", "BAC009S0003W0001", "李四 说", "[李四]说"),
]
BAD = [
    ("train", "S0001", "BAC009S0001W0004", "张三 在 北京", "[张三在北京"),  # unbalanced
    ("train", "S0001", "BAC009S0001W0005", "北京 大学", "<(北京)大学>"),  # nested
    ("train", "S0001", "BAC009S0001W0006", "在 北京", "在[]北京"),  # empty
    ("train", "S0001", "BAC009S0001W0007", "你 好 吗", "你好"),  # text differs from text_ner
    ("train", "S0001", "BAC009S0001W0008", "没有 标注", None),  # audio without NER transcript
    ("train", "S0001", "BAC009S0001W0009", None, None),  # audio without any transcript
    (None, None, "BAC009S0001W0100", "没有 音频", "没有音频"),  # transcripts without audio
    ("train", "S0001", "BAC009S0001W0010", "", ""),  # empty transcript
]


def write_tree(root: Path, entries, ner_layout: str = "split") -> list[Path]:
    """Write data_aishell/ and the NER file(s); returns the NER files."""
    transcript, ner = [], {"train": [], "dev": [], "test": []}
    for subset, speaker, uttid, text, marked in entries:
        if subset is not None:
            wav = root / "data_aishell" / "wav" / subset / speaker / f"{uttid}.wav"
            wav.parent.mkdir(parents=True, exist_ok=True)
            wav.write_bytes(b"RIFF" + bytes(40) + bytes(3200))  # header-sized stub + 0.1 s
        if text is not None:
            transcript.append(f"{uttid} {text}")
        if marked is not None:
            ner[subset or "train"].append(f"{uttid} {marked}")
    (root / "data_aishell" / "transcript").mkdir(parents=True, exist_ok=True)
    (root / "data_aishell" / "transcript" / "aishell_transcript_v0.8.txt").write_text("\n".join(transcript) + "\n", encoding="utf-8")
    if ner_layout == "combined":
        path = root / "aishell_ner_transcript.txt"
        path.write_text("".join(line + "\n" for lines in ner.values() for line in lines), encoding="utf-8")
        return [path]
    paths = []
    for subset, lines in ner.items():
        path = root / f"aishell_ner_transcript.{subset}.txt"
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        paths.append(path)
    return paths


def read_table(path: Path) -> dict[str, str]:
    return dict((line.split(" ", 1) + [""])[:2] for line in path.read_text(encoding="utf-8").splitlines())


def test_good_utterances_are_written_in_kaldi_form(tmp_path):
    ner_files = write_tree(tmp_path / "corpus", GOOD)
    summary = prepare(tmp_path / "corpus", ner_files, tmp_path / "data")  # the parent of data_aishell works too
    assert {s: summary.sets[s].utterances for s in ("train", "dev", "test")} == {"train": 3, "dev": 1, "test": 1}
    assert sum(summary.problems.values()) == 0
    train = tmp_path / "data" / "train"
    assert read_table(train / "text") == {
        "BAC009S0001W0001": "张三在北京",
        "BAC009S0001W0002": "黑色t恤",
        "BAC009S0001W0003": "清华大学招生",
    }
    assert read_table(train / "text_ner")["BAC009S0001W0001"] == "[张三]在(北京)"
    assert read_table(train / "text_ner")["BAC009S0001W0002"] == "黑色t恤"
    assert (train / "entities").read_text(encoding="utf-8").splitlines() == [
        "BAC009S0001W0001 PER:张三 LOC:北京",
        "BAC009S0001W0002",
        "BAC009S0001W0003 ORG:清华大学",
    ]
    assert (train / "spk2utt").read_text().splitlines() == ["S0001 BAC009S0001W0001 BAC009S0001W0002 BAC009S0001W0003"]
    assert set(read_table(train / "utt2spk").values()) == {"S0001"}
    wav_scp = read_table(train / "wav.scp")
    assert wav_scp["BAC009S0001W0001"] == str((tmp_path / "corpus/data_aishell/wav/train/S0001/BAC009S0001W0001.wav").resolve())
    for name in KALDI_FILES:
        ids = [line.split()[0] for line in (train / name).read_text(encoding="utf-8").splitlines()]
        assert ids == sorted(ids)
    assert summary.sets["train"].entities == {"PER": 1, "LOC": 1, "ORG": 1}
    assert summary.sets["train"].seconds == pytest.approx(0.3)


def test_bad_input_is_reported_counted_and_skipped(tmp_path, capsys):
    duplicates = [
        ("test", "S0002", "BAC009S0002W0001", None, None),  # the same id's audio again in another set
        (None, None, "BAC009S0001W0001", None, "[王五]在北京"),  # a second NER line for an id
    ]
    ner_files = write_tree(tmp_path / "corpus", GOOD + BAD + duplicates)
    summary = prepare(tmp_path / "corpus" / "data_aishell", ner_files, tmp_path / "data", max_printed_per_kind=100)
    assert summary.problems == {
        aishell.AUDIO_WITHOUT_TRANSCRIPT: 2,
        aishell.TRANSCRIPT_WITHOUT_AUDIO: 2,  # one line in each transcript
        aishell.MALFORMED_MARKS: 3,
        aishell.EMPTY_TRANSCRIPT: 1,
        aishell.DUPLICATE_ID: 2,
        aishell.TEXT_MISMATCH: 1,
        aishell.INVALID_UTF8: 0,
        aishell.UNREADABLE_AUDIO: 0,
        aishell.OTHER_SPEAKERS_DIRECTORY: 0,
        aishell.IDS_DIFFER_IN_CASE: 0,
        aishell.SPEAKER_WITHOUT_AUDIO: 0,
        aishell.UNREADABLE_SPEAKER: 0,
        aishell.BAD_TARBALL: 0,
        aishell.INVISIBLE_CHARACTERS: 0,
    }
    # Only the good utterances survive, the first of each duplicate kept.
    written = {s: set(read_table(tmp_path / "data" / s / "text")) for s in ("train", "dev", "test")}
    assert written == {"train": {u for _, _, u, _, _ in GOOD[:3]}, "dev": {"BAC009S0002W0001"}, "test": {"BAC009S0003W0001"}}
    assert read_table(tmp_path / "data" / "train" / "text_ner")["BAC009S0001W0001"] == "[张三]在(北京)"

    log = (tmp_path / "data" / "local" / "stage1_problems.txt").read_text(encoding="utf-8")
    train_ner = tmp_path / "corpus" / "aishell_ner_transcript.train.txt"
    transcript = tmp_path / "corpus" / "data_aishell" / "transcript" / "aishell_transcript_v0.8.txt"
    expected = [
        f"malformed marks: {train_ner}:4: BAC009S0001W0004: mark '[' opened at column 0 is never closed",
        f"malformed marks: {train_ner}:5: BAC009S0001W0005: nested mark",
        f"malformed marks: {train_ner}:6: BAC009S0001W0006: empty entity",
        f"text differs from text_ner: {train_ner}:7: BAC009S0001W0007",
        "audio without transcript: ",
        "BAC009S0001W0008 has no line in the AISHELL-NER transcripts",
        "BAC009S0001W0009 has no line in the AISHELL transcript",
        f"transcript without audio: {transcript}:11: BAC009S0001W0100 has no wav file",
        f"transcript without audio: {train_ner}:8: BAC009S0001W0100 has no wav file",
        f"duplicate id: {train_ner}:10: BAC009S0001W0001 already at {train_ner}:1; kept the first",
        "test/S0002/BAC009S0002W0001.wav: BAC009S0002W0001 also at",
        f"empty transcript: {transcript}:12: BAC009S0001W0010 has an empty transcript",
    ]
    for fragment in expected:
        assert fragment in log
    assert len(log.splitlines()) == 11
    assert "WARNING: malformed marks" in capsys.readouterr().err


def test_a_stage_1_that_fails_half_way_leaves_the_previous_data_as_it_was(tmp_path, monkeypatch):
    ner_files = write_tree(tmp_path / "corpus", GOOD)
    prepare(tmp_path / "corpus", ner_files, tmp_path / "data")
    before = {p: p.read_bytes() for p in (tmp_path / "data").rglob("*") if p.is_file()}
    write = aishell.write_data_dir

    def killed_at_test(data_dir, utterances):
        if data_dir.name.startswith("test"):
            raise KeyboardInterrupt  # as a kill would stop it
        return write(data_dir, utterances)

    monkeypatch.setattr(aishell, "write_data_dir", killed_at_test)
    (tmp_path / "corpus" / "data_aishell" / "wav" / "train" / "S0001" / "BAC009S0001W0001.wav").unlink()
    with pytest.raises(KeyboardInterrupt):
        prepare(tmp_path / "corpus", ner_files, tmp_path / "data")
    assert all(p.read_bytes() == content for p, content in before.items())


def test_combined_and_split_ner_files_give_the_same_data(tmp_path):
    outputs = []
    for layout in ("combined", "split"):
        corpus = tmp_path / layout
        ner_files = write_tree(corpus, GOOD + BAD, ner_layout=layout)
        assert len(ner_files) == (1 if layout == "combined" else 3)
        prepare(corpus / "data_aishell", ner_files, tmp_path / f"data_{layout}")
        outputs.append({
            f"{s}/{name}": (tmp_path / f"data_{layout}" / s / name).read_text(encoding="utf-8").replace(str(corpus), "ROOT")
            for s in ("train", "dev", "test") for name in KALDI_FILES
        })
    assert outputs[0] == outputs[1]
    assert len(read_table(tmp_path / "data_split" / "train" / "text")) == 3


def test_speaker_tarballs_are_unpacked_once(tmp_path):
    corpus = tmp_path / "corpus"
    ner_files = write_tree(corpus, GOOD)
    # The openslr release ships wav/<SPK>.tar.gz holding <set>/<SPK>/<uttid>.wav.
    wav_dir = corpus / "data_aishell" / "wav"
    with tarfile.open(wav_dir / "S0001.tar.gz", "w:gz") as archive:
        archive.add(wav_dir / "train" / "S0001", arcname="train/S0001")
    for wav in (wav_dir / "train" / "S0001").iterdir():
        wav.unlink()
    (wav_dir / "train" / "S0001").rmdir()

    summary = prepare(corpus / "data_aishell", ner_files, tmp_path / "data", nj=2)
    assert summary.sets["train"].utterances == 3
    assert (wav_dir / "train" / "S0001" / "BAC009S0001W0002.wav").is_file()
    assert (wav_dir / ".S0001.tar.gz.unpacked").is_file()

    marker = wav_dir / "train" / "S0001" / "BAC009S0001W0001.wav"
    marker.write_bytes(b"changed")  # a second extraction would overwrite it
    assert unpack_speaker_tarballs(wav_dir, aishell.ProblemReport(tmp_path / "problems.txt"), nj=2) == 0
    summary = prepare(corpus / "data_aishell", ner_files, tmp_path / "data2")
    assert marker.read_bytes() == b"changed"
    assert summary.sets["train"].utterances == 3


def test_fatal_errors_name_what_is_missing(tmp_path, capsys):
    assert aishell.main(["--aishell_root", str(tmp_path / "nowhere"), "--ner_transcripts", "x.txt"]) == 1
    assert f"no AISHELL-1 corpus at {tmp_path / 'nowhere'}" in capsys.readouterr().err
    ner_files = write_tree(tmp_path / "corpus", GOOD)
    with pytest.raises(DataPrepError, match="transcript file not found: .*missing.txt"):
        prepare(tmp_path / "corpus", [ner_files[0], tmp_path / "missing.txt"], tmp_path / "data")


def test_download_without_network_is_a_clear_error(tmp_path):
    with pytest.raises(DataPrepError, match="cannot download http://127.0.0.1:9/data_aishell.tgz.*set AISHELL in db.sh"):
        download_data_aishell(tmp_path, url="http://127.0.0.1:9/data_aishell.tgz")


def test_history_follows_speaker_and_id_order():
    utt2spk = {  # deliberately unsorted; W0004 was filtered out
        "BAC009S0002W0003": "S0002",
        "BAC009S0001W0005": "S0001",
        "BAC009S0001W0001": "S0001",
        "BAC009S0001W0003": "S0001",
        "BAC009S0002W0001": "S0002",
        "BAC009S0001W0002": "S0001",
    }
    history = build_history(utt2spk, k=2)
    assert history == {
        "BAC009S0001W0001": [],
        "BAC009S0001W0002": ["BAC009S0001W0001"],
        "BAC009S0001W0003": ["BAC009S0001W0001", "BAC009S0001W0002"],
        "BAC009S0001W0005": ["BAC009S0001W0002", "BAC009S0001W0003"],
        "BAC009S0002W0001": [],  # a new speaker starts without history
        "BAC009S0002W0003": ["BAC009S0002W0001"],
    }
    assert all(h == [] for h in build_history(utt2spk, k=0).values())
    assert build_history(utt2spk, k=10)["BAC009S0001W0005"] == ["BAC009S0001W0001", "BAC009S0001W0002", "BAC009S0001W0003"]
    with pytest.raises(ValueError):
        build_history(utt2spk, k=-1)


def test_history_of_speed_perturbed_copies_stays_within_the_copy(tmp_path):
    lines = []
    for prefix in ("", "sp0.9-", "sp1.1-"):
        for w in (1, 2, 3):
            lines.append(f"{prefix}BAC009S0001W000{w} {prefix}S0001")
    (tmp_path / "utt2spk").write_text("\n".join(sorted(lines)) + "\n")
    assert history_main([str(tmp_path), "--k", "2"]) == 0
    got = (tmp_path / "utt2history").read_text().splitlines()
    assert got == sorted(got)
    assert "sp0.9-BAC009S0001W0003 sp0.9-BAC009S0001W0001 sp0.9-BAC009S0001W0002" in got
    assert "sp1.1-BAC009S0001W0002 sp1.1-BAC009S0001W0001" in got
    assert "BAC009S0001W0001" in got
    assert len(got) == 9


def test_data_sh_prepares_a_corpus_with_history(tmp_path):
    ner_files = write_tree(tmp_path / "corpus", GOOD + BAD)
    result = subprocess.run(
        ["local/data.sh", "--aishell_root", str(tmp_path / "corpus" / "data_aishell"),
         "--ner_transcripts", " ".join(map(str, ner_files)), "--history_k", "2", "--nj", "1",
         "--output_dir", str(tmp_path / "data")],
        cwd=RECIPE_DIR, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "text differs from text_ner" in result.stdout  # the summary table
    assert (tmp_path / "data" / "train" / "utt2history").read_text().splitlines() == [
        "BAC009S0001W0001",
        "BAC009S0001W0002 BAC009S0001W0001",
        "BAC009S0001W0003 BAC009S0001W0001 BAC009S0001W0002",
    ]
    for subset in ("dev", "test"):
        assert set(read_table(tmp_path / "data" / subset / "utt2history")) == set(read_table(tmp_path / "data" / subset / "text"))
