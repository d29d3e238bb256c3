"""Whisper: log-mel features against transformers' extractor, the encoder's two input modes,
loading from a transformers directory and from an OpenAI .pt, freezing, the 30-s limit, and
the full-size parameter counts on the meta device."""
import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperModel

from espnet_llm.speech.log_mel import MAX_SAMPLES, WhisperLogMel
from espnet_llm.mini.tiny_whisper import write_openai_checkpoint, write_tiny_whisper
from espnet_llm.speech.whisper_encoder import (
    WHISPER_LARGE_V2_CONFIG,
    SpeechTooLongError,
    WhisperSpeechEncoder,
    whisper_encoder_on_meta,
)

SR = 16000


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory):
    return write_tiny_whisper(tmp_path_factory.mktemp("tiny") / "whisper", seed=0)


def random_batch(lengths, seed=0, padding_value=3.0):
    """Random audio rows of the given lengths; the batch padding holds garbage on purpose."""
    g = torch.Generator().manual_seed(seed)
    wav = torch.full((len(lengths), max(lengths)), padding_value)
    for row, n in enumerate(lengths):
        wav[row, :n] = 0.1 * torch.randn(n, generator=g)
    return wav, torch.tensor(lengths)


def tone_then_silence_batch():
    """A loud tone followed by silence and a quiet one: here the max - 8 floor is active."""
    t = torch.arange(3 * SR) / SR
    tone = 0.5 * torch.sin(2 * math.pi * 440 * t) * (t < 1.0)
    return torch.stack([tone, 1e-3 * tone]), torch.tensor([3 * SR, 2 * SR - 77])


def batches():
    return {"random": random_batch([5 * SR + 123, 2 * SR, 30 * SR, 161]), "tone": tone_then_silence_batch()}


def transformers_features(wav, lengths):
    extractor = WhisperFeatureExtractor(feature_size=80)
    rows = [wav[row, :n].numpy() for row, n in enumerate(lengths.tolist())]
    return extractor(rows, sampling_rate=SR, return_tensors="pt").input_features


@pytest.mark.parametrize("batch", ["random", "tone"])
def test_padded_log_mel_equals_transformers_extractor(batch):
    wav, lengths = batches()[batch]
    feats, frame_lengths = WhisperLogMel(pad_to_30s=True)(wav, lengths)
    expected = transformers_features(wav, lengths)
    assert feats.shape == expected.shape == (len(lengths), 80, 3000)
    assert (feats - expected).abs().max() <= 1e-4
    assert frame_lengths.tolist() == (lengths // 160).tolist()


@pytest.mark.parametrize("batch", ["random", "tone"])
def test_variable_length_log_mel_is_the_30s_features_cut_to_the_speech(batch):
    wav, lengths = batches()[batch]
    padded, _ = WhisperLogMel(pad_to_30s=True)(wav, lengths)
    feats, frame_lengths = WhisperLogMel()(wav, lengths)
    assert feats.shape[-1] == frame_lengths.max()
    for row, n in enumerate(frame_lengths.tolist()):
        assert (feats[row, :, :n] - padded[row, :, :n]).abs().max() <= 1e-5
        assert torch.all(feats[row, :, n:] == 0.0)
        alone, _ = WhisperLogMel()(wav[row : row + 1, : lengths[row]], lengths[row : row + 1])
        assert (alone[0] - feats[row, :, :n]).abs().max() <= 1e-5


def test_encoder_from_directory_and_openai_pt_are_identical(tiny_whisper, tmp_path):
    # The openai/whisper-large-v2 directory holds WhisperForConditionalGeneration (keys model.encoder.*).
    with_head = WhisperForConditionalGeneration(WhisperConfig.from_pretrained(tiny_whisper))
    with_head.model.load_state_dict(WhisperModel.from_pretrained(tiny_whisper).state_dict())
    with_head.save_pretrained(tmp_path / "for_generation")
    pt_file = write_openai_checkpoint(tiny_whisper, tmp_path / "tiny.pt")

    wav, lengths = random_batch([3 * SR, 5 * SR + 400])
    outputs = [
        WhisperSpeechEncoder(path, pad_to_30s=pad)(wav, lengths)
        for pad in (False, True)
        for path in (tiny_whisper, tmp_path / "for_generation", pt_file)
    ]
    for hidden, lengths_out in outputs[1:3]:
        assert torch.equal(hidden, outputs[0][0]) and torch.equal(lengths_out, outputs[0][1])
    for hidden, _ in outputs[4:6]:
        assert torch.equal(hidden, outputs[3][0])
    other_weights = write_tiny_whisper(tmp_path / "seed1", seed=1)
    assert not torch.allclose(WhisperSpeechEncoder(other_weights)(wav, lengths)[0], outputs[0][0], atol=1e-3)


def test_openai_pt_with_an_unknown_name_is_an_error(tiny_whisper, tmp_path):
    saved = torch.load(write_openai_checkpoint(tiny_whisper, tmp_path / "tiny.pt"), weights_only=True)
    state = saved["model_state_dict"]
    state["encoder.blocks.0.attn.qkv.weight"] = state.pop("encoder.blocks.0.attn.query.weight")
    torch.save(saved, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"bad\.pt.*encoder\.blocks\.0\.attn\.qkv\.weight"):
        WhisperSpeechEncoder(tmp_path / "bad.pt")


def test_directory_missing_an_encoder_weight_is_an_error(tiny_whisper, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((tiny_whisper / "config.json").read_text())
    state = load_file(tiny_whisper / "model.safetensors")
    del state["encoder.layer_norm.weight"]
    save_file(state, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="layer_norm.weight"):
        WhisperSpeechEncoder(broken)


def test_variable_length_rows_do_not_depend_on_the_batch(tiny_whisper):
    encoder = WhisperSpeechEncoder(tiny_whisper)
    wav, lengths = random_batch([5 * SR, 3 * SR + 321, SR + 160])
    hidden, hidden_lengths = encoder(wav, lengths)
    assert hidden.shape == (3, 250, 64)
    assert hidden_lengths.tolist() == [250, 151, 51]  # ((L // 160) - 1) // 2 + 1
    for row, n in enumerate(hidden_lengths.tolist()):
        alone, _ = encoder(wav[row : row + 1, : lengths[row]], lengths[row : row + 1])
        assert alone.shape[1] == n
        assert (alone[0] - hidden[row, :n]).abs().max() <= 1e-5
        assert torch.all(hidden[row, n:] == 0.0)


def test_variable_length_forward_equals_transformers_forward_on_30s_of_frames(tiny_whisper):
    """With all 3000 frames valid the two modes are the same computation (transformers' own forward)."""
    variable = WhisperSpeechEncoder(tiny_whisper)
    padded = WhisperSpeechEncoder(tiny_whisper, pad_to_30s=True)
    feats = torch.randn(2, 80, 3000, generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor([3000, 3000])
    ours, our_lengths = variable.encode_features(feats, lengths)
    theirs, their_lengths = padded.encode_features(feats, lengths)
    assert (ours - theirs).abs().max() <= 1e-5
    assert our_lengths.tolist() == their_lengths.tolist() == [1500, 1500]


def test_variable_length_versus_padded_on_the_tiny_model(tiny_whisper):
    """Not equal by design (in the 30-s mode the speech also attends to the silence); how close on
    the tiny random model (near-uniform attention, so this says little about the real one)."""
    wav, lengths = random_batch([5 * SR, 4 * SR + 800])
    variable, lengths_variable = WhisperSpeechEncoder(tiny_whisper)(wav, lengths)
    padded, lengths_padded = WhisperSpeechEncoder(tiny_whisper, pad_to_30s=True)(wav, lengths)
    assert padded.shape == (2, 1500, 64)
    assert torch.equal(lengths_variable, lengths_padded)
    for row, n in enumerate(lengths_variable.tolist()):
        a, b = variable[row, :n], padded[row, :n]
        cosine = torch.nn.functional.cosine_similarity(a, b, dim=-1)
        diff = (a - b).abs().max()
        print(f"row {row}: max |diff| {diff:.4f}, mean |h| {b.abs().mean():.4f}, cosine min {cosine.min():.5f}")
        assert diff > 1e-3
        # the last frame's convolution window reaches past the speech: zeros here, silence's log-mel there
        assert cosine[:-1].min() > 0.99 and cosine[-1] > 0.9


def test_frozen_by_default_and_stays_in_eval_mode(tiny_whisper):
    parent = torch.nn.ModuleDict({"speech": WhisperSpeechEncoder(tiny_whisper), "head": torch.nn.Linear(64, 2)})
    parent.train()
    speech = parent["speech"]
    assert not any(p.requires_grad for p in speech.parameters())
    assert not speech.encoder.training and parent["head"].training
    wav, lengths = random_batch([SR, SR])
    hidden, _ = speech(wav, lengths)
    assert hidden.grad_fn is None

    trainable = WhisperSpeechEncoder(tiny_whisper, freeze=False)
    trainable.train()
    assert trainable.encoder.training
    assert all(p.requires_grad for name, p in trainable.named_parameters() if "embed_positions" not in name)
    hidden, _ = trainable(wav, lengths)
    hidden.sum().backward()
    assert trainable.encoder.layers[0].fc1.weight.grad is not None


@pytest.mark.parametrize("pad_to_30s", [False, True])
def test_speech_over_30s_names_the_row(tiny_whisper, pad_to_30s):
    encoder = WhisperSpeechEncoder(tiny_whisper, pad_to_30s=pad_to_30s)
    wav = torch.zeros(3, MAX_SAMPLES + 1600)
    with pytest.raises(SpeechTooLongError, match=r"row 2: 30\.10 s") as err:
        encoder(wav, torch.tensor([SR, MAX_SAMPLES, MAX_SAMPLES + 1600]))
    assert err.value.index == 2


def encoder_parameter_count(config: dict) -> int:
    """Whisper's encoder counted from its config: two convolutions, a positional table, pre-norm blocks."""
    d, ffn, mels = config["d_model"], config["encoder_ffn_dim"], config["num_mel_bins"]
    convs = (mels * d * 3 + d) + (d * d * 3 + d)
    positions = config["max_source_positions"] * d
    attention = 4 * d * d + 3 * d  # q, k, v, out; the key projection has no bias
    block = attention + 2 * (2 * d) + (d * ffn + ffn) + (ffn * d + d)  # + two layer norms + MLP
    return convs + positions + config["encoder_layers"] * block + 2 * d


def test_whisper_large_v2_sizes_on_the_meta_device():
    encoder = whisper_encoder_on_meta()
    assert all(p.device.type == "meta" for p in encoder.parameters())
    encoder_count = sum(p.numel() for p in encoder.parameters())
    assert encoder_count == encoder_parameter_count(WHISPER_LARGE_V2_CONFIG) == 636_784_640
    assert abs(encoder_count - 635e6) / 635e6 < 0.005  # "encoder ~ 635M"

    with torch.device("meta"):
        whole = WhisperModel(WhisperConfig(**WHISPER_LARGE_V2_CONFIG))
    total = sum(p.numel() for p in whole.parameters())
    assert abs(total - 1550e6) / 1550e6 < 0.01  # published: 1550M parameters
