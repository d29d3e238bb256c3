"""The speech LLM model classes on the tiny models: both architectures, three tasks, losses, masks, checkpoints."""
from __future__ import annotations

import argparse
import logging

import numpy as np
import pytest
import soundfile
import torch

from espnet_llm.bin.export_gates import gates_of
from espnet_llm.llm.chatglm3 import load_chatglm3
from espnet_llm.models.prompts import ANSWER_MARGIN, PROBLEM_KINDS, PromptLayout
from espnet_llm.models.speech_llm import IGNORE
from espnet_llm.tasks.preprocessor import SpeechLLMPreprocessor
from espnet_llm.tasks.speech_llm import SpeechLLMTask

ARCHITECTURES = ("decoder_only", "encoder_decoder")
VARIANTS = ("encoder_decoder_dyngate", "hybrid")  # issue 15: dynamic gates; speech in the prompt and cross-attention
TASKS = ("asr_short", "asr_long", "ner")


def model_args(tiny_models, arch="decoder_only", task="asr_short", **llm_conf):
    model, model_conf = ("encoder_decoder", {"gate": "dynamic"}) if arch == "encoder_decoder_dyngate" else (arch, {})
    return argparse.Namespace(
        model=model,
        model_conf=model_conf,
        speech_encoder="whisper",
        speech_encoder_conf={"model_path": str(tiny_models / "whisper")},
        speech_adapter="frame_stack" if model in ("decoder_only", "hybrid") else None,
        speech_adapter_conf={},
        llm="chatglm3",
        llm_conf={"model_path": str(tiny_models / "chatglm3"), "lora_rank": 4, "lora_dropout": 0.0, **llm_conf},
        prompt_task=task,
        num_history=2,
        preprocessor_conf={},
    )


def build(tiny_models, arch="decoder_only", task="asr_short", seed=0):
    torch.manual_seed(seed)
    return SpeechLLMTask.build_model(model_args(tiny_models, arch, task))


def batch_for(model, rows, seed=0):
    """rows: list of (seconds per segment, transcript, marked, history transcripts) -> model inputs."""
    g = torch.Generator().manual_seed(seed)
    wavs, segs, targets = [], [], []
    for seconds, text, marked, history in rows:
        pieces = [0.1 * torch.randn(int(s * 16000), generator=g) for s in seconds]
        wavs.append(torch.cat(pieces))
        segs.append([len(p) for p in pieces])
        targets.append(model.layout.target_ids(text, marked, history))
    pad = torch.nn.utils.rnn.pad_sequence
    batch = dict(
        speech=pad(wavs, batch_first=True),
        speech_lengths=torch.tensor([len(w) for w in wavs]),
        text=pad([torch.tensor(t) for t in targets], batch_first=True, padding_value=-1),
        text_lengths=torch.tensor([len(t) for t in targets]),
        utt_id=[f"utt{i}" for i in range(len(rows))],
    )
    if model.layout.uses_history:
        batch["speech_segments"] = pad([torch.tensor(s) for s in segs], batch_first=True, padding_value=-1)
    return batch


ROWS = [
    ((1.0, 0.8, 1.2), "北京欢迎你", "(北京)欢迎你", ["你好", "今天"]),
    ((1.5,), "张三来了", "[张三]来了", []),
]


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("task", TASKS)
def test_forward_backward_and_only_intended_parameters_change(tiny_models, arch, task):
    model = build(tiny_models, arch, task)
    rows = ROWS if task != "asr_short" else [(r[0][-1:], r[1], r[2], []) for r in ROWS]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss, stats, weight = model(**batch_for(model, rows))
    assert torch.isfinite(loss) and int(weight) == 2 and 0 <= float(stats["acc"]) <= 1
    loss.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    intended = "adapter." if arch == "decoder_only" else ".cross_attention."
    assert any("lora_" in n for n in changed) and any(intended in n for n in changed)
    for n in changed:
        assert "lora_" in n or intended in n or "trainable_tokens" in n or n in (
            "part_embedding.weight", "segment_embedding.weight"), f"{n} should be frozen"
    assert not any(n.startswith("speech_encoder.") for n in changed)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith("speech_encoder.") for n in trainable)


def open_cross_attention(model, seed=0):
    """The state of a trained encoder-decoder: output projections no longer zero, so that the speech matters."""
    g = torch.Generator().manual_seed(seed)
    for i in model.cross_attention_layers:
        out = model.llm.decoder_layers[i].cross_attention.out.weight
        out.data.copy_(0.05 * torch.randn(out.shape, generator=g))


def test_untrained_cross_attention_gives_the_plain_llm(tiny_models):
    model = build(tiny_models, "encoder_decoder", "asr_short").eval()
    plain = load_chatglm3(tiny_models / "chatglm3").eval()
    ids = torch.tensor([model.layout.prefix_ids + model.layout.tokenizer.encode("今天天气很好") + model.layout.suffix_ids])
    mask = torch.ones_like(ids)
    memory = torch.randn(1, 30, model.speech_encoder.output_size())
    segments = torch.zeros(1, 30, dtype=torch.long)
    gates = gates_of(model.state_dict())
    assert gates and all(g > 0.5 for g in gates.values())  # gates open, projections at zero
    with torch.no_grad(), model.attending_to(memory, torch.tensor([30]), segments):
        ours = model.llm.logits(model.llm.hidden_states(model.llm.embed(ids), mask))
        expected = plain(input_ids=ids).logits
        assert torch.allclose(ours, expected, atol=1e-6), (ours - expected).abs().max()
        open_cross_attention(model)  # a trained projection lets the speech in
        assert not torch.allclose(model.llm.logits(model.llm.hidden_states(model.llm.embed(ids), mask)), expected, atol=1e-4)


@pytest.mark.parametrize("arch", VARIANTS)
def test_untrained_variants_give_the_plain_llm(tiny_models, arch):
    """As the static gate: whatever the gates, zero output projections leave ChatGLM3 as it was."""
    model = build(tiny_models, arch, "asr_short").eval()
    plain = load_chatglm3(tiny_models / "chatglm3").eval()
    ids = torch.tensor([model.layout.prefix_ids + model.layout.tokenizer.encode("今天天气很好") + model.layout.suffix_ids])
    mask = torch.ones_like(ids)
    memory = torch.randn(1, 30, model.speech_encoder.output_size())  # the hybrid's cross-attention reads Whisper's
    with torch.no_grad(), model.attending_to(memory, torch.tensor([30]), torch.zeros(1, 30, dtype=torch.long)):
        ours = model.llm.logits(model.llm.hidden_states(model.llm.embed(ids), mask))
        expected = plain(input_ids=ids).logits
        assert torch.allclose(ours, expected, atol=1e-6), (ours - expected).abs().max()
        open_cross_attention(model)
        assert not torch.allclose(model.llm.logits(model.llm.hidden_states(model.llm.embed(ids), mask)), expected, atol=1e-4)


def test_untrained_hybrid_is_the_decoder_only_model(tiny_models):
    """Same adapter, same prompt: each segment's speech stacked on its own, followed by <|sep|>, with its part."""
    decoder_only = build(tiny_models, "decoder_only", "asr_long").eval()
    hybrid = build(tiny_models, "hybrid", "asr_long", seed=1).eval()
    hybrid.prompt_adapter.load_state_dict(decoder_only.adapter.state_dict())
    g = torch.Generator().manual_seed(2)
    part = torch.randn(decoder_only.part_embedding.weight.shape, generator=g)
    decoder_only.part_embedding.weight.data.copy_(part)
    hybrid.part_embedding.weight.data.copy_(part)
    hybrid.segment_embedding.load_state_dict(decoder_only.segment_embedding.state_dict())
    # segments of 47 and 41 Whisper frames: stacking the joined row by 5 would mix neighbouring segments
    batch = batch_for(decoder_only, [((0.93, 0.81, 1.2), *ROWS[0][1:]), ROWS[1]])
    speech = batch["speech"], batch["speech_lengths"], batch["speech_segments"]
    with torch.no_grad():
        for ours, expected in zip(hybrid.prompt_embeddings(*hybrid.encode_speech(*speech)),
                                  decoder_only.prompt_embeddings(*decoder_only.encode_speech(*speech))):
            assert ours.shape == expected.shape and torch.allclose(ours, expected, atol=1e-6)
        expected, _, _ = decoder_only(**batch)
        ours, _, _ = hybrid(**batch)
        assert float(ours) == pytest.approx(float(expected), abs=1e-6)
        open_cross_attention(hybrid)
        assert abs(float(hybrid(**batch)[0]) - float(expected)) > 1e-4


@pytest.mark.parametrize("arch", VARIANTS)
def test_variants_train_only_their_intended_parameters(tiny_models, arch):
    model = build(tiny_models, arch, "ner")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = batch_for(model, ROWS)
    for _ in range(2):  # the first step moves the zero output projections; the gates follow from the second
        loss, _, _ = model(**batch)
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    intended = (".cross_attention.", "prompt_adapter.") if arch == "hybrid" else (".cross_attention.",)
    for n in changed:
        assert "lora_" in n or any(i in n for i in intended) or "trainable_tokens" in n or n in (
            "part_embedding.weight", "segment_embedding.weight"), f"{n} should be frozen"
    assert all(any(i in n for n in changed) for i in intended) and any("lora_" in n for n in changed)
    gate = ".cross_attention.gate_net.weight" if arch == "encoder_decoder_dyngate" else ".cross_attention.gate"
    assert any(n.endswith(gate) for n in changed)


def test_dynamic_gates_are_measured_on_the_current_utterance(tiny_models):
    """export_gates' per-layer mean: the static gate's value at start; with the weights at zero each layer's bias
    alone, over exactly the positions that predict the current utterance's tokens (and its end)."""
    from espnet_llm.bin.export_gates import dynamic_gate_means

    model = build(tiny_models, "encoder_decoder_dyngate", "asr_long").eval()
    batch = batch_for(model, ROWS)
    means, tokens = dynamic_gate_means(model, [batch])
    targets = [model.layout.target_ids(text, marked, history) for _, text, marked, history in ROWS]
    sep = model.layout.sep_id
    assert tokens == sum(len(t) - (len(t) - t[::-1].index(sep) if sep in t else 0) for t in targets)
    assert means == pytest.approx(dict.fromkeys(model.cross_attention_layers, float(torch.tanh(torch.tensor(1.0)))))
    for i in model.cross_attention_layers:
        model.llm.decoder_layers[i].cross_attention.gate_net.bias.data.fill_(-0.5 * i)
    means, _ = dynamic_gate_means(model, [batch])
    assert means == pytest.approx({i: float(torch.tanh(torch.tensor(-0.5 * i))) for i in model.cross_attention_layers})


def reorder_segments(batch, row, order):
    """The batch with the speech segments of one row put in another order (lengths follow their audio)."""
    lengths = [int(n) for n in batch["speech_segments"][row] if n > 0]
    pieces = list(torch.split(batch["speech"][row, : sum(lengths)], lengths))
    reordered = dict(batch, speech=batch["speech"].clone(), speech_segments=batch["speech_segments"].clone())
    reordered["speech"][row, : sum(lengths)] = torch.cat([pieces[i] for i in order])
    reordered["speech_segments"][row, : len(lengths)] = torch.tensor([lengths[i] for i in order])
    return reordered


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_the_order_of_the_speech_segments_matters(tiny_models, arch):
    """Which audio is the current utterance must reach the model: with the encoder-decoder's memory an
    unordered set (no segment identity) the loss was the same for every order of history and current speech."""
    model = build(tiny_models, arch, "asr_long").eval()
    if arch != "decoder_only":
        open_cross_attention(model)
    batch = batch_for(model, ROWS[:1])
    with torch.no_grad():
        losses = [float(model(**reorder_segments(batch, 0, order))[0]) for order in ((0, 1, 2), (2, 0, 1), (1, 2, 0))]
    # float32 rounding of a loss near 8 is about 1e-6
    assert min(abs(a - b) for a, b in zip(losses, losses[1:] + losses[:1])) > 1e-5, losses


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_the_same_audio_is_marked_by_its_segment_from_the_first_step(tiny_models, arch):
    """Untrained, the same audio as a history segment and as the current utterance reaches the LLM differently
    (the history rows of the segment embedding start random), and as the current utterance it is the plain
    speech of short form (that row starts at zero). The decoder-only model's zero-started marking after the
    adapter gave both the same embeddings, and its long form transcribed the wrong segment."""
    model = build(tiny_models, arch, "asr_long").eval()
    wav = 0.1 * torch.randn(16000, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        memory, _, segments = model.encode_speech(torch.cat([wav, wav])[None], torch.tensor([32000]),
                                                  torch.tensor([[16000, 16000]]))
        plain, _, _ = model.encode_speech(wav[None], torch.tensor([16000]))
    as_history, as_current = memory[0][segments[0] == 1], memory[0][segments[0] == 0]
    assert as_history.shape == as_current.shape == plain[0].shape
    assert (as_history - as_current).norm() > 0.1 * as_current.norm()
    assert torch.allclose(as_current, plain[0], atol=1e-5)  # a batch of two, not bit-equal to one


def test_decoder_only_prompt_separates_the_segments(tiny_models):
    model = build(tiny_models, "decoder_only", "asr_long")
    batch = batch_for(model, ROWS)
    memory, lengths, segments = model.encode_speech(batch["speech"], batch["speech_lengths"], batch["speech_segments"])
    prompts = model.prompt_embeddings(memory, lengths, segments)
    sep = model.llm.embed(torch.tensor([model.layout.sep_id]))[0]
    for b, history in enumerate(r[3] for r in ROWS):
        speech = prompts[b][len(model.layout.prefix_ids): -len(model.layout.suffix_ids)]
        is_sep = [i for i in range(len(speech)) if torch.equal(speech[i], sep)]
        assert len(speech) == int(lengths[b]) + len(history) and len(is_sep) == len(history)
        # each separator closes a history segment: the frames before it are that segment's, in time order
        ends = torch.tensor([int(n) for n in batch["speech_segments"][b] if n > 0]).cumsum(0)
        frames_per_sample = int(lengths[b]) / int(ends[-1])
        assert [round(i - k) for k, i in enumerate(is_sep)] == [round(int(e) * frames_per_sample) for e in ends[:-1]]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_current_utterance_accuracy_and_speech_reliance(tiny_models, arch):
    model = build(tiny_models, arch, "asr_long").eval()
    batch = batch_for(model, ROWS)
    memory, lengths, segments = model.encode_speech(batch["speech"], batch["speech_lengths"], batch["speech_segments"])
    targets = [batch["text"][b, : batch["text_lengths"][b]] for b in range(2)]
    _, labels = model.teacher_forced_states(memory, lengths, targets, segments)
    current = model.current_utterance_mask(labels)
    # row 0: "你好 <sep> 今天 <sep> 北京欢迎你 </s>": only the last transcript and the end token; row 1: all
    expected = [model.layout.tokenizer.encode("北京欢迎你") + [model.layout.eos_id], targets[1].tolist()]
    assert [labels[b][current[b]].tolist() for b in range(2)] == expected
    with torch.no_grad():
        loss, stats, _ = model(**batch)
        assert float(stats["loss_other_speech"]) - float(loss) == pytest.approx(float(stats["speech_reliance"]), abs=1e-5)
        single = {k: v[:1] for k, v in batch.items()}
        assert model(**single)[1]["speech_reliance"] is None  # no other row to borrow speech from
    model.train()
    assert "speech_reliance" not in model(**batch)[1]  # measured on the validation set only


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_loss_covers_exactly_target_and_end_token(tiny_models, arch):
    model = build(tiny_models, arch, "ner")
    batch = batch_for(model, ROWS)
    memory, memory_lengths, segments = model.encode_speech(batch["speech"], batch["speech_lengths"], batch["speech_segments"])
    targets = [batch["text"][b, : batch["text_lengths"][b]] for b in range(2)]
    hidden, labels = model.teacher_forced_states(memory, memory_lengths, targets, segments)
    for b, target in enumerate(targets):
        scored = labels[b][labels[b] != IGNORE]
        assert scored.tolist() == target.tolist()
        assert scored[-1] == model.layout.eos_id
        # the scored positions are the last len(target) real positions of the row
        real = len(model.layout.prefix_ids) + len(model.layout.suffix_ids) + len(target)
        if arch == "decoder_only":
            real += int(memory_lengths[b]) + len(ROWS[b][3])  # speech embeddings and the separators after history
        assert (labels[b][:real] != IGNORE).sum() == len(target) and (labels[b][real:] == IGNORE).all()
    loss, _, _ = model(**batch)
    manual = torch.nn.functional.cross_entropy(
        model.llm.logits(hidden[:, :-1][labels[:, 1:] != IGNORE]), labels[:, 1:][labels[:, 1:] != IGNORE]
    )
    assert torch.allclose(loss, manual, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_padding_does_not_leak(tiny_models, arch):
    model = build(tiny_models, arch, "asr_short").eval()
    short = [((0.6,), "你好", None, [])]
    longer = [((1.9,), "北京欢迎你们大家", None, [])]
    with torch.no_grad():
        # training: right padding
        loss_alone, _, _ = model(**batch_for(model, short, seed=1))
        both = batch_for(model, short + longer, seed=1)
        memory, lengths, segments = model.encode_speech(both["speech"], both["speech_lengths"])
        targets = [both["text"][b, : both["text_lengths"][b]] for b in range(2)]
        hidden, labels = model.teacher_forced_states(memory, lengths, targets, segments)
        row0 = torch.nn.functional.cross_entropy(
            model.llm.logits(hidden[0, :-1][labels[0, 1:] != IGNORE]), labels[0, 1:][labels[0, 1:] != IGNORE]
        )
        assert torch.allclose(loss_alone, row0, atol=1e-5)
        # decoding: left padding
        single = batch_for(model, short, seed=1)
        [(ids_alone, score_alone, _)] = model.generate(single["speech"], single["speech_lengths"], max_new_tokens=6)[0]
        [(ids_batch, score_batch, _)] = model.generate(both["speech"], both["speech_lengths"], max_new_tokens=6)[0]
        assert ids_alone == ids_batch and torch.allclose(score_alone, score_batch, atol=1e-3)


def test_broken_row_is_skipped_and_named(tiny_models, caplog):
    model = build(tiny_models, "decoder_only", "asr_short")
    good = batch_for(model, [ROWS[1]])
    mixed = batch_for(model, [ROWS[1], ((0.5,), "坏的", None, [])])
    mixed["speech_lengths"][1] = 0  # what the preprocessor makes of an unreadable, empty or too long file
    mixed["utt_id"] = ["good", "BROKEN_UTT"]
    with caplog.at_level(logging.WARNING):
        loss_mixed, _, weight = model(**mixed)
    loss_good, _, _ = model(**good)
    assert int(weight) == 1 and torch.allclose(loss_mixed, loss_good, atol=1e-5)
    assert "BROKEN_UTT" in caplog.text and model.num_broken == 1
    mixed["speech_lengths"][0] = 0  # a batch of nothing but broken rows still steps (zero loss)
    loss, _, weight = model(**mixed)
    assert float(loss.detach()) == 0.0 and int(weight) == 0 and loss.requires_grad


def test_preprocessor_reports_corrupt_empty_and_too_long_audio(tiny_models, tmp_path, caplog):
    from espnet_llm.llm.tokenizer import ChatGLM3Tokenizer
    from espnet_llm.tasks.speech_loader import open_entry

    (tmp_path / "corrupt.wav").write_bytes(b"RIFF not really a wav file")
    soundfile.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.int16), 16000)
    soundfile.write(tmp_path / "long.wav", np.zeros(31 * 16000, dtype=np.int16), 16000)
    soundfile.write(tmp_path / "ok.wav", (np.random.default_rng(0).standard_normal(8000) * 1000).astype(np.int16), 16000)
    (tmp_path / "wav.scp").write_text("".join(f"{n} {tmp_path / n}.wav\n" for n in ("corrupt", "empty", "long", "ok")))
    layout = PromptLayout(ChatGLM3Tokenizer(tiny_models / "chatglm3" / "tokenizer.model"), "asr_short")
    pre = SpeechLLMPreprocessor(layout)
    loader = open_entry(str(tmp_path / "wav.scp"), "sound")
    with caplog.at_level(logging.WARNING):
        lengths = {uid: len(pre(uid, {"speech": loader[uid], "text": "好"})["speech"]) for uid in loader}
    assert lengths == {"corrupt": 0, "empty": 0, "long": 0, "ok": 8000}
    for uid, reason in (("corrupt", "cannot read"), ("empty", "empty"), ("long", "31.0 s")):
        assert any(uid in r.message and reason in r.message for r in caplog.records), (uid, caplog.text)


def test_history_resolved_from_the_data_directory(tiny_models, tmp_path):
    from espnet_llm.llm.tokenizer import ChatGLM3Tokenizer

    for i, n in enumerate((1600, 3200, 4800)):
        soundfile.write(tmp_path / f"u{i}.wav", np.full(n, 1000 * (i + 1), dtype=np.int16), 16000)
    (tmp_path / "wav.scp").write_text("".join(f"u{i} {tmp_path}/u{i}.wav\n" for i in range(3)))
    (tmp_path / "text").write_text("u0 你好\nu1 今天\nu2 北京\n")
    tokenizer = ChatGLM3Tokenizer(tiny_models / "chatglm3" / "tokenizer.model")
    entries = [(str(tmp_path / "wav.scp"), "speech", "sound"), (str(tmp_path / "text"), "text", "text")]
    pre = SpeechLLMPreprocessor(PromptLayout(tokenizer, "ner"), entries, num_history=1)
    out = pre("u2", {"speech": soundfile.read(tmp_path / "u2.wav")[0], "text": "北京", "text_ner": "(北京)", "history": "u0 u1"})
    assert out["speech_segments"].tolist() == [3200, 4800]  # K=1: only the most recent, then the current
    assert np.allclose(out["speech"][:3200], 2000 / 32768) and np.allclose(out["speech"][3200:], 3000 / 32768)
    layout = pre.layout
    assert out["text"].tolist() == tokenizer.encode("今天") + [layout.sep_id] + tokenizer.encode("北京") + [
        layout.ner_id] + tokenizer.encode("(北京)") + [layout.eos_id]


def test_random_history_trains_every_history_length_and_validates_on_all(tiny_models, tmp_path):
    import random

    for i, n in enumerate((1600, 3200, 4800)):
        soundfile.write(tmp_path / f"u{i}.wav", np.full(n, 1000, dtype=np.int16), 16000)
    (tmp_path / "wav.scp").write_text("".join(f"u{i} {tmp_path}/u{i}.wav\n" for i in range(3)))
    (tmp_path / "text").write_text("u0 你好\nu1 今天\nu2 北京\n")
    entries = [(str(tmp_path / "wav.scp"), "speech", "sound"), (str(tmp_path / "text"), "text", "text")]
    args = model_args(tiny_models, task="asr_long")
    args.preprocessor_conf = {"random_history": True}
    args.train_data_path_and_name_and_type, args.valid_data_path_and_name_and_type = entries, []
    row = {"speech": np.zeros(1600, dtype=np.float32), "text": "北京", "history": "u0 u1"}
    random.seed(0)
    every = (1600, 3200, 1600)  # u0, u1, then the current utterance
    for train, lengths_seen in ((True, {every[2:], every[1:], every}), (False, {every})):
        pre = SpeechLLMTask.build_preprocess_fn(args, train=train)
        outs = [pre("u2", dict(row)) for _ in range(30)]
        # the most recent k previous utterances, k = 0, 1, 2 in training; all of them otherwise
        assert {tuple(o["speech_segments"].tolist()) for o in outs} == lengths_seen, train
        for o in outs:  # the target has a transcript for each segment: the history's it kept, then the current
            assert (o["text"] == pre.layout.sep_id).sum() == len(o["speech_segments"]) - 1


def layout_of(tiny_models, task):
    from espnet_llm.llm.tokenizer import ChatGLM3Tokenizer

    return PromptLayout(ChatGLM3Tokenizer(tiny_models / "chatglm3" / "tokenizer.model"), task)


def test_parser_reads_back_and_never_fails(tiny_models):
    ner = layout_of(tiny_models, "ner")
    good = ner.parse(ner.target_ids("张三在北京", "[张三]在(北京)", ["你好"]), num_history=1)
    assert (good.text, good.marked, good.history, good.problems) == ("张三在北京", "[张三]在(北京)", ["你好"], [])
    assert [(e.type, e.text) for e in good.entities] == [("PER", "张三"), ("LOC", "北京")]
    enc, sep, tag = ner.tokenizer.encode, ner.sep_id, ner.ner_id
    for ids in ([], [sep, sep], [tag], enc("[张三") + [tag] + enc("[张三)在((北"), [tag, tag, sep] + enc(">"), enc("你好")):
        for num_history in (0, 2):
            parsed = ner.parse(ids, num_history)
            assert isinstance(parsed.text, str) and all(e.type in ("PER", "LOC", "ORG") for e in parsed.entities)
            assert all(p.kind in PROBLEM_KINDS for p in parsed.problems)
    short = layout_of(tiny_models, "asr_short")
    assert short.parse(enc("你好") + [short.eos_id] + enc("多余"), 0).text == "你好"


def test_entities_of_a_marked_copy_that_differs_index_the_transcript(tiny_models):
    ner = layout_of(tiny_models, "ner")
    parsed = ner.parse(ner.target_ids("今天张三在北京", "[张三]去(北京)和(上海)"), num_history=0)
    assert parsed.kinds == ["ner_text_mismatch"] and "not in it: 上海" in str(parsed.problems[0])
    assert parsed.text == "今天张三在北京" and parsed.marked == "[张三]去(北京)和(上海)"  # the model's copy, as written
    assert [(e.type, parsed.text[e.start:e.end]) for e in parsed.entities] == [("PER", "张三"), ("LOC", "北京")]


SEP, NER = "<|sep|>", "<|ner|>"
# (task, answer pieces, history utterances of the row, ran to max_new_tokens) -> (current text, problem kinds)
PARSE_CASES = {
    "well formed": (("asr_long", ["你好", SEP, "今天", SEP, "北京"], 2, False), ("北京", [])),
    "well formed at a speaker's start": (("ner", ["北京", NER, "(北京)"], 0, False), ("北京", [])),
    "trailing separator": (("asr_long", ["你好", SEP, "北京", SEP], 1, False), ("北京", ["trailing_separator"])),
    "trailing separator before ner": (
        ("ner", ["你好", SEP, "北京", SEP, NER, "(北京)"], 1, False), ("北京", ["trailing_separator"])),
    "missing separator": (("asr_long", ["你好今天", SEP, "北京"], 2, False), ("北京", ["missing_separator"])),
    "missing separator, the current utterance left out before ner": (
        ("ner", ["你好", SEP, "今天", NER, "(北京)"], 2, False), ("北京", ["missing_separator", "ner_fallback_text"])),
    "extra separator": (("asr_long", ["你好", SEP, "今天", SEP, "北京"], 1, False), ("北京", ["extra_separator"])),
    "extra separator at a speaker's start": (("asr_long", ["你好", SEP, "北京"], 0, False), ("北京", ["extra_separator"])),
    "extra separators of an answer that went on": (
        ("asr_long", ["你好", SEP, "北京", SEP, "北京", SEP, "北"], 1, True),
        ("北京", ["truncated", "extra_separator"])),
    "truncated": (("asr_short", ["北京欢迎"], 0, True), ("北京欢迎", ["truncated"])),
    "repetition": (("asr_short", ["北京欢迎你" + "的" * 10], 0, True), ("北京欢迎你的", ["truncated", "repetition"])),
    "repeated unit cut short": (("asr_short", ["你好" + "北京欢迎" * 3 + "北京"], 0, True), (
        "你好北京欢迎", ["truncated", "repetition"])),
    "a loop before the ner token never reached": (("ner", ["你好", SEP, "北京" + "欢迎" * 6], 1, True), (
        "北京欢迎", ["truncated", "repetition", "no_ner_token"])),
    "a reduplication is no loop": (("asr_short", ["谢谢谢谢"], 0, False), ("谢谢谢谢", [])),
    "nothing before ner": (("ner", [NER, "[张三]在(北京)"], 0, False), ("张三在北京", ["ner_fallback_text"])),
    "only history and a separator before ner": (
        ("ner", ["你好", SEP, NER, "(北京)"], 1, False),
        ("北京", ["trailing_separator", "missing_separator", "ner_fallback_text"])),
    "no ner token": (("ner", ["你好", SEP, "北京"], 1, False), ("北京", ["no_ner_token"])),
    "ner token in asr": (("asr_long", ["北京", NER, "(北京)"], 0, False), ("北京", ["stray_task_token"])),
    "nothing at all": (("asr_long", [], 2, False), ("", ["empty_current"])),
}


@pytest.mark.parametrize("case", PARSE_CASES)
def test_parser_finds_the_current_utterance_and_flags_each_repair(tiny_models, case):
    (task, pieces, num_history, truncated), (text, kinds) = PARSE_CASES[case]
    layout = layout_of(tiny_models, task)
    special = {SEP: layout.sep_id, NER: layout.ner_id}
    ids = [i for piece in pieces for i in ([special[piece]] if piece in special else layout.tokenizer.encode(piece))]
    parsed = layout.parse(ids, num_history, truncated)
    assert (parsed.text, parsed.kinds) == (text, kinds), [str(p) for p in parsed.problems]
    if task == "ner" and NER in pieces:
        assert parsed.marked == pieces[-1] and parsed.entities


def steer(model, token_ids, value):
    """Every step's logits of ``token_ids`` set to ``value``; returns the hook's handle."""
    def hook(module, args, logits):
        logits[..., token_ids] = value
        return logits
    return model.llm.model.get_output_embeddings().register_forward_hook(hook)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_generate_tells_the_parser_each_rows_history_and_whether_it_ended(tiny_models, beam_size):
    model = build(tiny_models, "decoder_only", "asr_long").eval()
    batch = batch_for(model, ROWS)  # 2 history utterances, then none
    calls = []
    parse = model.layout.parse
    model.layout.parse = lambda ids, num_history, truncated=False: calls.append((num_history, truncated)) or parse(
        ids, num_history, truncated)
    never_ends = steer(model, model.layout.stop_ids, float("-inf"))
    out = [best for [best] in model.generate(batch["speech"], batch["speech_lengths"], batch["speech_segments"],
                                             beam_size=beam_size, max_new_tokens=5)]
    never_ends.remove()
    assert calls == [(2, True), (0, True)] and all(len(ids) == 5 and "truncated" in p.kinds for ids, _, p in out)
    calls.clear()
    steer(model, [model.layout.eos_id], 1e4)
    steer(model, [model.layout.sep_id], 5e3)
    out = [best for [best] in model.generate(batch["speech"], batch["speech_lengths"], batch["speech_segments"],
                                             beam_size=beam_size, max_new_tokens=5)]
    # the answer's shape holds: the row with 2 history utterances may end only after its 2 separators, the
    # row without history at once, and never with a separator (AnswerShape)
    sep = model.layout.sep_id
    assert calls == [(2, False), (0, False)] and [ids for ids, _, _ in out] == [[sep, sep], []]
    assert out[1][2].kinds == ["empty_current"]


@pytest.mark.parametrize("beam_size", [1, 3])
def test_a_ner_answer_ends_only_after_its_separators_and_the_ner_token(tiny_models, beam_size):
    model = build(tiny_models, "decoder_only", "ner").eval()
    batch = batch_for(model, ROWS)
    layout = model.layout
    steer(model, [layout.eos_id], 1e4)  # the end first, then a separator, then <|ner|>, when allowed
    steer(model, [layout.sep_id], 5e3)
    steer(model, [layout.ner_id], 2e3)
    out = model.generate(batch["speech"], batch["speech_lengths"], batch["speech_segments"], beam_size=beam_size,
                         max_new_tokens=5)
    assert [ids for [(ids, _, _)] in out] == [[layout.sep_id, layout.sep_id, layout.ner_id], [layout.ner_id]]


def test_max_new_tokens_follows_the_speech(tiny_models):
    from espnet_llm.bin.speech_llm_inference import token_limit

    short, ner = layout_of(tiny_models, "asr_short"), layout_of(tiny_models, "ner")
    lengths = torch.tensor([16000, 48000])  # 1 s, 3 s at 16 kHz
    segments = torch.tensor([[16000, -1, -1], [8000, 8000, 32000]])  # the second: 2 history utterances, then 2 s
    assert token_limit(short, lengths, None, 16000, 8.0, 200) == 8 * 3 + ANSWER_MARGIN
    # ner: every transcript (3 s), the current one again marked (2 s), two separators
    assert token_limit(ner, lengths, segments, 16000, 8.0, 200) == 8 * (3 + 2) + 2 + ANSWER_MARGIN
    assert token_limit(ner, lengths, segments, 16000, 8.0, 30) == 30  # never above the configured limit
    assert token_limit(short, lengths[:1], None, 16000, 10.0, 200) == 10 + ANSWER_MARGIN


@pytest.mark.parametrize("arch", ARCHITECTURES + VARIANTS)
def test_trainable_only_checkpoint_reloads_and_decodes_the_same(tiny_models, arch):
    model = build(tiny_models, arch, "asr_short")
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = batch_for(model, [((1.0,), "你好", None, [])])
    for _ in range(3):
        model(**batch)[0].backward()
        optimizer.step()
        optimizer.zero_grad()
    state = model.state_dict()
    assert set(state) == {n for n, p in model.named_parameters() if p.requires_grad}
    fresh = build(tiny_models, arch, "asr_short", seed=1)
    with pytest.raises(RuntimeError, match="missing trainable"):
        fresh.load_state_dict({k: v for k, v in state.items() if "lora_" not in k})
    fresh.load_state_dict(state)
    model.eval(), fresh.eval()
    [[(ids, score, _)]] = model.generate(batch["speech"], batch["speech_lengths"], max_new_tokens=8)
    [[(ids_again, score_again, _)]] = fresh.generate(batch["speech"], batch["speech_lengths"], max_new_tokens=8)
    assert ids == ids_again and torch.allclose(score, score_again, atol=1e-4)
    beams = fresh.generate(batch["speech"], batch["speech_lengths"], beam_size=3, max_new_tokens=8)
    assert len(beams) == 1 and isinstance(beams[0][0][0], list)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_generation_never_emits_embedding_rows_without_a_token(tiny_models, beam_size):
    """ChatGLM3 pads its vocabulary: rows past the tokenizer must never be generated, even when favoured."""
    model = build(tiny_models)
    model.eval()
    vocab_rows, num_tokens = model.llm.model.config.vocab_size, len(model.llm.tokenizer)
    assert vocab_rows > num_tokens  # the tiny model pads like the real one
    output_layer = model.llm.model.get_output_embeddings()
    with torch.no_grad():  # make the padding rows the most likely outputs everywhere
        getattr(output_layer, "base_layer", output_layer).weight[num_tokens:] = 10.0
    batch = batch_for(model, ROWS)
    for [(ids, _, parsed)] in model.generate(batch["speech"], batch["speech_lengths"], beam_size=beam_size,
                                             max_new_tokens=5):
        assert ids and max(ids) < num_tokens


@pytest.mark.parametrize("beam_size", [1, 3])
@pytest.mark.parametrize("arch", ARCHITECTURES + VARIANTS)
def test_decoding_sees_the_answer_parts_as_training_does(tiny_models, arch, beam_size):
    """Each generated token is fed with its answer part added, as in the teacher-forced loss: the greedy answer
    is the teacher-forced argmax over itself, and a beam's score is its teacher-forced log-probability."""
    model = build(tiny_models, arch, "asr_long").eval()
    if arch != "decoder_only":
        open_cross_attention(model)
    g = torch.Generator().manual_seed(1)
    model.part_embedding.weight.data.copy_(torch.randn(model.part_embedding.weight.shape, generator=g))
    batch = batch_for(model, ROWS[:1])
    layout = model.layout
    steer(model, [layout.sep_id], 3.0)  # reach the current utterance's part within a few tokens
    [[(ids, score, _)]] = model.generate(batch["speech"], batch["speech_lengths"], batch["speech_segments"],
                                         beam_size=beam_size, max_new_tokens=12)
    assert ids.count(layout.sep_id) == 2
    memory, lengths, segments = model.encode_speech(batch["speech"], batch["speech_lengths"], batch["speech_segments"])
    with torch.no_grad():
        hidden, labels = model.teacher_forced_states(memory, lengths, [torch.tensor(ids)], segments)
        logits = model.llm.logits(hidden[0, -len(ids) - 1:-1])
    # the score: the model's log-probability of each answer token (greedy and beam alike)
    log_probs = logits.log_softmax(-1)[torch.arange(len(ids)), torch.tensor(ids)]
    assert torch.allclose(score[:len(ids)], log_probs, atol=1e-5)
    if beam_size == 1:
        logits[2:, layout.sep_id] = float("-inf")  # what AnswerShape bans after the second separator
        assert logits.argmax(-1).tolist() == ids


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_ctc_loss_reads_the_current_transcript_on_the_current_speech_and_trains_the_adapter_side(tiny_models, arch):
    args = model_args(tiny_models, arch, "ner")
    args.model_conf = {**args.model_conf, "ctc_weight": 0.5}
    torch.manual_seed(0)
    model = SpeechLLMTask.build_model(args)
    batch = batch_for(model, ROWS)
    # the current utterance's plain transcript: no history transcript, no separator, no marked copy, no </s>
    target = torch.tensor(model.layout.target_ids("北京欢迎你", "(北京)欢迎你", ["你好", "今天"]))
    assert model.current_transcript(target).tolist() == model.layout.tokenizer.encode("北京欢迎你")
    loss, stats, _ = model(**batch)
    assert stats["loss_ctc"] > 0 and torch.isclose(loss, stats["loss"] + 0.5 * stats["loss_ctc"])
    loss.backward()
    assert model.ctc_head.weight.grad.abs().sum() > 0
    # only the current segment's frames are read: the history's speech does not change the CTC loss
    memory, lengths, segments = model.encode_speech(batch["speech"], batch["speech_lengths"], batch["speech_segments"])
    targets = [batch["text"][b, :int(batch["text_lengths"][b])] for b in range(2)]
    history = segments > 0
    noisy = memory + 5 * torch.randn_like(memory) * history[..., None]
    assert torch.isclose(model.ctc_loss(memory, lengths, segments, targets),
                         model.ctc_loss(noisy, lengths, segments, targets))
    assert not torch.isclose(model.ctc_loss(memory, lengths, segments, targets),
                             model.ctc_loss(memory + 5 * torch.randn_like(memory), lengths, segments, targets))
