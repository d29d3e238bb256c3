"""Training and decoding on dumped Whisper features (speech_encoder: whisper_cached): ESPnet's command line
with the cache switched on over a training YAML, short and long (history) phases, decoding from the
resulting config.yaml in length-sorted batches, the preprocessor's checks of feature arrays, and dry runs.

ESPnet's entry points are called in this process with their argument lists (the same parser as the CLI),
so the ~20-s import of a fresh interpreter is paid once.
"""
from __future__ import annotations

import json
import logging

import kaldiio
import numpy as np
import pytest
import soundfile
import torch
import yaml
from test_speech_llm_train import SENTENCES, needs_sox, speak_corpus, tiny_config

from espnet_llm.bin.dump_whisper_features import main as dump_main
from espnet_llm.bin.speech_llm_inference import Speech2Text, main as inference_main, utterance_lengths
from espnet_llm.bin.speech_llm_train import main as train_main
from espnet_llm.bin.transcribe import main as transcribe_main
from espnet_llm.data_prep.kaldi_dir import read_table
from espnet_llm.llm.tokenizer import ChatGLM3Tokenizer
from espnet_llm.models.prompts import PromptLayout
from espnet_llm.mini.tiny_whisper import write_openai_checkpoint
from espnet_llm.tasks.preprocessor import SpeechLLMPreprocessor
from espnet_llm.tasks.speech_llm import SpeechLLMTask

WIDTH = 64  # d_model of the tiny Whisper
CORRUPT = "S0001W0005"


def data_args(entries: list[str]) -> list[str]:
    return [a for phase in ("train", "valid") for e in entries for a in (f"--{phase}_data_path_and_name_and_type", e)]


@needs_sox
def test_cli_trains_short_and_long_phases_on_dumped_features_and_decodes(tiny_models, tmp_path, caplog, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = speak_corpus(tmp_path / "data", corrupt=CORRUPT)
    feats = tmp_path / "dump"
    assert dump_main(["--wav_scp", f"{data}/wav.scp", "--model_path", str(tiny_models / "whisper"),
                      "--output_dir", str(feats)]) == 0
    assert CORRUPT in read_table(feats / "failed").entries
    # the recipe's switch to the cache, on the command line over the unchanged YAML
    cached = ["--speech_encoder", "whisper_cached", "--speech_encoder_conf", f"output_size={WIDTH}",
              "--num_workers", "0"]  # data loading in this process, where its log is captured
    speech = f"{feats}/feats.scp,speech,kaldi_ark"
    caplog.set_level(logging.INFO)

    # phase 1, short-form: shape files straight from the dump
    short = tmp_path / "short.yaml"
    short.write_text(yaml.safe_dump({**tiny_config(tiny_models, "decoder_only_short"), "max_epoch": 1}))
    train_main(["--config", str(short), *cached, *data_args([speech, f"{data}/text,text,text"]),
                "--train_shape_file", f"{feats}/feats_shape", "--valid_shape_file", f"{feats}/feats_shape",
                "--output_dir", "exp_short"])
    config = yaml.safe_load((tmp_path / "exp_short/config.yaml").read_text())
    assert config["speech_encoder"] == "whisper_cached"
    assert config["speech_encoder_conf"]["output_size"] == WIDTH
    assert config["tokenizer_fingerprint"] == ChatGLM3Tokenizer(tiny_models / "chatglm3" / "tokenizer.model").fingerprint()
    assert "CachedWhisperFeatures(output_size=64" in caplog.text  # the model summary shows the cache
    assert (tmp_path / "exp_short/1epoch.pth").is_file()

    # phase 2, long-form: collect-stats over every utterance (the failed one too), history from the features
    long = tmp_path / "long.yaml"
    long.write_text(yaml.safe_dump({**tiny_config(tiny_models, "decoder_only_long"), "max_epoch": 1}))
    entries = [speech, f"{data}/text,text,text", f"{data}/utt2history,history,text"]
    train_main(["--collect_stats", "true", "--config", str(long), *cached, *data_args(entries),
                "--train_shape_file", f"{data}/wav.scp", "--valid_shape_file", f"{data}/wav.scp",
                "--output_dir", "stats"])
    shapes = read_table(tmp_path / "stats/train/speech_shape").entries
    frames = {u: int(n) for u, n in read_table(feats / "utt2num_frames").entries.items()}
    history = {u: h.split() for u, h in read_table(data / "utt2history").entries.items() if u != CORRUPT}
    assert shapes[CORRUPT] == f"0,{WIDTH}"
    for uid, previous in history.items():  # the K=2 previous utterances' frames, then the current one's
        assert shapes[uid] == f"{sum(frames[h] for h in previous[-2:]) + frames[uid]},{WIDTH}"
    caplog.clear()
    train_main(["--config", str(long), *cached, *data_args(entries),
                *[a for p in ("train", "valid") for k in ("speech", "text")
                  for a in (f"--{p}_shape_file", f"stats/{p}/{k}_shape")],
                "--init_param", "exp_short/valid.acc_current.ave.pth", "--continue_schedule_from", "exp_short/checkpoint.pth",
                "--output_dir", "exp_long"])
    assert "skipping 1 broken" in caplog.text and f"{CORRUPT}: not in" in caplog.text  # reported, training went on
    assert (tmp_path / "exp_long/1epoch.pth").is_file()
    # the LR schedule and AdamW's step count went on from where phase 1 ended, not from a new warmup
    before, after = (torch.load(tmp_path / f"exp_{p}/checkpoint.pth", weights_only=False) for p in ("short", "long"))
    steps = [s["optimizers"][0]["state"][0]["step"] for s in (before, after)]
    assert after["schedulers"][0]["last_epoch"] == before["schedulers"][0]["last_epoch"] + int(steps[1] - steps[0])
    assert steps[1] > steps[0] > 0

    # decoding from the resulting config.yaml; batches by length, outputs in the key file's order
    keys = tmp_path / "keys"
    keys.write_text("".join(f"{u}\n" for u in reversed(sorted([*SENTENCES, CORRUPT]))))
    inference_main(["--output_dir", "decode", "--batch_size", "2", "--num_workers", "0", "--max_new_tokens", "6",
                    "--speech_llm_train_config", "exp_long/config.yaml",
                    "--speech_llm_model_file", "exp_long/valid.acc_current.ave.pth",
                    "--data_path_and_name_and_type", speech,
                    "--data_path_and_name_and_type", f"{data}/utt2history,history,text", "--key_file", str(keys)])
    for name in ("text", "token", "score"):
        lines = (tmp_path / "decode/1best_recog" / name).read_text().splitlines()
        assert [line.split()[0] for line in lines] == keys.read_text().split()
    assert f"{CORRUPT}: broken" in caplog.text and "1 broken" in caplog.text
    assert json.loads((tmp_path / "decode/parse_repairs.json").read_text())["broken_ids"] == [CORRUPT]  # for RESULTS.md

    # a decode in which no utterance could be decoded fails, after writing its empty hypotheses
    (tmp_path / "only_corrupt").write_text(f"{CORRUPT}\n")
    with pytest.raises(SystemExit, match="none of the 1 utterances could be decoded"):
        inference_main(["--output_dir", "decode_corrupt", "--num_workers", "0", "--speech_llm_train_config",
                        "exp_long/config.yaml", "--speech_llm_model_file", "exp_long/valid.acc_current.ave.pth",
                        "--data_path_and_name_and_type", speech, "--key_file", str(tmp_path / "only_corrupt")])
    assert (tmp_path / "decode_corrupt/1best_recog/text").read_text() == f"{CORRUPT} \n"
    # the library face decodes audio with the model trained on the cache: the frozen Whisper its config names
    # gives what the dump holds (float16 there), so the answer is the one decoded from the features
    model = ("exp_long/config.yaml", "exp_long/valid.acc_current.ave.pth")
    from_audio, from_features = Speech2Text(*model, max_new_tokens=6), Speech2Text(*model, max_new_tokens=6, reads="features")
    assert from_audio.train_args.speech_encoder == "whisper"
    uid, history = "S0001W0003", ["S0001W0001", "S0001W0002"]
    [heard] = from_audio(data / "wav" / f"{uid}.wav", history=[data / "wav" / f"{h}.wav" for h in history])
    dumped = kaldiio.load_scp(str(feats / "feats.scp"))
    [read] = from_features(dumped[uid], history=[dumped[h] for h in history])
    assert heard.token_ids == read.token_ids and heard.score == pytest.approx(read.score, abs=0.05)

    # the transcriber on a two-minute recording of the speaker's utterances with pauses: split at the pauses, each
    # segment decoded with the previous segments (the config's num_history) as its history
    wavs = [soundfile.read(data / "wav" / f"{u}.wav", dtype="float32")[0] for u in sorted(SENTENCES)]
    pause = np.zeros(8000, dtype=np.float32)
    recording = np.concatenate([pause] + [piece for _ in range(40) for w in wavs for piece in (w, pause)])
    recording = recording[:120 * 16000]
    soundfile.write(tmp_path / "two_minutes.wav", recording, 16000)
    histories = []
    decode = Speech2Text.__call__
    monkeypatch.setattr(Speech2Text, "__call__", lambda self, speech, history=(), fs=None: histories.append(
        len(history)) or decode(self, speech, history, fs))
    transcribe_main(["--model", "exp_long", "--output", "two_minutes.jsonl", str(tmp_path / "two_minutes.wav")])
    [record] = [json.loads(line) for line in (tmp_path / "two_minutes.jsonl").read_text().splitlines()]
    num_history = yaml.safe_load((tmp_path / "exp_long/config.yaml").read_text())["num_history"]
    assert record["seconds"] == 120.0 and len(record["segments"]) == len(histories) > 40
    assert histories == [min(i, num_history) for i in range(len(histories))]
    assert record["text"] == "".join(s["text"] for s in record["segments"])


def test_preprocessor_checks_feature_arrays(tiny_models, caplog):
    layout = PromptLayout(ChatGLM3Tokenizer(tiny_models / "chatglm3" / "tokenizer.model"), "asr_short")
    pre = SpeechLLMPreprocessor(layout, feature_dim=WIDTH)
    good = pre("good", {"speech": np.ones((1500, WIDTH), np.float16), "text": "好"})["speech"]
    assert good.shape == (1500, WIDTH) and good.dtype == np.float32  # 30 s of frames: the limit itself
    cases = {
        "narrow": (np.ones((40, WIDTH // 2)), f"shape (40, {WIDTH // 2}), expected (frames, {WIDTH})"),
        "audio": (np.ones(16000), "shape (16000,), expected"),
        "long": (np.ones((1501, WIDTH)), "30.0 s of audio (1501 frames), over Whisper's 30 s"),
        "empty": (np.zeros(0), "empty or unreadable features"),
    }
    with caplog.at_level(logging.WARNING):
        for uid, (array, reason) in cases.items():
            out = pre(uid, {"speech": array, "text": "好"})["speech"]
            assert out.shape == (0, WIDTH), uid  # an empty row of the batch's width: skipped by the model
            assert any(uid in r.message and reason in r.message for r in caplog.records), (uid, caplog.text)


def test_decoding_batches_are_sorted_by_length_with_history(tmp_path):
    frames = {"u0": 10, "u1": 50, "u2": 30, "u3": 20, "u4": 40, "u5": 60}
    feats = tmp_path / "feats.scp"
    kaldiio.save_ark(str(tmp_path / "feats.ark"), {u: np.zeros((n, 8), np.float16) for u, n in frames.items()},
                     scp=str(feats), write_function="numpy")
    (tmp_path / "feats_shape").write_text("".join(f"{u} {n},8\n" for u, n in frames.items()))
    (tmp_path / "utt2history").write_text("u0\nu1 u0\nu2 u0 u1\nu3 u0 u1 u2\nu4\nu5\n")
    entries = [(str(feats), "speech", "kaldi_ark"), (str(tmp_path / "utt2history"), "history", "text")]
    keys = list(frames)
    assert utterance_lengths(entries, keys, num_history=0) == frames  # from feats_shape beside feats.scp
    (tmp_path / "feats_shape").unlink()
    lengths = utterance_lengths(entries, keys, num_history=2)  # read from the ark; the last 2 history ones count
    assert lengths == {"u0": 10, "u1": 60, "u2": 90, "u3": 100, "u4": 40, "u5": 60}
    loader = SpeechLLMTask.build_streaming_iterator(
        entries, lambda uid, data: {"speech": data["speech"]}, SpeechLLMTask.build_collate_fn(None, False),
        batch_size=2, num_workers=0, allow_variable_data_keys=True, inference=True, utt2length=lengths,
    )
    assert [b for b, _ in loader] == [["u3", "u2"], ["u1", "u5"], ["u4", "u0"]]  # longest first, ties in key order


@pytest.mark.parametrize("encoder", ["whisper_cached", "whisper_pt"])
def test_dry_run_with_the_cache_and_with_an_openai_checkpoint(tiny_models, tmp_path, encoder):
    config = tiny_config(tiny_models, "decoder_only_short")
    if encoder == "whisper_pt":
        config["speech_encoder_conf"]["model_path"] = str(write_openai_checkpoint(tiny_models / "whisper", tmp_path / "w.pt"))
    else:
        config["speech_encoder"] = encoder  # the width from the YAML's model_path, the Whisper that dumped them
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    train_main(["--dry_run", "true", "--config", str(tmp_path / "c.yaml"), "--output_dir", str(tmp_path / "exp"),
                *data_args(["x/feats.scp,speech,kaldi_ark", "x/text,text,text"]),
                "--train_shape_file", "x", "--valid_shape_file", "x"])
    written = yaml.safe_load((tmp_path / "exp/config.yaml").read_text())
    assert written["speech_encoder"] == ("whisper_cached" if encoder == "whisper_cached" else "whisper")


def test_the_dry_run_refuses_a_number_that_yaml_read_as_text(tiny_models, tmp_path):
    text = yaml.safe_dump(tiny_config(tiny_models, "decoder_only_short")).replace("lr: 0.002", "lr: 2e-3")
    assert yaml.safe_load(text)["optim_conf"]["lr"] == "2e-3"  # YAML 1.1: no dot, no float
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ValueError, match=r"c.yaml: optim_conf lr: '2e-3': text, not a number, to YAML"):
        train_main(["--dry_run", "true", "--config", str(tmp_path / "c.yaml"), "--output_dir", str(tmp_path / "exp"),
                    *data_args(["x/feats.scp,speech,kaldi_ark", "x/text,text,text"]),
                    "--train_shape_file", "x", "--valid_shape_file", "x"])
    assert not (tmp_path / "exp").exists()
