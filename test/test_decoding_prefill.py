"""Decoding reuses what does not change: the prompt is run once per utterance (not once per beam), and the
cross-attention projects the speech memory once (not at every generated token); outputs stay those of the plain path."""
from __future__ import annotations

import pytest
import torch
from test_speech_llm_models import ARCHITECTURES, ROWS, batch_for, build, open_cross_attention

from espnet_llm.benchmarks.speech_llm import plain_decoding

BEAM = 3


def decoding_model(tiny_models, arch):
    """The NER model (history: long prompts), cross-attention opened so that the speech memory matters."""
    model = build(tiny_models, arch, "ner").eval()
    if arch == "encoder_decoder":
        open_cross_attention(model)
    return model


def decode(model, batch, beam_size):
    return [best for [best] in model.generate(
        batch["speech"], batch["speech_lengths"], batch["speech_segments"], beam_size=beam_size, max_new_tokens=8
    )]


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("beam_size", [1, BEAM])
def test_decoding_matches_the_plain_path(tiny_models, arch, beam_size):
    model = decoding_model(tiny_models, arch)
    batch = batch_for(model, ROWS)
    ours = decode(model, batch, beam_size)
    with plain_decoding(model):
        plain = decode(model, batch, beam_size)
    for (ids, score, _), (plain_ids, plain_score, _) in zip(ours, plain):
        assert ids == plain_ids and torch.allclose(score, plain_score, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_beam_search_runs_the_prompt_for_each_utterance_once(tiny_models, arch):
    model = decoding_model(tiny_models, arch)
    batch = batch_for(model, ROWS)
    rows = len(ROWS)
    memory, lengths, segments = model.encode_speech(batch["speech"], batch["speech_lengths"], batch["speech_segments"])
    width = model.left_padded_prompts(memory, lengths, segments)[0].shape[1]
    calls = []  # (rows, positions) of each LLM forward
    model.llm.decoder_layers[0].register_forward_pre_hook(lambda layer, args: calls.append(tuple(args[0].shape[:2])))
    decode(model, batch, BEAM)
    # the prompt but its last position for the B rows, then one position at a time for the B * beam rows, then
    # one teacher-forced pass that scores the B answers
    assert calls[0] == (rows, width - 1) and set(calls[1:-1]) == {(rows * BEAM, 1)} and calls[-1][0] == rows
    calls.clear()
    with plain_decoding(model):
        decode(model, batch, BEAM)
    assert calls[0] == (rows * BEAM, width)  # what transformers does on its own


def test_cross_attention_projects_the_memory_once_per_memory(tiny_models):
    model = decoding_model(tiny_models, "encoder_decoder")
    batch = batch_for(model, ROWS)
    key = model.llm.decoder_layers[0].cross_attention.key
    projected = []
    key.register_forward_hook(lambda layer, args, out: projected.append(args[0].shape[0]))
    decode(model, batch, BEAM)
    # the prompt's memory, the beams' memory, then the scoring pass's (teacher-forced, as in training)
    assert projected == [len(ROWS), len(ROWS) * BEAM, len(ROWS)]
    # training projects at every call, so gradients reach the key and value projections
    model.train()
    model(**batch)[0].backward()
    assert key.weight.grad.abs().sum() > 0
