"""What a user with the real weights runs: the dtypes of what is frozen and what trains, the task-token rows of
both embedding layers, the float32 gate add, training without a padding mask, and the weight-decay groups. The
full-size configs are built on the meta device (no weights), the rest on the tiny models."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from espnet_llm.bin.count_params import build_on_meta
from espnet_llm.llm.lora import GLM_PROJECTIONS
from espnet_llm.models.cross_attention import GatedCrossAttention
from espnet_llm.models.param_count import trainable_counts
from espnet_llm.llm.tokenizer import NER_TOKEN, SEPARATOR, TASK_TOKEN
from espnet_llm.tasks.speech_llm import SpeechLLMTask

CONF = Path(__file__).resolve().parents[1] / "egs2" / "aishell_ner" / "llm1" / "conf"
ARCHITECTURES = ("decoder_only", "encoder_decoder")


def task_token_ids(tokenizer) -> list[int]:
    return sorted({tokenizer.token_id(t) for t in (*TASK_TOKEN.values(), SEPARATOR, NER_TOKEN)})


def token_rows(model) -> dict[str, torch.nn.Module]:
    """The peft layers that train single rows, by the layer they wrap ('embed_tokens', 'lm_head')."""
    return {n.split(".")[-2]: m for n, m in model.named_modules() if n.endswith(".token_adapter")}


@pytest.fixture(scope="module")
def full_size(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("full_size")
    return {arch: build_on_meta(CONF / f"train_{arch}_short.yaml", workdir / arch)[1] for arch in ARCHITECTURES}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_full_size_frozen_weights_are_bf16_and_what_trains_float32(full_size, arch):
    model = full_size[arch]
    frozen = {n: p.dtype for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}
    assert sum(p.numel() for p in model.parameters() if not p.requires_grad) > 6.8e9  # ChatGLM3-6B + Whisper encoder
    assert any(n.startswith("speech_encoder.") for n in frozen) and any(n.startswith("llm.") for n in frozen)
    assert {n for n, d in frozen.items() if d != torch.bfloat16} == set()
    assert {n for n, d in trainable.items() if d != torch.float32} == set()
    assert any("lora_" in n for n in trainable)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_full_size_task_tokens_train_their_input_and_output_rows(full_size, arch):
    model = full_size[arch]
    rows = token_rows(model)
    assert set(rows) == {"embed_tokens", "lm_head"}
    for layer in rows.values():
        assert layer.token_indices["default"] == task_token_ids(model.llm.tokenizer)
        assert layer.trainable_tokens_delta["default"].requires_grad


def test_full_size_lora_is_the_papers_modules(full_size):
    lora_modules = {n.split(".")[-4] for n, _ in full_size["decoder_only"].named_parameters() if "lora_A" in n}
    assert lora_modules == set(GLM_PROJECTIONS) == {"q_proj", "k_proj", "v_proj", "gate_up_proj", "down_proj"}


def test_the_hybrids_prompt_adapter_is_counted_as_adapter_not_llm(tmp_path):
    """count_params: the hybrid trains the decoder-only model's adapter (for its prompt) and the encoder-decoder
    model's cross-attention; its LLM trains the same LoRA and token rows as theirs, nothing more."""
    counts = {arch: trainable_counts(build_on_meta(CONF / f"train_{arch}_short.yaml", tmp_path / arch)[1])
              for arch in ("decoder_only", "encoder_decoder", "hybrid")}
    assert counts["hybrid"]["adapter"] == counts["decoder_only"]["adapter"] > 40e6
    assert counts["hybrid"]["cross-attention"] == counts["encoder_decoder"]["cross-attention"]
    assert counts["hybrid"]["LoRA"] == counts["decoder_only"]["LoRA"]
    assert "LLM" not in counts["hybrid"] and "LLM" not in counts["decoder_only"]  # the frozen LLM trains nothing else


def tiny_args(tiny_models, arch, dtype="float32", **llm_conf):
    return argparse.Namespace(
        model=arch, model_conf={},
        speech_encoder="whisper", speech_encoder_conf={"model_path": str(tiny_models / "whisper"), "dtype": dtype},
        speech_adapter="frame_stack" if arch == "decoder_only" else None, speech_adapter_conf={},
        llm="chatglm3",
        llm_conf={"model_path": str(tiny_models / "chatglm3"), "lora_rank": 4, "lora_dropout": 0.0, "dtype": dtype,
                  **llm_conf},
        prompt_task="asr_short", num_history=0, preprocessor_conf={},
    )


def tiny_batch(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    texts = ["北京欢迎你", "张三来了吗"]
    targets = [torch.tensor(model.layout.target_ids(t, t, [])) for t in texts]
    pad = torch.nn.utils.rnn.pad_sequence
    return dict(
        speech=0.1 * torch.randn(2, 16000, generator=g), speech_lengths=torch.tensor([16000, 12000]),
        text=pad(targets, batch_first=True, padding_value=-1), text_lengths=torch.tensor([len(t) for t in targets]),
        utt_id=["a", "b"],
    )


def merged_rows(model) -> dict[str, torch.Tensor]:
    return {name: layer.get_merged_weights(["default"]).detach().clone() for name, layer in token_rows(model).items()}


def test_a_step_changes_exactly_the_task_token_rows(tiny_models):
    torch.manual_seed(0)
    model = SpeechLLMTask.build_model(tiny_args(tiny_models, "decoder_only", lora_targets=list(GLM_PROJECTIONS)))
    before = merged_rows(model)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    loss, _, _ = model(**tiny_batch(model))
    loss.backward()
    optimizer.step()
    ids = task_token_ids(model.llm.tokenizer)
    changed = {name: (weight != before[name]).any(-1).nonzero().flatten().tolist()
               for name, weight in merged_rows(model).items()}
    assert changed["lm_head"] == ids  # every output row of a task token takes part in the softmax; no other row moves
    assert changed["embed_tokens"] and set(changed["embed_tokens"]) <= set(ids)  # the input rows the batch used


def test_the_gated_add_keeps_a_small_change_that_bf16_would_erase():
    torch.manual_seed(0)
    block = GatedCrossAttention(hidden_size=256, memory_size=32, attention_size=32, num_heads=2)
    torch.nn.init.normal_(block.out.weight, std=0.001 / 32**0.5)  # a change of RMS ~0.001 (as early in training)
    hidden = torch.randn(2, 5, 256).to(torch.bfloat16)  # the LLM's bf16 residual, RMS 1
    memory = torch.randn(2, 7, 32)
    keys_values = block.keys_values(memory)
    mask = torch.ones(2, 7, dtype=torch.bool)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as in training and bf16 decoding
        out = block(hidden, keys_values, mask)
    assert out.dtype == torch.float32
    change = out - hidden.float()
    assert (change != 0).float().mean() > 0.99
    # the same add in bf16 loses most of it: what the float32 add is for
    assert (hidden + change.to(torch.bfloat16) == hidden).float().mean() > 0.5


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_bf16_frozen_weights_train_under_autocast(tiny_models, arch):
    torch.manual_seed(0)
    model = SpeechLLMTask.build_model(tiny_args(tiny_models, arch, dtype="bfloat16"))
    model = model.to(dtype=torch.float32, device="cpu")  # what ESPnet's main_worker does (--train_dtype float32)
    assert {p.dtype for p in model.parameters() if not p.requires_grad} == {torch.bfloat16}
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what ESPnet's use_amp does on a bf16 GPU
        loss, _, _ = model(**tiny_batch(model))
    loss.backward()
    assert torch.isfinite(loss)
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None and g.dtype == torch.float32 for n, g in grads.items() if "lora_B" in n)
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)


def test_a_train_dtype_other_than_float32_is_refused_by_name(tiny_models):
    model = SpeechLLMTask.build_model(tiny_args(tiny_models, "decoder_only", dtype="bfloat16"))
    with pytest.raises(ValueError, match="train_dtype bfloat16: the speech LLMs train float32"):
        model.to(torch.bfloat16)


def test_right_padded_rows_need_no_attention_mask(tiny_models):
    torch.manual_seed(0)
    llm = SpeechLLMTask.build_model(tiny_args(tiny_models, "decoder_only")).llm
    lengths = [9, 5]
    embeds = torch.randn(2, 9, llm.hidden_size)
    mask = (torch.arange(9)[None] < torch.tensor(lengths)[:, None]).long()
    masked, unmasked = llm.hidden_states(embeds, mask), llm.hidden_states(embeds)
    for b, n in enumerate(lengths):
        torch.testing.assert_close(unmasked[b, :n], masked[b, :n], rtol=1e-5, atol=1e-5)
    # padded on the left (as decoding pads), the same row without its mask would see the padding
    left = mask.flip(1)
    masked, unmasked = llm.hidden_states(embeds, left), llm.hidden_states(embeds)
    assert not torch.allclose(unmasked[1, -5:], masked[1, -5:], atol=1e-3)


def test_gates_norms_and_token_rows_get_no_weight_decay(tiny_models):
    torch.manual_seed(0)
    model = SpeechLLMTask.build_model(tiny_args(tiny_models, "encoder_decoder", lora_targets=list(GLM_PROJECTIONS)))
    args = argparse.Namespace(
        optim="adamw", optim_conf={"lr": 1e-4, "weight_decay": 0.01}, exclude_weight_decay=True,
        exclude_weight_decay_conf={}, sharded_ddp=False,
    )
    (optimizer,) = SpeechLLMTask.build_optimizers(args, model)
    names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    decay = {wd: {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] == wd for p in g["params"]
                  if id(p) in names} for wd in (0.0, 0.01)}
    def exempt(n):
        return n.endswith((".gate", "norm.weight")) or any(k in n for k in ("trainable_tokens", "_embedding."))

    assert decay[0.0] and [n for n in decay[0.0] if not exempt(n)] == []
    assert [n for n in decay[0.01] if exempt(n)] == []
    assert any("lora_A" in n for n in decay[0.01]) and any("cross_attention.out" in n for n in decay[0.01])
    assert any(n.endswith("gate") for n in decay[0.0]) and any("trainable_tokens" in n for n in decay[0.0])


def test_a_cpu_decode_of_the_6b_model_is_refused_before_loading(tmp_path):
    import yaml

    from espnet_llm.bin.count_params import full_size_args
    from espnet_llm.bin.speech_llm_inference import load_model

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(vars(full_size_args(CONF / "train_decoder_only_short.yaml", tmp_path))))
    # the weights are not there: a refusal that read them would fail otherwise
    with pytest.raises(ValueError, match=r"7\.0B parameters would be decoded on the CPU.*--gpu_inference true"):
        load_model(str(config), None, "cpu")


def test_decoding_job_i_runs_on_gpu_i_alone(tmp_path):
    import os
    import subprocess

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text('#!/bin/sh\necho "GPU 0: Fake (UUID: GPU-a)"\necho "GPU 1: Fake (UUID: GPU-b)"\n')
    (bin_dir / "nvidia-smi").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    run_pl = CONF.parent / "utils" / "run.pl"
    job = 'echo "JOB $CUDA_VISIBLE_DEVICES $(date +%s.%N)"; sleep 0.3; echo "end $(date +%s.%N)"'
    subprocess.run([str(run_pl), "--gpu", "1", "JOB=1:5", str(tmp_path / "log.JOB"), job], env=env, check=True)
    spans = {}
    for i in range(1, 6):
        lines = [line.split() for line in (tmp_path / f"log.{i}").read_text().splitlines() if not line.startswith("#")]
        (index, gpu, start), (_, end) = lines
        assert index == str(i) and gpu == str((i - 1) % 2)
        spans.setdefault(gpu, []).append((float(start), float(end)))
    for gpu, intervals in spans.items():  # one job at a time on a GPU
        intervals.sort()
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(intervals, intervals[1:])), gpu
