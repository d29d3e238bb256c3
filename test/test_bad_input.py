"""Every kind of bad input, through the stage or entry point that meets it (docs/recipe.md: "Bad input and faults").

For each kind: the report names the file and line, the path or the utterance id; the stage's summary
counts it; and the good utterances all arrive. Stage 1 runs once on a small corpus damaged in every way
it meets; stage 3, scoring, RESULTS.md and decoding each get their own small input.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml

from espnet_llm.bin import score_cer, score_ner, speech_llm_inference
from espnet_llm.data_prep import aishell, length_filter
from espnet_llm.tasks.speech_llm import SpeechLLMTask

RECIPE = Path(__file__).resolve().parents[1] / "egs2" / "aishell_ner" / "llm1"
SETS = ("train", "dev", "test")


def write_wav(path: Path, seconds: float = 0.2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(16000 * seconds)) / 16000
    soundfile.write(path, (0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype(np.int16), 16000, subtype="PCM_16")


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def table(path: Path) -> dict[str, str]:
    return dict((line.split(" ", 1) + [""])[:2] for line in path.read_text(encoding="utf-8").splitlines())


def uttid(speaker: int, n: int) -> str:
    return f"BAC009S{speaker:04d}W{n:04d}"


# ------------------------------------------------------------------------------------------------ stage 1

GOOD_SENTENCES = [("张三 在 北京", "[张三]在(北京)"), ("清华 大学 招生", "<清华大学>招生"), ("今天 下雨", "今天下雨")]


class Corpus:
    """An AISHELL-shaped corpus: good utterances of three speakers per set, and the damage added to it."""

    def __init__(self, root: Path):
        self.root = root
        self.wav_dir = root / "data_aishell" / "wav"
        self.transcript: list[str] = []
        self.ner = {s: [] for s in SETS}
        self.good: dict[str, set[str]] = {s: set() for s in SETS}
        for k, subset in enumerate(SETS):
            for speaker in (10 * k + 1, 10 * k + 2):
                for n, (plain, marked) in enumerate(GOOD_SENTENCES, 1):
                    self.add(subset, speaker, n, plain, marked)
                    self.good[subset].add(uttid(speaker, n))

    def add(self, subset, speaker, n, plain, marked, wav=True) -> str:
        utt = uttid(speaker, n)
        if wav:
            write_wav(self.wav_dir / subset / f"S{speaker:04d}" / f"{utt}.wav")
        if plain is not None:
            self.transcript.append(f"{utt} {plain}")
        if marked is not None:
            self.ner[subset].append(f"{utt} {marked}")
        return utt

    def write(self) -> list[Path]:
        write_lines(self.root / "data_aishell" / "transcript" / "aishell_transcript_v0.8.txt", self.transcript)
        return [write_lines(self.root / f"aishell_ner_transcript.{s}.txt", self.ner[s]) for s in SETS]


def summary_counts(stdout: str) -> dict[str, int]:
    """The 'skipped' rows of stage 1's summary table."""
    return {kind: int(m.group(1)) for kind in aishell.PROBLEM_KINDS
            for m in [re.search(rf"^  {re.escape(kind)}\s+(\d+)$", stdout, re.M)] if m}


def run_stage1(aishell_root: Path, ner_files: list[Path], output_dir: Path) -> tuple[int, str, str]:
    """Stage 1's entry point (local/data.sh runs it); its exit status, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = aishell.main(["--aishell_root", str(aishell_root), "--output_dir", str(output_dir),
                               "--ner_transcripts", *map(str, ner_files)])
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    """One stage-1 run over every kind of bad input that stage 1 meets.

    Returns the run and, per kind, the count expected in the summary and the fragments its reports must hold."""
    root = tmp_path_factory.mktemp("stage1")
    corpus = Corpus(root / "corpus")
    expected = {}
    train_ner = corpus.root / "aishell_ner_transcript.train.txt"
    transcript = corpus.root / "data_aishell" / "transcript" / "aishell_transcript_v0.8.txt"

    def ner_line():
        return f"{train_ner}:{len(corpus.ner['train'])}"

    u = corpus.add("train", 1, 101, None, None)
    expected[aishell.AUDIO_WITHOUT_TRANSCRIPT] = (1, [f"{u} has no line in the AISHELL transcript"])
    u = corpus.add("train", 1, 102, "没有 音频", "没有音频", wav=False)
    expected[aishell.TRANSCRIPT_WITHOUT_AUDIO] = (2, [f"{transcript}:{len(corpus.transcript)}: {u} has no wav file",
                                                      f"{ner_line()}: {u} has no wav file"])
    reports = []
    for n, marked, error in [(103, "[张三在北京", "is never closed"), (104, "<(北京)大学>", "nested mark"),
                             (105, "在[]北京", "empty entity")]:
        u = corpus.add("train", 1, n, "在 北京", marked)
        reports += [f"{ner_line()}: {u}: ", error]
    expected[aishell.MALFORMED_MARKS] = (3, reports)
    corpus.ner["train"].append(f"{uttid(1, 1)} [王五]在北京")  # a second NER line for a good id
    write_wav(corpus.wav_dir / "test" / "S0011" / f"{uttid(11, 1)}.wav")  # a dev id's audio again, in test
    expected[aishell.DUPLICATE_ID] = (2, [f"{ner_line()}: {uttid(1, 1)} already at {train_ner}:1",
                                          f"S0011/{uttid(11, 1)}.wav: {uttid(11, 1)} also at"])
    u = corpus.add("train", 1, 107, "你 好 吗", "你好")
    expected[aishell.TEXT_MISMATCH] = (1, [f"{ner_line()}: {u}"])
    u = corpus.add("train", 1, 108, "", "")
    reports = [f"{transcript}:{len(corpus.transcript)}: {u} has an empty transcript"]
    u = corpus.add("train", 1, 109, "有 文字", "")  # the NER line holds the id alone
    reports.append(f"{ner_line()}: {u} has an empty transcript")
    expected[aishell.EMPTY_TRANSCRIPT] = (2, reports)

    # A dangling wav symlink (the corpus moved, a disk not mounted).
    link = corpus.wav_dir / "train" / "S0002" / f"{uttid(2, 110)}.wav"
    link.symlink_to(corpus.root / "elsewhere" / link.name)
    corpus.add("train", 2, 110, "北京 下雨", "(北京)下雨", wav=False)
    # Named .wav, but no wav file: a directory, a FIFO, a symlink to a directory; and a name that is not UTF-8.
    speaker1 = corpus.wav_dir / "train" / "S0001"
    (speaker1 / f"{uttid(1, 120)}.wav").mkdir()
    os.mkfifo(speaker1 / f"{uttid(1, 121)}.wav")
    (speaker1 / f"{uttid(1, 122)}.wav").symlink_to(corpus.wav_dir / "train")
    os.close(os.open(os.fsencode(speaker1 / uttid(1, 123)) + b"\xff.wav", os.O_CREAT | os.O_WRONLY))
    expected[aishell.UNREADABLE_AUDIO] = (5, [f"{link}: {uttid(2, 110)}: No such file or directory",
                                              f"{uttid(1, 120)}: a directory, not a wav file",
                                              f"{uttid(1, 121)}: a FIFO, not a wav file",
                                              f"{uttid(1, 122)}: a directory, not a wav file",
                                              f"{uttid(1, 123)}\\udcff.wav: the file name is not UTF-8"])
    # A wav filed under another speaker; a wav whose name differs from its transcript lines' id in case; a speaker
    # directory linked to itself (ELOOP: a traceback before).
    u = corpus.add("train", 1, 124, "别人 的", "别人的", wav=False)
    write_wav(corpus.wav_dir / "train" / "S0002" / f"{u}.wav")
    expected[aishell.OTHER_SPEAKERS_DIRECTORY] = (1, [f"S0002/{u}.wav: {u} is filed under speaker S0002"])
    u = corpus.add("train", 2, 125, "大小 写", "大小写", wav=False)
    write_wav(corpus.wav_dir / "train" / "S0002" / f"{u.lower()}.wav")
    expected[aishell.IDS_DIFFER_IN_CASE] = (1, [f"{u.lower()} has no transcript line, but {transcript}:"])
    (corpus.wav_dir / "train" / "S0009").symlink_to("S0009")
    expected[aishell.UNREADABLE_SPEAKER] = (1, ["S0009: speaker S0009: Too many levels of symbolic links"])
    # A speaker directory without a wav.
    (corpus.wav_dir / "dev" / "S0013").mkdir(parents=True)
    expected[aishell.SPEAKER_WITHOUT_AUDIO] = (1, [f"{corpus.wav_dir / 'dev' / 'S0013'}: speaker S0013 has no .wav file"])
    ner_files = corpus.write()

    # A transcript line with bytes that are not UTF-8: that utterance is lost, and named once.
    u = uttid(2, 111)
    write_wav(corpus.wav_dir / "train" / "S0002" / f"{u}.wav")
    with open(transcript, "ab") as f:
        f.write(f"{u} 北京 ".encode() + b"\xff\xfe" + "下雨\n".encode())
    with open(train_ner, "a", encoding="utf-8") as f:
        f.write(f"{u} (北京)下雨\n")
    expected[aishell.INVALID_UTF8] = (1, [f"{transcript}:{len(corpus.transcript) + 1}: {u}: byte 0xff"])
    # The dev NER file as two files joined with cat, the second starting with a byte-order mark: a good line.
    u = uttid(12, 4)
    write_wav(corpus.wav_dir / "dev" / "S0012" / f"{u}.wav")
    with open(transcript, "a", encoding="utf-8") as f:
        f.write(f"{u} 上海 下雨\n")
    with open(ner_files[1], "ab") as f:
        f.write(f"\ufeff{u} (上海)下雨\n".encode())
    corpus.good["dev"].add(u)
    # Control and invisible characters inside lines, removed with the utterance kept (a stray CR cut the line there,
    # and in one file made a false mismatch and shifted the line numbers after it); the test NER file in CRLF.
    for n, plain, marked in [(20, "不过 她\r参加 了", "不过[她]\r参加了"), (21, "你\x00\x07 好\u200b", "你\u00ad好\ufeff")]:
        u = uttid(2, n)
        write_wav(corpus.wav_dir / "train" / "S0002" / f"{u}.wav")
        for path, line in ((transcript, plain), (train_ner, marked)):
            with open(path, "a", encoding="utf-8", newline="") as f:
                f.write(f"{u} {line}\n")
        corpus.good["train"].add(u)
    expected[aishell.INVISIBLE_CHARACTERS] = (4, [f"{uttid(2, 20)}: removed U+000D control",
                                                  "U+0000 control, U+0007 control, U+200B ZERO WIDTH SPACE",
                                                  "U+00AD SOFT HYPHEN, U+FEFF ZERO WIDTH NO-BREAK SPACE"])
    ner_files[2].write_bytes(ner_files[2].read_bytes().replace(b"\n", b"\r\n"))

    status, out, err = run_stage1(corpus.root / "data_aishell", ner_files, root / "data")
    return {"status": status, "out": out, "err": err, "expected": expected, "good": corpus.good, "data": root / "data",
            "log": (root / "data" / "local" / "stage1_problems.txt").read_text(encoding="utf-8")}


STAGE1_KINDS = (aishell.AUDIO_WITHOUT_TRANSCRIPT, aishell.TRANSCRIPT_WITHOUT_AUDIO, aishell.MALFORMED_MARKS,
                aishell.DUPLICATE_ID, aishell.TEXT_MISMATCH, aishell.EMPTY_TRANSCRIPT, aishell.UNREADABLE_AUDIO,
                aishell.SPEAKER_WITHOUT_AUDIO, aishell.INVALID_UTF8, aishell.OTHER_SPEAKERS_DIRECTORY,
                aishell.IDS_DIFFER_IN_CASE, aishell.UNREADABLE_SPEAKER, aishell.INVISIBLE_CHARACTERS)


@pytest.mark.parametrize("kind", STAGE1_KINDS)
def test_stage1_reports_and_counts_each_kind(stage1, kind):
    assert stage1["status"] == 0, stage1["err"]
    count, fragments = stage1["expected"][kind]
    assert summary_counts(stage1["out"]).get(kind) == count, stage1["out"]
    reports = [line for line in stage1["log"].splitlines() if line.startswith(f"{kind}: ")]
    assert len(reports) == count, reports
    for fragment in fragments:
        assert any(fragment in line for line in reports), (fragment, reports)


def test_stage1_keeps_every_good_utterance_and_reports_nothing_else(stage1):
    assert stage1["status"] == 0, stage1["err"]
    data = stage1["data"]
    for subset in SETS:
        assert set(table(data / subset / "text")) == stage1["good"][subset], subset
        assert set(table(data / subset / "text_ner")) == stage1["good"][subset], subset
    assert table(data / "train" / "text_ner")[uttid(1, 1)] == "[张三]在(北京)"  # the first of a duplicate kept
    assert table(data / "dev" / "text_ner")[uttid(12, 4)] == "(上海)下雨"  # after the byte-order mark
    assert table(data / "train" / "text")[uttid(2, 20)] == "不过她参加了" and table(data / "train" / "text")[uttid(2, 21)] == "你好"
    expected_total = sum(count for count, _ in stage1["expected"].values())
    assert sum(summary_counts(stage1["out"]).values()) == expected_total
    assert len(stage1["log"].splitlines()) == expected_total


def test_stage1_names_a_truncated_speaker_tarball_skips_its_speaker_and_reruns(tmp_path):
    corpus = Corpus(tmp_path / "corpus")
    for n in (1, 2):
        corpus.add("train", 3, n, "李四 说", "[李四]说")  # speaker S0003, shipped as a tarball
    ner_files = corpus.write()
    speaker_dir = corpus.wav_dir / "train" / "S0003"
    tarball = corpus.wav_dir / "S0003.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(speaker_dir, arcname="train/S0003")
    whole = tarball.read_bytes()
    for wav in speaker_dir.iterdir():
        wav.unlink()
    speaker_dir.rmdir()
    tarball.write_bytes(whole[: len(whole) * 2 // 3])  # a download cut short

    for attempt in range(2):  # a rerun meets the same tarball and needs no clean-up
        status, out, err = run_stage1(corpus.root / "data_aishell", ner_files, tmp_path / f"data{attempt}")
        assert status == 0, err
        assert summary_counts(out)[aishell.BAD_TARBALL] == 1
        assert f"{aishell.BAD_TARBALL}: {tarball}: " in err
        assert not speaker_dir.exists()  # nothing half-unpacked
        assert set(table(tmp_path / f"data{attempt}" / "train" / "text")) == corpus.good["train"]
    assert sorted(p.name for p in corpus.wav_dir.iterdir()) == ["S0003.tar.gz", "dev", "test", "train"]

    tarball.write_bytes(whole)  # downloaded again
    status, out, err = run_stage1(corpus.root / "data_aishell", ner_files, tmp_path / "data2")
    assert status == 0 and summary_counts(out)[aishell.BAD_TARBALL] == 0
    assert set(table(tmp_path / "data2" / "train" / "text")) == corpus.good["train"] | {uttid(3, 1), uttid(3, 2)}


# ------------------------------------------------------------------------------------------------ stage 3

def recipe_copy(root: Path) -> Path:
    """The recipe's scripts linked into a directory of its own, so that data/, dump/ and exp/ are written there."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("run.sh", "path.sh", "cmd.sh", "db.sh", "conf", "local", "utils"):
        (root / name).symlink_to(RECIPE / name)
    return root


def test_stage3_names_and_counts_unreadable_audio(tmp_path):
    recipe = recipe_copy(tmp_path / "recipe")
    data = tmp_path / "recipe" / "data" / "test"
    ids = [uttid(21, n) for n in range(1, 5)]
    for utt in ids:
        write_wav(tmp_path / "wav" / f"{utt}.wav")
    (tmp_path / "wav" / f"{ids[1]}.wav").write_bytes(b"RIFF\x00\x00 not a wav")  # damaged after stage 1
    (tmp_path / "wav" / f"{ids[2]}.wav").unlink()  # gone after stage 1
    write_lines(data / "wav.scp", [f"{u} {tmp_path / 'wav' / u}.wav" for u in ids])
    write_lines(data / "text", [f"{u} 今天下雨" for u in ids])
    write_lines(data / "utt2spk", [f"{u} S0021" for u in ids])
    write_lines(data / "spk2utt", ["S0021 " + " ".join(ids)])
    proc = subprocess.run(["local/format_audio.sh", "--nj", "2", "data/test", "dump/raw/org/test"], cwd=recipe,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "WARNING: 2 utterance(s) of test could not be read and are left out" in proc.stdout
    assert f"ERROR utterance {ids[1]}: cannot read audio" in proc.stdout
    assert f"ERROR utterance {ids[2]}: cannot read audio" in proc.stdout
    assert set(table(recipe / "dump/raw/org/test/wav.scp")) == {ids[0], ids[3]}
    assert set(table(recipe / "dump/raw/org/test/text")) == {ids[0], ids[3]}


# ------------------------------------------------------------------------------------------------ stage 4

def test_stage4_removes_out_of_limit_training_audio_by_reason_and_keeps_test_sets_whole(tmp_path, capsys):
    ids = [uttid(1, n) for n in range(1, 5)]
    seconds = {ids[0]: 3.0, ids[1]: 0.05, ids[2]: 31.0, ids[3]: 4.0}  # ids[1] too short, ids[2] over Whisper's 30 s
    org = tmp_path / "org"
    write_lines(org / "wav.scp", [f"{u} {tmp_path / u}.wav" for u in ids])
    write_lines(org / "utt2num_samples", [f"{u} {int(16000 * seconds[u])}" for u in ids])
    write_lines(org / "text", [f"{u} 今天下雨" for u in ids])
    write_lines(org / "utt2spk", [f"{u} S0001" for u in ids])
    write_lines(org / "spk2utt", ["S0001 " + " ".join(ids)])
    limits = ["--min_duration", "0.1", "--max_duration", "30"]
    assert length_filter.main(limits + [str(org), str(tmp_path / "train")]) == 0
    err = capsys.readouterr().err
    assert "kept 2 of 4 utterances, removed 2" in err
    assert f"too short (< 0.1 s): 1 ({ids[1]})" in err and f"too long (> 30.0 s): 1 ({ids[2]})" in err
    assert set(table(tmp_path / "train" / "text")) == {ids[0], ids[3]}
    assert length_filter.main(limits + ["--report_only", str(org)]) == 0  # a test set: counted, nothing removed
    assert "kept all 4 utterances (a test set); outside the limits: 2" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ scoring

def scorer_error(main, ref: Path, hyp: Path, out_dir: Path) -> str:
    """A scorer's entry point on bad input: it exits with one line that names the problem, no traceback."""
    with pytest.raises(SystemExit) as exit_info:
        main(["--ref", str(ref), "--hyp", str(hyp), "--out_dir", str(out_dir)])
    message = str(exit_info.value.code)
    assert message.startswith("ERROR: ") and "\n" not in message
    return message


@pytest.mark.parametrize("main", [score_cer.main, score_ner.main], ids=["cer", "ner"])
def test_scorers_name_file_and_line_of_undecodable_and_duplicate_lines(tmp_path, main):
    ref = write_lines(tmp_path / "ref", ["u1 [张三]在北京", "u2 今天下雨"])
    hyp = tmp_path / "hyp"
    hyp.write_bytes("u1 张三在北京\n".encode() + b"u2 \xe4\xbb\n")
    assert scorer_error(main, ref, hyp, tmp_path / "out") == f"ERROR: {hyp}:2: byte 0xe4 at byte 3 is not UTF-8"
    write_lines(hyp, ["u1 张三在北京", "u2 今天下雨", "u1 又是"])
    assert scorer_error(main, ref, hyp, tmp_path / "out") == (
        f"ERROR: {hyp}:3: utterance id u1 appears twice (first at line 1)")


def test_scorers_drop_a_byte_order_mark_in_the_middle_of_a_file(tmp_path):
    ref = write_lines(tmp_path / "ref", ["u1 [张三]在北京", "u2 今天下雨"])
    hyp = tmp_path / "hyp"  # two decodings joined with cat, each with its mark
    hyp.write_bytes(("\ufeffu1 张三在北京\n" + "\ufeffu2 今天下雨\n").encode())
    score_cer.main(["--ref", str(ref), "--hyp", str(hyp), "--out_dir", str(tmp_path / "cer")])
    result = json.loads((tmp_path / "cer" / "result.json").read_text(encoding="utf-8"))
    assert result["missing_hypotheses"] == [] and result["extra_hypotheses"] == []
    assert result["counts"]["sentences"] == 2 and result["counts"]["correct"] == 9


def test_ner_scorer_leaves_out_a_malformed_reference_by_file_and_line(tmp_path):
    ref = write_lines(tmp_path / "ref", ["u1 [张三]在(北京)", "u2 [李四在上海", "u3 今天下雨"])
    hyp = write_lines(tmp_path / "hyp", ["u1 [张三]在(北京)", "u2 [李四]在上海", "u3 今天下雨"])
    score_ner.main(["--ref", str(ref), "--hyp", str(hyp), "--out_dir", str(tmp_path / "ner")])
    result = json.loads((tmp_path / "ner" / "result.json").read_text(encoding="utf-8"))
    assert list(result["malformed_references"]) == ["u2"]
    assert result["malformed_references"]["u2"].startswith(f"{ref}:2: ")
    assert result["utterances"] == 2 and result["micro"]["f1"] == 1.0


def test_failing_sclite_falls_back_to_the_aligner(tmp_path, monkeypatch, caplog):
    fake = tmp_path / "bin" / "sclite"
    write_lines(fake, ["#!/bin/sh", "echo 'sclite: cannot allocate memory' >&2", "exit 3"])
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    ref = write_lines(tmp_path / "ref", ["u1 张三在北京", "u2 今天下雨"])
    hyp = write_lines(tmp_path / "hyp", ["u1 张三在北京", "u2 今天"])
    score_cer.main(["--ref", str(ref), "--hyp", str(hyp), "--out_dir", str(tmp_path / "cer")])
    result = json.loads((tmp_path / "cer" / "result.json").read_text(encoding="utf-8"))
    assert result["backend"] == "fallback"
    assert result["counts"]["deletions"] == 2 and result["counts"]["words"] == 9
    assert any(f"{fake} does not work" in r.message and "cannot allocate memory" in r.message for r in caplog.records)


# ------------------------------------------------------------------------------------------------ stage 13

def test_stage13_scores_the_whole_test_set_and_names_what_was_not_decoded(tmp_path):
    """An utterance lost before decoding (stage 3: unreadable) or unreadable in decoding (stage 6) counts as all
    deleted against stage 1's whole set, and RESULTS.md names it."""
    recipe = recipe_copy(tmp_path / "recipe")
    ids = [uttid(21, n) for n in range(1, 5)]
    for root, kept in (("data/test", ids), ("dump/raw/test", ids[:3])):  # ids[3] was left out in stage 3
        write_lines(recipe / root / "text", [f"{u} 今天下雨" for u in kept])
        write_lines(recipe / root / "text_ner", [f"{u} 今天下雨" for u in kept])
        write_lines(recipe / root / "utt2spk", [f"{u} S0021" for u in kept])
    run_dir = recipe / "exp" / "decoder_only" / "cot"
    write_lines(run_dir / "config.yaml", ["model: decoder_only"])
    decode = run_dir / "decode_speech_llm_valid.acc_current.ave" / "test"
    hyps = {ids[0]: "今天下雨", ids[1]: "今天下雨", ids[2]: ""}  # ids[2] had no Whisper features: empty hypothesis
    write_lines(decode / "text", [f"{u} {t}".rstrip() for u, t in hyps.items()])
    write_lines(decode / "text_ner", [f"{u} {t}".rstrip() for u, t in hyps.items()])
    (decode / "logdir" / "output.1").mkdir(parents=True)
    (decode / "logdir" / "output.1" / "parse_repairs.json").write_text(json.dumps(
        {"utterances": 3, "broken": 1, "broken_ids": [ids[2]], "with_problems": 0, "problems": {}}))
    proc = subprocess.run(["./run.sh", "--stage", "13", "--stop_stage", "13", "--systems", "decoder_only",
                           "--llm_phases", "cot", "--test_sets", "test"], cwd=recipe, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = (recipe / "RESULTS.md").read_text(encoding="utf-8")
    assert "|decode_speech_llm_valid.acc_current.ave/test|4|16|50.0|0.0|50.0|0.0|50.0|50.0|" in results
    assert f"- test: 1 utterance(s) of the reference have no hypothesis: {ids[3]}" in results
    assert f"- test: 1 utterance(s) could not be read by decoding: {ids[2]}" in results


def test_stage13_names_the_run_it_could_not_score_and_shows_why(tmp_path):
    """Stage 13 scores the runs side by side, each into its scoring.log: a run that fails is named, and the end of its
    log, with the error, is on run.sh's output, not only in the file."""
    recipe = recipe_copy(tmp_path / "recipe")
    ids = [uttid(21, n) for n in range(1, 3)]
    for root in ("data/test", "dump/raw/test"):
        write_lines(recipe / root / "text", [f"{u} 今天下雨" for u in ids])
        write_lines(recipe / root / "utt2spk", [f"{u} S0021" for u in ids])
    write_lines(recipe / "exp" / "decoder_only" / "cot" / "config.yaml", ["model: decoder_only"])  # never decoded
    proc = subprocess.run(["./run.sh", "--stage", "13", "--stop_stage", "13", "--systems", "decoder_only",
                           "--llm_phases", "cot", "--test_sets", "test"], cwd=recipe, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    assert "Error: score_run decoder_only/cot failed" in proc.stdout + proc.stderr
    assert "the end of exp/decoder_only/cot/scoring.log:" in proc.stdout
    assert "Error: no decoding under exp/decoder_only/cot" in proc.stdout  # the error itself, from the log


# ------------------------------------------------------------------------------------------------ decoding

@pytest.fixture
def decode_args(tmp_path):
    """The inference entry point's options for one utterance, with the training config and model file to vary."""
    write_wav(tmp_path / "a.wav")
    write_lines(tmp_path / "wav.scp", [f"a {tmp_path / 'a.wav'}"])

    def args(config: dict, model_file: Path | None):
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
        return ["--output_dir", str(tmp_path / "decode"), "--data_path_and_name_and_type",
                f"{tmp_path / 'wav.scp'},speech,sound", "--speech_llm_train_config", str(tmp_path / "config.yaml")] + (
            ["--speech_llm_model_file", str(model_file)] if model_file else [])
    return args


def inference_error(argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        speech_llm_inference.main(argv)
    return str(exit_info.value.code)


def test_decoding_checks_the_model_file_before_building_the_model(tmp_path, decode_args, monkeypatch):
    built = []
    monkeypatch.setattr(SpeechLLMTask, "build_model", classmethod(lambda cls, args: built.append(args)))
    config = {"llm": "chatglm3", "llm_conf": {"model_path": str(tmp_path)}}
    missing = tmp_path / "exp" / "valid.acc_current.ave.pth"
    assert inference_error(decode_args(config, missing)) == f"ERROR: model file not found: {missing}"
    truncated = tmp_path / "truncated.pth"
    torch.save({"weight": torch.zeros(1000)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:1500])  # a copy cut short
    message = inference_error(decode_args(config, truncated))
    assert message.startswith(f"ERROR: cannot read the model file {truncated} (truncated, or not a torch checkpoint)")
    assert built == []


def test_a_model_is_built_only_with_the_tokenizer_it_was_trained_with(tiny_models, tmp_path, decode_args):
    from sentencepiece import sentencepiece_model_pb2

    from espnet_llm.llm.tokenizer import ChatGLM3Tokenizer
    from test_speech_llm_train import tiny_config

    trained_with = ChatGLM3Tokenizer(tiny_models / "chatglm3" / "tokenizer.model").fingerprint()
    other = tmp_path / "chatglm3"
    shutil.copytree(tiny_models / "chatglm3", other)
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString((other / "tokenizer.model").read_bytes())
    del proto.pieces[-62:]  # 62 pieces fewer: every special and task token id shifts by 62
    (other / "tokenizer.model").write_bytes(proto.SerializeToString())
    config = {**tiny_config(tiny_models, "decoder_only_short"), "tokenizer_fingerprint": trained_with}
    config["llm_conf"]["model_path"] = str(other)
    message = inference_error(decode_args(config, None))
    now = ChatGLM3Tokenizer(other / "tokenizer.model").fingerprint()["sha256"]
    assert message.startswith(f"ERROR: {other / 'tokenizer.model'}: sha256 {now[:12]}..., but the model was trained "
                              f"with a tokenizer of sha256 {trained_with['sha256'][:12]}...")
    assert "special-token ids shifted: <|asr_long|> <|asr_short|>" in message


def test_decoding_names_the_config_key_of_a_missing_llm(tmp_path, decode_args):
    config = {"llm": "chatglm3", "llm_conf": {"model_path": str(tmp_path / "downloads" / "chatglm3")}}
    assert inference_error(decode_args(config, None)) == (
        f"ERROR: llm_conf.model_path: {tmp_path / 'downloads' / 'chatglm3'} does not exist "
        "(the recipe's stage 5 prepares the models)")
