"""The listening control's data sets (each utterance given another's speech) and the Conformer's CTC-weight choice."""
import json

import pytest

from espnet_llm.data_prep import other_speech
from espnet_llm.data_prep.kaldi_dir import read_table
from espnet_llm.scoring import ctc_weight_tuning


def write(path, lines):
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def test_every_utterance_gets_another_speakers_speech_and_keeps_its_own_transcript(tmp_path):
    data, feats = tmp_path / "test", tmp_path / "feats" / "test"
    data.mkdir()
    feats.mkdir(parents=True)
    ids = [f"BAC009S07{s}W{n:04d}" for s in (24, 25) for n in range(3)]
    write(data / "wav.scp", [f"{u} /wav/{u}.wav" for u in ids])
    write(data / "utt2spk", [f"{u} S07{u[8:10]}" for u in ids])
    write(data / "spk2utt", [f"S0724 {' '.join(ids[:3])}", f"S0725 {' '.join(ids[3:])}"])
    write(data / "text", [f"{u} text of {u}" for u in ids])
    write(data / "utt2num_samples", [f"{u} {1000 + i}" for i, u in enumerate(ids)])
    write(feats / "feats.scp", [f"{u} feats.ark:{i}" for i, u in enumerate(ids)])
    write(feats / "utt2num_frames", [f"{u} {10 + i}" for i, u in enumerate(ids)])
    out, out_feats = tmp_path / "test_other_speech", tmp_path / "feats" / "test_other_speech"
    assert other_speech.main([str(data), str(out), "--feats", str(feats), str(out_feats)]) == 0
    wav = read_table(out / "wav.scp").entries
    assert set(wav) == set(ids)
    for uttid in ids:
        # another speaker's audio, its own transcript, and the speech's facts moved with the speech
        assert uttid not in wav[uttid] and uttid[6:11] not in wav[uttid]
        assert read_table(out / "text").entries[uttid] == f"text of {uttid}"
        source = wav[uttid].split("/")[-1][:-4]
        assert read_table(out / "utt2num_samples").entries[uttid] == str(1000 + ids.index(source))
        assert read_table(out_feats / "feats.scp").entries[uttid] == f"feats.ark:{ids.index(source)}"
        assert read_table(out_feats / "utt2num_frames").entries[uttid] == str(10 + ids.index(source))
    write(data / "wav.scp", [f"{ids[0]} /wav/a.wav"])
    with pytest.raises(ValueError, match="at least two utterances"):
        other_speech.write_other_speech_set(data, tmp_path / "one")


def test_the_ctc_weight_of_the_lowest_validation_cer_is_chosen_and_written(tmp_path, capsys):
    for weight, errors in (("0.3", 30), ("0.5", 12), ("1.0", 12), ("0.7", 20)):
        result = tmp_path / f"ctc{weight}" / "dev" / "cer" / "result.json"
        result.parent.mkdir(parents=True)
        counts = {"sentences": 2, "words": 100, "correct": 100 - errors, "substitutions": errors,
                  "deletions": 0, "insertions": 0, "sentence_errors": 1}
        result.write_text(json.dumps({"counts": counts}))
    assert ctc_weight_tuning.main([str(tmp_path), "dev"]) == 0
    assert capsys.readouterr().out.strip() == "0.5"  # of the tie with 1.0, the smaller weight
    assert (tmp_path / "choice.txt").read_text().splitlines() == [
        "ctc_weight 0.3 CER 30.0", "ctc_weight 0.5 CER 12.0", "ctc_weight 0.7 CER 20.0", "ctc_weight 1.0 CER 12.0",
        "chosen 0.5"]
    assert ctc_weight_tuning.main([str(tmp_path), "test"]) == 1
    assert "no ctc<weight>/test/cer/result.json" in capsys.readouterr().err
