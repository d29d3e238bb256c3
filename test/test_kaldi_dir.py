"""Kaldi-style data directories: validate / fix / copy / subset / split / combine, on good and bad input,
through espnet_llm.data_prep.kaldi_dir and the recipe's utils/*.sh wrappers."""
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile

from espnet_llm.data_prep.kaldi_dir import (
    DataDirError, combine_data_dirs, contiguous_partition, copy_data_dir, fix_data_dir, read_table,
    split_data_dir, split_keys, subset_data_dir, validate_data_dir,
)

UTILS = Path(__file__).resolve().parents[1] / "egs2" / "aishell_ner" / "llm1" / "utils"

# (speaker, W number, marked transcript)
UTTERANCES = [
    ("S0002", 121, "[张三]在(北京)工作"),
    ("S0002", 122, "今天天气很好"),
    ("S0002", 125, "<国家统计局>发布数据"),
    ("S0003", 10, "(上海)的房价上涨"),
    ("S0003", 11, "[李四]说<万科>很好"),
    ("S0004", 7, "他们去了(广州)"),
    ("S0004", 8, "没有实体的句子"),
    ("S0004", 9, "[王五]和[赵六]"),
]


def plain(marked):
    return "".join(c for c in marked if c not in "[]()<>")


def entities(marked):
    from espnet_llm.text.aishell_ner import parse_marked
    return " ".join(f"{e.type}:{e.text}" for e in parse_marked(marked)[1])


def write(path, lines):
    Path(path).write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def make_data_dir(root: Path, utterances=UTTERANCES, history_k=2) -> Path:
    data = root / "data"
    (root / "wav").mkdir(parents=True, exist_ok=True)
    data.mkdir(parents=True, exist_ok=True)
    rows = sorted((f"BAC009{spk}W{w:04d}", spk, marked) for spk, w, marked in utterances)
    for utt, _, _ in rows:
        soundfile.write(root / "wav" / f"{utt}.wav", np.zeros(160, dtype=np.int16), 16000)
    write(data / "wav.scp", [f"{u} {root / 'wav' / u}.wav" for u, _, _ in rows])
    write(data / "utt2spk", [f"{u} {s}" for u, s, _ in rows])
    spks = sorted({s for _, s, _ in rows})
    write(data / "spk2utt", [f"{s} " + " ".join(u for u, s2, _ in rows if s2 == s) for s in spks])
    write(data / "text", [f"{u} {plain(m)}" for u, _, m in rows])
    write(data / "text_ner", [f"{u} {m}" for u, _, m in rows])
    write(data / "entities", [f"{u} {entities(m)}".rstrip() for u, _, m in rows])
    history = []
    for i, (u, s, _) in enumerate(rows):
        previous = [p for p, s2, _ in rows[:i] if s2 == s][-history_k:]
        history.append(" ".join([u, *previous]))
    write(data / "utt2history", history)
    return data


def lines(path):
    return Path(path).read_text(encoding="utf-8").splitlines()


def set_line(path, index, new):
    content = lines(path)
    content[index] = new
    write(path, content)


def sh(script, *args, **kwargs):
    return subprocess.run([str(UTILS / script), *map(str, args)], capture_output=True, text=True, **kwargs)


@pytest.fixture
def data(tmp_path):
    return make_data_dir(tmp_path)


def test_valid_directory_passes(data):
    assert validate_data_dir(data) == []
    result = sh("validate_data_dir.sh", "--no-feats", data)
    assert result.returncode == 0, result.stderr
    assert "OK (8 utterances, 3 speakers)" in result.stderr


def test_missing_required_file_is_an_error(data):
    (data / "spk2utt").unlink()
    with pytest.raises(DataDirError, match="missing spk2utt"):
        validate_data_dir(data)
    result = sh("validate_data_dir.sh", data)
    assert result.returncode == 1 and "missing spk2utt" in result.stderr
    (data / "text").unlink()
    utils_copy = data.parent / "no_text"
    assert sh("copy_data_dir.sh", data, utils_copy).returncode == 0
    assert validate_data_dir(utils_copy, require_text=False) == []


def test_unsorted_and_duplicate_lines_are_named_with_file_and_line(data):
    content = lines(data / "text")
    content[0], content[1] = content[1], content[0]
    content.append(content[-1].split()[0] + " 重复")
    write(data / "text", content)
    problems = validate_data_dir(data)
    assert any(f"{data / 'text'}:2: 'BAC009S0002W0121' comes after 'BAC009S0002W0122'" in p and "not sorted" in p
               for p in problems), problems
    assert any(f"{data / 'text'}:9: duplicate id 'BAC009S0004W0009' (first on line 8)" in p for p in problems)
    result = sh("validate_data_dir.sh", data)
    assert result.returncode == 1 and "2 problem(s)" in result.stderr


def test_malformed_lines_are_reported(data):
    set_line(data / "wav.scp", 3, "BAC009S0003W0010")
    with open(data / "utt2spk", "ab") as f:
        f.write(b"BAC009S0009W0001 \xff\xfe\n")
    problems = validate_data_dir(data)
    assert any(f"{data / 'wav.scp'}:4: 'BAC009S0003W0010' has no value" in p for p in problems), problems
    assert any(f"{data / 'utt2spk'}:9: not UTF-8" in p for p in problems), problems
    assert any("wav.scp: 1 utterance(s) of utt2spk missing, e.g. BAC009S0003W0010" in p for p in problems), problems


def test_inconsistent_utterance_sets_and_speakers(data):
    write(data / "text_ner", lines(data / "text_ner")[1:])
    write(data / "spk2utt", lines(data / "spk2utt")[:2])
    problems = validate_data_dir(data)
    assert any("text_ner: 1 utterance(s) of utt2spk missing, e.g. BAC009S0002W0121" in p for p in problems), problems
    assert any("spk2utt: disagrees with utt2spk for 1 speaker(s), e.g. S0004" in p for p in problems), problems


def test_speakers_must_be_contiguous_in_id_order(tmp_path):
    data = make_data_dir(tmp_path)
    content = [line.replace("S0003", "S0002") if "W0010" in line else line for line in lines(data / "utt2spk")]
    content = [line.replace("BAC009S0003W0011 S0003", "BAC009S0003W0011 S0005") for line in content]
    write(data / "utt2spk", content)
    problems = validate_data_dir(data)
    assert not any("not contiguous" in p for p in problems)  # S0002 then S0005: still contiguous
    content = [line.replace("BAC009S0004W0008 S0004", "BAC009S0004W0008 S0002") for line in content]
    write(data / "utt2spk", content)
    assert any("utterances of speaker S0002 are not contiguous in id order (at BAC009S0004W0008)" in p
               for p in validate_data_dir(data))


def test_text_ner_must_match_text_and_be_well_marked(data):
    set_line(data / "text_ner", 0, "BAC009S0002W0121 [张三]在(北京)上班")
    set_line(data / "text_ner", 3, "BAC009S0003W0010 (上海的房价上涨")
    set_line(data / "entities", 4, "BAC009S0003W0011 PER:李四")
    problems = validate_data_dir(data)
    assert any("utterance BAC009S0002W0121: without marks '张三在北京上班' differs from text '张三在北京工作'" in p
               for p in problems), problems
    assert any("utterance BAC009S0003W0010: mark '(' opened at column 0 is never closed" in p for p in problems)
    assert any("utterance BAC009S0003W0011: 'PER:李四' differs from the marks of text_ner 'PER:李四 ORG:万科'" in p
               for p in problems), problems
    assert len(problems) == 3


def test_history_must_name_earlier_utterances_of_the_same_speaker_here(data):
    set_line(data / "utt2history", 3, "BAC009S0003W0010 BAC009S0002W0125")
    set_line(data / "utt2history", 4, "BAC009S0003W0011 BAC009S0003W0099")
    set_line(data / "utt2history", 6, "BAC009S0004W0008 BAC009S0004W0009")
    problems = validate_data_dir(data)
    assert any("BAC009S0003W0010: history entry BAC009S0002W0125 belongs to speaker S0002, not S0003" in p for p in problems)
    assert any("BAC009S0003W0011: history entry BAC009S0003W0099 is not in this directory" in p for p in problems)
    assert any("BAC009S0004W0008: history entry BAC009S0004W0009 does not come before it" in p for p in problems)


def test_missing_audio_file_is_reported_unless_a_pipe(data):
    first = lines(data / "wav.scp")[0].split()
    Path(first[1]).unlink()
    problems = validate_data_dir(data)
    assert problems == [f"{data / 'wav.scp'}: utterance {first[0]}: audio file {first[1]} does not exist"]
    assert validate_data_dir(data, check_audio_files=False) == []
    set_line(data / "wav.scp", 0, f"{first[0]} sox {first[1]} -t wav - speed 0.9 |")
    assert validate_data_dir(data) == []


def test_fix_keeps_the_intersection_sorted_and_reports_counts(data):
    write(data / "text", lines(data / "text")[2:])  # drops W0121 and W0122
    content = lines(data / "wav.scp")
    write(data / "wav.scp", content[::-1] + [content[0], "BAC009S0009W0001"])  # unsorted, a duplicate, a malformed line
    (data / "spk2utt").write_text("garbage\n")
    report = fix_data_dir(data)
    text = "\n".join(report)
    assert "removed 2 utterance(s) missing from text, e.g. BAC009S0002W0121" in text
    assert "wav.scp: dropped 1 malformed and 1 duplicate line(s)" in text
    assert "dropped 2 reference(s) to removed utterances" in text  # W0125 named W0121 and W0122
    assert "kept 6 of 8 utterances" in text
    assert validate_data_dir(data) == []
    assert lines(data / "wav.scp") == sorted(lines(data / "wav.scp"))
    assert lines(data / "spk2utt")[0] == "S0002 BAC009S0002W0125"
    assert lines(data / "utt2history")[0] == "BAC009S0002W0125"
    assert (data / ".backup" / "text").is_file()
    result = sh("fix_data_dir.sh", data)
    assert result.returncode == 0 and "kept 6 of 6 utterances" in result.stderr


def test_subset_by_utterance_and_speaker_lists(data, tmp_path):
    write(tmp_path / "list", ["BAC009S0002W0122", "BAC009S0002W0125 extra columns ignored", "BAC009S0099W0001"])
    result = sh("subset_data_dir.sh", "--utt-list", tmp_path / "list", data, tmp_path / "sub")
    assert result.returncode == 0, result.stderr
    assert "1 utterance id(s) of the list not found, e.g. BAC009S0099W0001" in result.stderr
    assert "dropped 2 reference(s) to utterances outside the subset" in result.stderr  # W0121 in both histories
    assert [line.split()[0] for line in lines(tmp_path / "sub" / "text")] == ["BAC009S0002W0122", "BAC009S0002W0125"]
    assert lines(tmp_path / "sub" / "utt2history") == ["BAC009S0002W0122", "BAC009S0002W0125 BAC009S0002W0122"]
    assert validate_data_dir(tmp_path / "sub") == []
    report = subset_data_dir(data, tmp_path / "spk", spk_ids=["S0003", "S0004"])
    assert report == [f"{tmp_path / 'spk'}: 5 of 8 utterances"]
    assert lines(tmp_path / "spk" / "spk2utt")[0] == "S0003 BAC009S0003W0010 BAC009S0003W0011"
    with pytest.raises(ValueError):
        subset_data_dir(data, tmp_path / "x")


def test_contiguous_partition_is_even_and_never_empty():
    parts = contiguous_partition([1] * 10, 3)
    assert parts[0][0] == 0 and parts[-1][1] == 10 and all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
    assert sorted(b - a for a, b in parts) == [3, 3, 4]
    assert contiguous_partition([100, 1, 1], 3) == [(0, 1), (1, 2), (2, 3)]
    parts = contiguous_partition([5, 5, 5, 5, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], 3)
    assert [sum([5, 5, 5, 5, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1][a:b]) for a, b in parts] == [10, 10, 10]
    with pytest.raises(DataDirError, match="cannot split 2 group"):
        contiguous_partition([1, 1], 3)


def test_split_keys_keeps_groups_whole_and_needs_them_contiguous():
    keys = ["a1", "a2", "a3", "b1", "c1", "c2"]
    groups = {k: k[0] for k in keys}
    assert split_keys(keys, 2, groups) == [["a1", "a2", "a3"], ["b1", "c1", "c2"]]
    parts = split_keys(keys, 4)
    assert sum(parts, []) == keys and sorted(map(len, parts)) == [1, 1, 2, 2]
    with pytest.raises(DataDirError, match="not contiguous"):
        split_keys(["a1", "b1", "a2"], 2, {"a1": "a", "b1": "b", "a2": "a"})


def test_split_data_per_speaker_and_per_utterance(data):
    result = sh("split_data.sh", data, 2)
    assert result.returncode == 0, result.stderr
    parts = [data / "split2" / "1", data / "split2" / "2"]
    speakers = [set(read_table(p / "utt2spk").entries.values()) for p in parts]
    assert not speakers[0] & speakers[1]
    assert sorted(lines(parts[0] / "text") + lines(parts[1] / "text")) == lines(data / "text")
    for part in parts:
        assert validate_data_dir(part) == []  # the history of a speaker stays with it
    per_utt = split_data_dir(data, 3, per_utt=True)
    assert per_utt == [data / "split3utt" / str(i) for i in (1, 2, 3)]
    assert sorted(len(lines(p / "wav.scp")) for p in per_utt) == [2, 3, 3]
    with pytest.raises(DataDirError, match="cannot split 3 group"):
        split_data_dir(data, 4)
    result = sh("split_data.sh", data, 4)
    assert result.returncode == 1 and "cannot split 3 group(s) into 4" in result.stderr


def test_split_scp_and_utt2spk_to_spk2utt(data, tmp_path):
    outs = [tmp_path / f"wav.{i}.scp" for i in (1, 2, 3)]
    result = sh("split_scp.pl", f"--utt2spk={data / 'utt2spk'}", data / "wav.scp", *outs)
    assert result.returncode == 0, result.stderr
    assert [len(lines(o)) for o in outs] == [3, 2, 3]
    assert sum((lines(o) for o in outs), []) == lines(data / "wav.scp")
    result = sh("split_scp.pl", data / "wav.scp", *outs[:2])
    assert [len(lines(o)) for o in outs[:2]] == [4, 4]
    result = sh("utt2spk_to_spk2utt.pl", input=(data / "utt2spk").read_text(encoding="utf-8"))
    assert result.returncode == 0 and result.stdout.splitlines() == lines(data / "spk2utt")
    result = sh("utt2spk_to_spk2utt.pl", input="u1 s1\nu2\n")
    assert result.returncode == 1 and "/dev/stdin:2: 'u2' has no value" in result.stderr


def test_copy_with_prefixes_and_combine(data, tmp_path):
    copy_data_dir(data, tmp_path / "sp", utt_prefix="sp0.9-", spk_prefix="sp0.9-")
    assert validate_data_dir(tmp_path / "sp") == []
    assert lines(tmp_path / "sp" / "utt2history")[2] == "sp0.9-BAC009S0002W0125 sp0.9-BAC009S0002W0121 sp0.9-BAC009S0002W0122"
    assert lines(tmp_path / "sp" / "spk2utt")[0].startswith("sp0.9-S0002 sp0.9-BAC009S0002W0121")
    (tmp_path / "sp" / "entities").unlink()
    report = combine_data_dirs(tmp_path / "all", [data, tmp_path / "sp"])
    assert f"{tmp_path / 'all'}: left out entities: not in every source" in report
    assert len(lines(tmp_path / "all" / "wav.scp")) == 16
    assert validate_data_dir(tmp_path / "all") == []
    with pytest.raises(DataDirError, match="also in another source"):
        combine_data_dirs(tmp_path / "twice", [data, data])
