"""What a model hears: audio of any rate, channel count and sample type made Whisper's 16-kHz mono float32, and
what cannot be meant as audio refused with the piece named (speech.audio_input)."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile

from espnet_llm.speech.audio_input import AudioError, ModelAudioScp, load_model_audio, to_model_audio
from espnet_llm.tasks.speech_loader import open_entry


def tone(rate: int, seconds: float = 1.0, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def dominant_hz(samples: np.ndarray, rate: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[spectrum.argmax()])


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_any_rate_is_resampled_to_16k_keeping_the_pitch(rate):
    out = to_model_audio(tone(rate), rate)
    assert out.dtype == np.float32 and out.ndim == 1 and len(out) == pytest.approx(16000, abs=1)
    assert dominant_hz(out) == pytest.approx(440, abs=2)


def test_channels_are_averaged_either_way_round_and_integers_scaled():
    mono = tone(16000)
    assert np.allclose(to_model_audio(np.stack([mono, mono * 0.5], axis=1), 16000), mono * 0.75)
    assert np.allclose(to_model_audio(np.stack([mono, mono * 0.5]), 16000), mono * 0.75)
    as_int16 = np.round(mono * 32767).astype(np.int16)
    assert np.allclose(to_model_audio(as_int16, 16000), mono, atol=1e-4)
    assert np.allclose(to_model_audio(as_int16.astype(np.int32) << 16, 16000), mono, atol=1e-4)


@pytest.mark.parametrize("samples, rate, message", [
    (tone(16000), None, "does not say its sample rate"),
    (tone(16000), 0, "not a positive whole number"),
    (np.zeros(0, np.float32), 16000, "empty audio"),
    (np.concatenate([tone(16000)[:8000], [np.nan], tone(16000)[:100]]), 16000, "1 sample.* NaN or infinite, the first at sample 8000 .0.500 s"),
    (np.full(100, np.inf, np.float32), 16000, "100 sample.* NaN or infinite"),
    (tone(16000) * 32767, 16000, "peak at 16384.*int16-scale samples\\? divide by 32768"),
    (np.zeros((3, 16000, 2), np.float32), 16000, "3-dimensional"),
    (np.zeros((400, 512), np.float32), 16000, "neither mono nor"),
    (np.array(["a"]), 16000, "not audio"),
])
def test_what_is_not_audio_is_refused_by_name(samples, rate, message):
    with pytest.raises(AudioError, match=f"^utt1: .*{message}"):
        to_model_audio(samples, rate, "utt1")


def test_files_and_scp_entries_are_read_as_the_model_hears_them(tmp_path, caplog):
    soundfile.write(tmp_path / "a.flac", np.stack([tone(44100)] * 2, axis=1), 44100)
    (tmp_path / "b.wav").write_bytes(b"RIFF\x00\x00 no audio")
    assert len(load_model_audio(tmp_path / "a.flac")) == pytest.approx(16000, abs=1)
    with pytest.raises(AudioError, match="b.wav: cannot read audio"):
        load_model_audio(tmp_path / "b.wav")
    (tmp_path / "wav.scp").write_text(f"A {tmp_path}/a.flac\nB {tmp_path}/b.wav\n")
    assert list(ModelAudioScp(str(tmp_path / "wav.scp"))) == ["A", "B"]
    loader = open_entry(str(tmp_path / "wav.scp"), "sound")  # what training and decoding read through
    assert len(loader["A"]) == pytest.approx(16000, abs=1)
    assert loader["B"].size == 0 and "utterance B" in caplog.text and "b.wav: cannot read audio" in caplog.text
