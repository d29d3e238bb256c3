"""Dumped Whisper features (dump_whisper_features) and the cached encoder that trains on them."""
from __future__ import annotations

import argparse

import kaldiio
import numpy as np
import pytest
import soundfile
import torch

from espnet_llm.bin.dump_whisper_features import FeatureDumper, main as dump_main
from espnet_llm.data_prep.kaldi_dir import read_table
from espnet_llm.speech.cached_encoder import CachedWhisperFeatures
from espnet_llm.speech.whisper_encoder import WhisperSpeechEncoder

GOOD_SECONDS = {"utt_a": 1.3, "utt_b": 0.42, "utt_c": 2.71, "utt_d": 0.9, "utt_e": 1.95, "utt_f": 3.2, "utt_g": 0.6}
BROKEN = {  # id -> word the reason must contain
    "bad_empty": "empty",
    "bad_garbage": "unreadable",
    "bad_long": "over",
    "bad_missing": "unreadable",
    "bad_rate": "sample rate",
}


def speech_like(seconds: float, seed: int, rate: int = 16000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
    return (0.2 * envelope * (np.sin(2 * np.pi * 220 * t) + 0.3 * rng.standard_normal(len(t)))).astype(np.float32)


@pytest.fixture(scope="module")
def wav_scp(tmp_path_factory):
    """A wav.scp of 7 good utterances and 5 broken ones (empty, garbage bytes, 31 s, missing file, 8 kHz)."""
    root = tmp_path_factory.mktemp("audio")
    entries = {}
    for n, (uid, seconds) in enumerate(GOOD_SECONDS.items()):
        soundfile.write(root / f"{uid}.wav", speech_like(seconds, n), 16000, subtype="PCM_16")
        entries[uid] = root / f"{uid}.wav"
    soundfile.write(root / "bad_empty.wav", np.zeros(0, np.float32), 16000, subtype="PCM_16")
    (root / "bad_garbage.wav").write_bytes(b"this is not a wav file at all")
    soundfile.write(root / "bad_long.wav", speech_like(31.0, 9), 16000, subtype="PCM_16")
    soundfile.write(root / "bad_rate.wav", speech_like(1.0, 10, rate=8000), 8000, subtype="PCM_16")
    for uid in ("bad_empty", "bad_garbage", "bad_long", "bad_rate"):
        entries[uid] = root / f"{uid}.wav"
    entries["bad_missing"] = root / "no_such_file.wav"
    scp = root / "wav.scp"
    scp.write_text("".join(f"{u} {entries[u]}\n" for u in sorted(entries)))
    return scp


def dump(wav_scp, tiny_models, out, *extra):
    argv = ["--wav_scp", str(wav_scp), "--model_path", str(tiny_models / "whisper"), "--output_dir", str(out),
            "--batch_size", "3", "--chunk_size", "4", *extra]
    return dump_main(argv)


def live_encoding(encoder: WhisperSpeechEncoder, path) -> np.ndarray:
    wav, _ = soundfile.read(path, dtype="float32")
    with torch.no_grad():
        hidden, lengths = encoder(torch.from_numpy(wav)[None], torch.tensor([len(wav)]))
    return hidden[0, : int(lengths[0])].numpy()


@pytest.mark.parametrize("pad_to_30s", [False, True])
def test_dumped_features_equal_the_live_encoder(wav_scp, tiny_models, tmp_path, pad_to_30s):
    assert dump(wav_scp, tiny_models, tmp_path, *(["--pad_to_30s"] if pad_to_30s else [])) == 0
    feats = kaldiio.load_scp(str(tmp_path / "feats.scp"))
    assert sorted(feats.keys()) == sorted(GOOD_SECONDS)
    encoder = WhisperSpeechEncoder(tiny_models / "whisper", pad_to_30s=pad_to_30s)
    wavs = read_table(wav_scp).entries
    shapes = read_table(tmp_path / "feats_shape").entries
    frames = read_table(tmp_path / "utt2num_frames").entries
    for uid, seconds in GOOD_SECONDS.items():
        stored = feats[uid]
        assert stored.dtype == np.float16
        samples = int(seconds * 16000)
        expected_frames = ((samples // 160) - 1) // 2 + 1  # 50 a second, Whisper's stride-2 convolution
        assert stored.shape == (expected_frames, 64)
        assert shapes[uid] == f"{expected_frames},64" and frames[uid] == str(expected_frames)
        # computed in batches of 3 with other lengths, compared with the utterance encoded alone
        np.testing.assert_allclose(stored.astype(np.float32), live_encoding(encoder, wavs[uid]), rtol=2e-3, atol=2e-3)


def test_broken_utterances_are_listed_and_counted(wav_scp, tiny_models, tmp_path, caplog):
    with caplog.at_level("INFO"):
        assert dump(wav_scp, tiny_models, tmp_path) == 0
    failed = read_table(tmp_path / "failed").entries
    assert sorted(failed) == sorted(BROKEN)
    for uid, word in BROKEN.items():
        assert word in failed[uid], (uid, failed[uid])
        assert any(uid in r.getMessage() for r in caplog.records if r.levelname == "WARNING"), uid
    assert "31.0 s" in failed["bad_long"]
    assert any(f"{len(GOOD_SECONDS)} utterances dumped, {len(BROKEN)} failed" in r.getMessage() for r in caplog.records)


class SimulatedCrash(BaseException):
    """Like a kill: not an Exception, so nothing inside the dumper catches it."""


def test_resume_after_a_crash_gives_the_same_dump(wav_scp, tiny_models, tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    assert dump(wav_scp, tiny_models, reference) == 0

    crashed = tmp_path / "crashed"
    calls = {"n": 0}
    real_encode = FeatureDumper.encode

    def crash_on_third_batch(self, wavs):
        calls["n"] += 1
        if calls["n"] == 3:  # chunk 0 (4 utterances, 2 batches) is committed; chunk 1 is half written
            raise SimulatedCrash()
        return real_encode(self, wavs)

    monkeypatch.setattr(FeatureDumper, "encode", crash_on_third_batch)
    with pytest.raises(SimulatedCrash):
        dump(wav_scp, tiny_models, crashed)
    assert (crashed / "data" / "feats.0.scp").is_file() and (crashed / "data" / "feats.1.ark").is_file()
    assert not (crashed / "data" / "feats.1.scp").is_file() and not (crashed / "feats.scp").exists()

    calls["n"] = -1000  # no more crashes; count the batches the rerun encodes
    assert dump(wav_scp, tiny_models, crashed) == 0
    assert 0 < calls["n"] + 1000 < 5  # chunk 0 was not redone (5 batches would be the whole dump)
    for name in ("feats_shape", "utt2num_frames", "failed"):
        assert (crashed / name).read_text() == (reference / name).read_text()
    # the same scp up to the directory name, and the same features
    assert (crashed / "feats.scp").read_text().replace(str(crashed), "X") == (
        (reference / "feats.scp").read_text().replace(str(reference), "X")
    )
    ours, theirs = kaldiio.load_scp(str(crashed / "feats.scp")), kaldiio.load_scp(str(reference / "feats.scp"))
    for uid in GOOD_SECONDS:
        np.testing.assert_array_equal(ours[uid], theirs[uid])


def test_a_rerun_with_other_options_refuses_to_mix_dumps(wav_scp, tiny_models, tmp_path):
    assert dump(wav_scp, tiny_models, tmp_path) == 0
    with pytest.raises(SystemExit, match="pad_to_30s"):
        dump(wav_scp, tiny_models, tmp_path, "--pad_to_30s")


def test_cached_encoder_checks_its_input():
    encoder = CachedWhisperFeatures(output_size=8)
    feats = torch.randn(2, 5, 8).half()
    out, lengths = encoder(feats, torch.tensor([5, 3]))
    assert out.dtype == torch.float32 and torch.equal(out[0], feats[0].float())
    assert torch.equal(out[1, :3], feats[1, :3].float()) and not out[1, 3:].any()
    with pytest.raises(ValueError, match=r"\(batch, frames, 8\)"):
        encoder(torch.randn(2, 16000), torch.tensor([16000, 100]))


@pytest.mark.parametrize("task", ["asr_short", "asr_long"])
@pytest.mark.parametrize("arch", ["decoder_only", "encoder_decoder"])
def test_cached_features_give_the_live_model_loss(wav_scp, tiny_models, tmp_path, arch, task):
    """The same batch through the preprocessor, ESPnet's collate and the model, from audio and from the dump;
    asr_long puts the history utterances (segments in samples, or in frames) before each one."""
    from espnet2.train.collate_fn import CommonCollateFn

    from espnet_llm.tasks.speech_loader import open_entry
    from espnet_llm.tasks.speech_llm import SpeechLLMTask

    assert dump(wav_scp, tiny_models, tmp_path) == 0
    texts = dict(utt_a="北京欢迎你", utt_b="你好", utt_c="今天天气很好", utt_d="上海", utt_e="明天见", utt_g="张三来了")
    (tmp_path / "text").write_text("".join(f"{u} {t}\n" for u, t in texts.items()))
    # K=2: the last two; bad_long (over 30 s, not dumped: listed in 'failed') is left out of utt_c's history
    history = dict(utt_a="", utt_c="utt_d utt_b bad_long", utt_g="utt_a utt_c utt_e")
    args = argparse.Namespace(
        model=arch, model_conf={}, speech_encoder="whisper",
        speech_encoder_conf={"model_path": str(tiny_models / "whisper")},
        speech_adapter="frame_stack" if arch == "decoder_only" else None, speech_adapter_conf={},
        llm="chatglm3", llm_conf={"model_path": str(tiny_models / "chatglm3"), "lora_rank": 4, "lora_dropout": 0.0},
        prompt_task=task, num_history=2, preprocessor_conf={},
    )
    torch.manual_seed(0)
    model = SpeechLLMTask.build_model(args).eval()
    losses = {}
    for encoder, speech in (("whisper", (str(wav_scp), "speech", "sound")),
                            ("whisper_cached", (str(tmp_path / "feats.scp"), "speech", "kaldi_ark"))):
        args.speech_encoder = encoder
        entries = [speech, (str(tmp_path / "text"), "text", "text")]
        pre = SpeechLLMTask.preprocessor_for(args, entries)
        loader = open_entry(*speech[::2])
        rows = [(u, pre(u, {"speech": loader[u], "text": texts[u], "history": h})) for u, h in history.items()]
        keys, batch = CommonCollateFn(int_pad_value=-1)(rows)
        if encoder == "whisper_cached":
            model.speech_encoder = CachedWhisperFeatures(model.speech_encoder.output_size())
        with torch.no_grad():
            losses[encoder] = model(**batch, utt_id=keys)[0]
    if task == "asr_long":  # frames per segment: the dump's, for each history utterance kept and the current one
        frames = read_table(tmp_path / "utt2num_frames").entries
        assert batch["speech_segments"][1].tolist()[:2] == [int(frames[u]) for u in ("utt_b", "utt_c")]
        assert batch["speech_segments"][2].tolist() == [int(frames[u]) for u in ("utt_c", "utt_e", "utt_g")]
    assert torch.isfinite(losses["whisper"])
    torch.testing.assert_close(losses["whisper_cached"], losses["whisper"], rtol=1e-3, atol=1e-3)
