"""How much the decoder-only model looks at the speech (the paper's Figure 2b): per LLM layer, the share of
attention that the current utterance's answer tokens give to the speech embeddings of the prompt.

For each layer, the attention weights of a teacher-forced pass (eager attention, so that the weights exist) are
summed over the speech positions of the prompt (the adapted Whisper frames of every segment, history ones
included; not the prefix, the ``<|sep|>`` after each history segment, nor the task tokens), then averaged over the
heads and over the current utterance's target tokens (those after the last ``<|sep|>``, as ``acc_current``
counts them: in CoT its marked copy too), all rows of all batches pooled, each token counting once.
"""
from __future__ import annotations

from typing import Iterable

import torch

from espnet_llm.models.speech_llm import IGNORE


def attention_mass(attentions: Iterable[torch.Tensor], key_mask: torch.Tensor, query_mask: torch.Tensor
                   ) -> tuple[torch.Tensor, int]:
    """attentions: per layer (B, heads, L, L) weights, each query's row summing to 1; key_mask, query_mask (B, L)
    bool. -> (per layer the summed attention mass on the key positions, averaged over heads, summed over the
    query positions; the number of query positions), so that batches add up before the division."""
    sums = []
    for weights in attentions:
        on_keys = (weights.float() * key_mask[:, None, None, :]).sum(-1).mean(1)  # (B, L): mean over heads
        sums.append(on_keys[query_mask].sum())
    return torch.stack(sums), int(query_mask.sum())


def speech_positions(prefix_len: int, memory_lengths: torch.Tensor, memory_segments: torch.Tensor,
                     prompt_lengths: list[int], length: int) -> torch.Tensor:
    """(B, length) True at the speech embeddings of each row's prompt: after the prefix, each segment's frames,
    and a ``<|sep|>`` after every segment but the last (DecoderOnlySpeechLLM.speech_in_prompt's layout; the
    prompt's length, known from the labels, checks it)."""
    mask = torch.zeros(len(prompt_lengths), length, dtype=torch.bool)
    for b, n in enumerate(memory_lengths.tolist()):
        segments = memory_segments[b, :n].tolist()
        is_speech = []
        for i, segment in enumerate(segments):
            is_speech.append(True)
            if i + 1 < n and segments[i + 1] != segment:
                is_speech.append(False)
        suffix_len = prompt_lengths[b] - prefix_len - len(is_speech)
        if suffix_len < 0:
            raise ValueError(f"row {b}: a prompt of {prompt_lengths[b]} positions cannot hold its {n} speech frames "
                             f"after a prefix of {prefix_len}: not the decoder-only prompt layout")
        mask[b, prefix_len:prefix_len + len(is_speech)] = torch.tensor(is_speech)
    return mask


@torch.no_grad()
def speech_attention_share(model, batches: Iterable[dict]) -> dict:
    """model: a DecoderOnlySpeechLLM; batches: the task's collated batches (speech, speech_lengths, text,
    text_lengths[, speech_segments]). -> {"share": per layer, "tokens": the current-utterance tokens averaged
    over, "utterances": rows read}."""
    captured: list[torch.Tensor] = []
    layers = model.llm.decoder_layers
    hooks = [layer.self_attn.register_forward_hook(lambda _m, _i, out: captured.append(out[1])) for layer in layers]
    config = model.llm.causal_lm.config
    implementation = config._attn_implementation
    config._attn_implementation = "eager"  # SDPA and flash kernels return no weights
    sums, tokens, utterances = torch.zeros(len(layers)), 0, 0
    try:
        for batch in batches:
            captured.clear()
            passed = model.teacher_forced_batch(batch)  # broken utterances: none of their tokens
            if passed is None:
                continue
            lengths, memory_segments, labels = passed
            prompt_lengths = [int((row != IGNORE).nonzero()[0]) for row in labels]
            keys = speech_positions(len(model.layout.prefix_ids), lengths.cpu(), memory_segments.cpu(),
                                    prompt_lengths, labels.shape[1])
            mass, count = attention_mass([w.cpu() for w in captured], keys, model.current_utterance_mask(labels).cpu())
            sums += mass
            tokens += count
            utterances += len(lengths)
    finally:
        config._attn_implementation = implementation
        for hook in hooks:
            hook.remove()
    if tokens == 0:
        raise ValueError("no current-utterance tokens in the batches")
    return {"share": (sums / tokens).tolist(), "tokens": tokens, "utterances": utterances}
