"""Training and decoding speed of the speech LLMs, and what each optimisation buys, side by side in one run.

    python -m espnet_llm.benchmarks.speech_llm --size tiny                  # CPU, the tiny models
    python -m espnet_llm.benchmarks.speech_llm --size full --device cuda    # Whisper-large-v2 + ChatGLM3-6B
    python -m espnet_llm.benchmarks.speech_llm --arithmetic_only            # full-size FLOPs and memory, no run

Models have random weights, built from the configs (H4's model classes: DecoderOnlySpeechLLM,
EncoderDecoderSpeechLLM with ChatGLM3LLM, LoRA rank 32 on q/k/v/o/gate_up/down). Batches follow AISHELL:
the transcripts are the real AISHELL-NER dev sentences (about 14 characters), each with
``characters / 3.1`` seconds of audio (+-10 %), so about 4.5 s an utterance.

Figures (printed as a markdown table):
- training utterances/s and target tokens/s: optimiser step included, over ``--steps`` steps after a warm-up;
- model FLOPs per utterance: counted by torch.utils.flop_counter.FlopCounterMode over one training step
  (forward + backward, without recomputation): it counts the matrix products that autograd actually runs,
  so a frozen weight costs its forward (2 per weight per token) and the input gradient (2 more) wherever
  something below it is trainable, a trainable one also its weight gradient (2 more), and the frozen
  Whisper encoder, run under no_grad, its forward only; attention score products are included;
- MFU = (model FLOPs per step / step time) / the bf16 matmul rate measured on the same device in the same run;
- activation memory: bytes of the tensors autograd saves for the backward pass (weights excluded), the
  same count on every device; on a GPU also the peak allocated memory of the step;
- decoding RTF (greedy, KV cache, bf16 autocast and weights) at batch 1, 16, 64: wall time / seconds of audio, with the
  stop token's output row zeroed so that every utterance decodes exactly ``--decode_tokens`` tokens (random
  weights would otherwise stop at random);
- decoding RTF of beam search (``--decode_beam_size``) at the same batch sizes, and its speed-up from reusing what does
  not change during decoding: the prompt run through the LLM once per utterance instead of once per beam, and the
  encoder-decoder's cross-attention keys and values of the speech computed once instead of at every token
  (medians of 3 alternating runs).
Each optimisation is measured against the version without it in the same process, as a ratio.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import random
import shutil
import statistics
import tempfile
import time
from unittest import mock
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.flop_counter import FlopCounterMode
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from espnet_llm.llm.chatglm3 import CHATGLM3_6B_CONFIG
from espnet_llm.models.adapter import FrameStackAdapter
from espnet_llm.models.decoder_only import DecoderOnlySpeechLLM
from espnet_llm.models.encoder_decoder import EncoderDecoderSpeechLLM
from espnet_llm.llm.lora_llm import ChatGLM3LLM
from espnet_llm.models.prompts import PromptLayout
from espnet_llm.resources import AISHELL_NER_DEV_TRANSCRIPT
from espnet_llm.speech.cached_encoder import CachedWhisperFeatures
from espnet_llm.speech.log_mel import SAMPLE_RATE
from espnet_llm.speech.whisper_encoder import WHISPER_FRAMES_PER_SECOND, WHISPER_LARGE_V2_CONFIG, WhisperSpeechEncoder
from espnet_llm.text.aishell_ner import strip_marks

CHARS_PER_SECOND = 14 / 4.5  # AISHELL-1: about 14 characters in 4.5 s
ARCHITECTURES = ("decoder_only", "encoder_decoder")


# ------------------------------------------------------------------ data
@dataclass
class Utterance:
    seconds: float
    target: list[int]


def aishell_like_utterances(layout: PromptLayout, count: int, seed: int) -> list[Utterance]:
    """Real AISHELL-NER dev sentences with AISHELL's speaking rate."""
    rng = random.Random(seed)
    lines = AISHELL_NER_DEV_TRANSCRIPT.read_text(encoding="utf-8").splitlines()
    utterances = []
    for line in rng.sample(lines, count):
        text = strip_marks(line.split(maxsplit=1)[1])
        seconds = len(text) / CHARS_PER_SECOND * rng.uniform(0.9, 1.1)
        utterances.append(Utterance(seconds, layout.target_ids(text)))
    return utterances


def make_batches(utterances: list[Utterance], batch_size: int, sort: bool, seed: int) -> list[list[Utterance]]:
    """Batches of similar lengths (sorted, batches then shuffled, as ESPnet's sorted iterators) or random ones."""
    order = sorted(utterances, key=lambda u: u.seconds) if sort else random.Random(seed).sample(utterances, len(utterances))
    batches = [order[i:i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]
    random.Random(seed).shuffle(batches)
    return batches


def padding_fraction(batches: list[list[Utterance]]) -> float:
    """Padded share of the audio samples of the batches."""
    real = sum(u.seconds for b in batches for u in b)
    padded = sum(max(u.seconds for u in b) * len(b) for b in batches)
    return 1 - real / padded


def model_inputs(batch: list[Utterance], cached_width: int | None, device, seed: int) -> dict:
    """Random audio (or random dumped features of width cached_width) of each utterance's length, and its target."""
    g = torch.Generator().manual_seed(seed)
    if cached_width is None:
        speech = [0.1 * torch.randn(int(u.seconds * SAMPLE_RATE), generator=g) for u in batch]
    else:
        speech = [torch.randn(int(u.seconds * WHISPER_FRAMES_PER_SECOND), cached_width, generator=g) for u in batch]
    targets = [torch.tensor(u.target) for u in batch]
    return dict(
        speech=pad_sequence(speech, batch_first=True).to(device),
        speech_lengths=torch.tensor([len(s) for s in speech], device=device),
        text=pad_sequence(targets, batch_first=True, padding_value=-1).to(device),
        text_lengths=torch.tensor([len(t) for t in targets], device=device),
    )


# ------------------------------------------------------------------ models
@dataclass
class Size:
    name: str
    whisper_config: dict
    chatglm3_dir: Path  # config.json + tokenizer.model
    dtype_frozen: torch.dtype  # of the frozen weights in the optimised setting


def tiny_size(workdir: Path) -> Size:
    from espnet_llm.bin.make_tiny_models import make_tiny_models

    tiny = make_tiny_models(workdir / "tiny", seed=0)
    return Size("tiny", WhisperConfig.from_pretrained(tiny / "whisper").to_dict(), tiny / "chatglm3", torch.bfloat16)


def full_size(workdir: Path) -> Size:
    """ChatGLM3-6B's config with the tiny tokenizer (only its special ids are used; the 65,024-row embedding stays)."""
    from espnet_llm.bin.make_tiny_models import make_tiny_models

    tiny = make_tiny_models(workdir / "tiny", seed=0)
    glm_dir = workdir / "chatglm3-6b-config"
    glm_dir.mkdir(parents=True, exist_ok=True)
    (glm_dir / "config.json").write_text(json.dumps(CHATGLM3_6B_CONFIG))
    shutil.copy(tiny / "chatglm3" / "tokenizer.model", glm_dir / "tokenizer.model")
    return Size("full", WHISPER_LARGE_V2_CONFIG, glm_dir, torch.bfloat16)


def build_model(arch: str, size: Size, device: torch.device, lora_rank: int = 32):
    """The speech LLM with random weights, built directly on the device (no CPU copy of 6B weights)."""
    with torch.device(device):
        whisper = WhisperEncoder(WhisperConfig(**size.whisper_config))
        llm = ChatGLM3LLM(str(size.chatglm3_dir), lora_rank=lora_rank, lora_dropout=0.0, load_weights=False)
        speech_encoder = WhisperSpeechEncoder(whisper)
        adapter = FrameStackAdapter(whisper.config.d_model, llm.hidden_size) if arch == "decoder_only" else None
        layout = PromptLayout(llm.tokenizer, "asr_short")
        model_class = DecoderOnlySpeechLLM if arch == "decoder_only" else EncoderDecoderSpeechLLM
        model = model_class(speech_encoder, adapter, llm, layout)
    return model.to(device)


def cast_frozen(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Frozen weights in dtype, trainable ones stay float32 (they are what the optimiser updates)."""
    for p in model.parameters():
        if not p.requires_grad:
            p.data = p.data.to(dtype)


@contextlib.contextmanager
def speech_encoder_mode(model, mode: str):
    """mode: 'cached' (dumped features), 'variable' or 'padded30' (Whisper run on the fly)."""
    live = model.speech_encoder
    if mode == "cached":
        model.speech_encoder = CachedWhisperFeatures(live.output_size())
    else:
        live.pad_to_30s = live.log_mel.pad_to_30s = mode == "padded30"
    try:
        yield
    finally:
        model.speech_encoder = live


def set_attention(model, implementation: str) -> None:
    model.llm.causal_lm.set_attn_implementation(implementation)


@contextlib.contextmanager
def plain_decoding(model):
    """The reference that decoding's reuse is measured (and tested) against: transformers' beam search running the
    prompt once per beam (no prompt cache), the speech memory's keys and values projected at every call."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(model, "prompt_cache", lambda *args, **kwargs: None))
        if isinstance(model, EncoderDecoderSpeechLLM):
            memory = model.memory
            stack.enter_context(mock.patch.object(
                memory, "projected", lambda layer, dtype: layer.keys_values(memory.feats.to(dtype))
            ))
        yield


def set_checkpointing(model, on: bool) -> None:
    lm = model.llm.causal_lm
    if on:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        lm.gradient_checkpointing_disable()


# ------------------------------------------------------------------ measurements
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_rate(device: torch.device) -> float:
    """bf16 matrix-multiply FLOP/s on this device (the MFU denominator), median of 5."""
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    a @ b
    times = []
    for _ in range(5):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(10):
            a @ b
        synchronize(device)
        times.append((time.perf_counter() - start) / 10)
    return 2 * n**3 / statistics.median(times)


def autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


class SavedActivations:
    """Bytes autograd saves for backward, weights excluded, each storage counted once."""

    def __init__(self, model):
        self.weights = {p.data_ptr() for p in model.parameters()}
        self.seen: set[tuple[int, int]] = set()
        self.bytes = 0

    def pack(self, t: torch.Tensor):
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if key[0] not in self.weights and key not in self.seen:
            self.seen.add(key)
            self.bytes += key[1]
        return t

    def __enter__(self):
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self.hooks.__exit__(*exc)


@dataclass
class TrainFigures:
    utt_per_s: float
    tokens_per_s: float
    step_s: float
    flops_per_utt: float
    activation_bytes: int
    peak_bytes: int | None


def measure_training(model, batches, device, bf16: bool, cached_width: int | None, steps: int) -> TrainFigures:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, foreach=True)
    inputs = [model_inputs(b, cached_width, device, seed=i) for i, b in enumerate(batches[: steps + 1])]

    def step(batch):
        with autocast(device, bf16):
            loss = model(**batch)[0]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model.train()
    step(inputs[0])  # warm-up (allocator, kernels)
    # FLOPs of the timed batches (without recomputation) and saved activations of one step, outside the timing
    checkpointing = model.llm.causal_lm.is_gradient_checkpointing
    set_checkpointing(model, False)
    with FlopCounterMode(display=False) as counter:
        for batch in inputs[1:]:
            with autocast(device, bf16):
                loss = model(**batch)[0]
            loss.backward()
            optimizer.zero_grad(set_to_none=True)
    set_checkpointing(model, checkpointing)
    flops_per_utt = counter.get_total_flops() / sum(len(b) for b in batches[1: steps + 1])
    with SavedActivations(model) as saved, autocast(device, bf16):
        loss = model(**inputs[0])[0]
    del loss
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    synchronize(device)
    start = time.perf_counter()
    for batch in inputs[1:]:
        step(batch)
    synchronize(device)
    elapsed = time.perf_counter() - start
    utts = sum(len(b) for b in batches[1: steps + 1])
    tokens = sum(len(u.target) for b in batches[1: steps + 1] for u in b)
    return TrainFigures(
        utts / elapsed, tokens / elapsed, elapsed / steps, flops_per_utt, saved.bytes,
        torch.cuda.max_memory_allocated() if device.type == "cuda" else None,
    )


@torch.no_grad()
def decoding_rtf(model, utterances, batch_size: int, device, bf16: bool, tokens: int, beam_size: int = 1) -> float:
    """Greedy (beam_size 1) or beam-search decoding of length-sorted batches from audio (Whisper on the fly):
    seconds per second of audio."""
    model.eval()
    ordered = sorted(utterances, key=lambda u: u.seconds)[: max(batch_size, min(len(utterances), 2 * batch_size))]
    batches = [ordered[i:i + batch_size] for i in range(0, len(ordered) - batch_size + 1, batch_size)]
    inputs = [model_inputs(b, None, device, seed=i) for i, b in enumerate(batches)]
    # variable length: the training rows leave Whisper in whichever mode they measured last (padded to 30 s)
    with speech_encoder_mode(model, "variable"), autocast(device, bf16):
        x = inputs[0]
        model.generate(x["speech"][:1], x["speech_lengths"][:1], beam_size=beam_size, max_new_tokens=2)  # warm-up
        synchronize(device)
        start = time.perf_counter()
        for x in inputs:
            out = model.generate(x["speech"], x["speech_lengths"], beam_size=beam_size, max_new_tokens=tokens)
            assert all(len(ids) == tokens for ids, _, _ in out), "decoding stopped early"
        synchronize(device)
    return (time.perf_counter() - start) / sum(u.seconds for b in batches for u in b)


def decoding_reuse_speedup(model, utterances, batch_size, device, tokens, beam_size, repeats=3):
    """Beam-search RTF, and its speed-up over plain_decoding: medians of alternating runs
    (single timings of the short tiny-size decodings are noisy)."""
    reused, plain = [], []
    for _ in range(repeats):
        reused.append(decoding_rtf(model, utterances, batch_size, device, True, tokens, beam_size))
        with plain_decoding(model):
            plain.append(decoding_rtf(model, utterances, batch_size, device, True, tokens, beam_size))
    return statistics.median(reused), statistics.median(p / r for p, r in zip(plain, reused))


def never_stop(model) -> None:
    """Zero the output row of one stop token (logit 0, below the best of 65k random logits) and make it the
    only stop token, so random weights decode the full --decode_tokens."""
    stop = model.layout.stop_ids[0]
    model.llm.causal_lm.lm_head.weight.data[stop] = 0
    model.layout.stop_ids = [stop]


# ------------------------------------------------------------------ the run
def run(args) -> None:
    device = torch.device(args.device)
    workdir = Path(tempfile.mkdtemp(prefix="benchmark_speech_llm."))
    size = tiny_size(workdir) if args.size == "tiny" else full_size(workdir)
    rate = matmul_rate(device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"# device: {name}; bf16 matmul rate measured: {rate / 1e12:.3f} TFLOP/s; torch {torch.__version__}")
    print(f"# size: {args.size}; batch {args.batch_size}; {args.steps} timed steps per row\n")
    rows, ratios = [], []

    def train_row(label, model, batches, bf16, mode):
        width = model.speech_encoder.output_size() if mode == "cached" else None
        with speech_encoder_mode(model, mode):
            f = measure_training(model, batches, device, bf16, width, args.steps)
        rows.append((label, f))
        return f

    for arch in ARCHITECTURES:
        torch.manual_seed(0)
        model = build_model(arch, size, device)
        utterances = aishell_like_utterances(model.layout, args.batch_size * (args.steps + 1) * 4, seed=0)
        sorted_batches = make_batches(utterances, args.batch_size, sort=True, seed=0)
        random_batches = make_batches(utterances, args.batch_size, sort=False, seed=0)
        set_attention(model, "sdpa")
        fp32 = train_row(f"{arch}: fp32, no autocast", model, sorted_batches, False, "cached")
        cast_frozen(model, size.dtype_frozen)
        best = train_row(f"{arch}: optimised (cached, sorted, bf16, SDPA)", model, sorted_batches, True, "cached")
        live = train_row(f"{arch}: Whisper on the fly, variable length", model, sorted_batches, True, "variable")
        padded = train_row(f"{arch}: Whisper on the fly, padded to 30 s", model, sorted_batches, True, "padded30")
        shuffled = train_row(f"{arch}: random batches", model, random_batches, True, "cached")
        set_attention(model, "eager")
        eager = train_row(f"{arch}: eager attention", model, sorted_batches, True, "cached")
        set_attention(model, "sdpa")
        set_checkpointing(model, True)
        ckpt = train_row(f"{arch}: gradient checkpointing", model, sorted_batches, True, "cached")
        set_checkpointing(model, False)
        ratios += [
            (arch, "cached features vs Whisper on the fly (variable length)", "train utt/s", best.utt_per_s / live.utt_per_s),
            (arch, "variable-length vs padded-30s Whisper (on the fly)", "train utt/s", live.utt_per_s / padded.utt_per_s),
            (arch, "length-sorted vs random batches", "train utt/s", best.utt_per_s / shuffled.utt_per_s),
            (arch, "length-sorted vs random batches", "audio padding",
             f"{padding_fraction(sorted_batches):.1%} vs {padding_fraction(random_batches):.1%}"),
            (arch, "bf16 autocast + bf16 frozen weights vs fp32", "train utt/s", best.utt_per_s / fp32.utt_per_s),
            (arch, "SDPA vs eager attention", "train utt/s", best.utt_per_s / eager.utt_per_s),
            (arch, "SDPA vs eager attention", "activation memory", best.activation_bytes / eager.activation_bytes),
            (arch, "gradient checkpointing vs none", "activation memory", ckpt.activation_bytes / best.activation_bytes),
            (arch, "gradient checkpointing vs none", "train utt/s", ckpt.utt_per_s / best.utt_per_s),
        ]
        if device.type == "cuda":
            ratios.append((arch, "gradient checkpointing vs none", "peak memory", ckpt.peak_bytes / best.peak_bytes))
        never_stop(model)
        for batch_size in args.decode_batch_sizes:
            value = decoding_rtf(model, utterances, batch_size, device, True, args.decode_tokens)
            ratios.append((arch, f"decoding RTF, greedy, batch {batch_size}", "RTF", f"{value:.4f}"))
        for batch_size in args.decode_batch_sizes:
            beam = f"beam {args.decode_beam_size}, batch {batch_size}"
            rtf, speedup = decoding_reuse_speedup(
                model, utterances, batch_size, device, args.decode_tokens, args.decode_beam_size
            )
            ratios += [
                (arch, f"decoding RTF, {beam}", "RTF", f"{rtf:.4f}"),
                (arch, f"prompt once per utterance + memory keys/values once vs per beam and token, {beam}",
                 "decoding speed", speedup),
            ]
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()

    print("| setting | train utt/s | target tokens/s | step s | GFLOP/utt | MFU | saved activations MB | peak MB |")
    print("|---|---|---|---|---|---|---|---|")
    for label, f in rows:
        mfu = f.flops_per_utt * f.utt_per_s / rate
        peak = f"{f.peak_bytes / 2**20:.0f}" if f.peak_bytes is not None else "n/a (CPU)"
        print(
            f"| {label} | {f.utt_per_s:.1f} | {f.tokens_per_s:.0f} | {f.step_s:.4f} | {f.flops_per_utt / 1e9:.3f} "
            f"| {mfu:.1%} | {f.activation_bytes / 2**20:.2f} | {peak} |"
        )
    print("\n| architecture | change | measure | with / without |")
    print("|---|---|---|---|")
    for arch, change, measure, value in ratios:
        print(f"| {arch} | {change} | {measure} | {value if isinstance(value, str) else f'{value:.2f}x'} |")
    shutil.rmtree(workdir, ignore_errors=True)


# ------------------------------------------------------------------ full size without a GPU
def full_size_arithmetic(seconds: float = 4.5, target_tokens: int = 15, batch_size: int = 16) -> None:
    """Parameter counts (the models built on the meta device), FLOPs per utterance by formula, memory of a step."""
    workdir = Path(tempfile.mkdtemp(prefix="benchmark_speech_llm."))
    size = full_size(workdir)
    frames = int(seconds * WHISPER_FRAMES_PER_SECOND)
    prompt = 5  # [gMASK] sop <|user|> ... <|task|> <|assistant|>
    c, w = CHATGLM3_6B_CONFIG, WHISPER_LARGE_V2_CONFIG
    hidden, layers, vocab, d = c["hidden_size"], c["num_layers"], c["padded_vocab_size"], w["d_model"]
    print(f"# full size, one AISHELL-average utterance: {seconds} s = {frames} Whisper frames, "
          f"{target_tokens} target tokens (14 characters + end), batch {batch_size}\n")
    for arch in ARCHITECTURES:
        model = build_model(arch, size, torch.device("meta"))
        named = dict(model.named_parameters())
        llm_matmul = sum(p.numel() for n, p in named.items() if n.startswith("llm.") and "lora_" not in n
                         and p.dim() == 2 and ".layers." in n and "cross_attention" not in n)
        lora = sum(p.numel() for n, p in named.items() if "lora_" in n)
        trainable = sum(p.numel() for p in named.values() if p.requires_grad)
        whisper_params = sum(p.numel() for n, p in named.items() if n.startswith("speech_encoder."))
        whisper_matmul = sum(p.numel() for n, p in named.items() if n.startswith("speech_encoder.encoder.layers.") and p.dim() == 2)
        if arch == "decoder_only":
            length = prompt + -(-frames // 5) + target_tokens
            a1, a2 = (p.numel() for n, p in named.items() if n.startswith("adapter.") and p.dim() == 2)
            extra = -(-frames // 5) * (4 * a1 + 6 * a2)  # first layer: no input gradient (Whisper is frozen)
        else:
            length = prompt + target_tokens
            per_layer = 0
            q, k, v, o = (p.numel() for n, p in named.items() if ".layers.0.cross_attention." in n and p.dim() == 2)
            per_layer += 6 * (q + o) * length + 4 * (k + v) * frames + 12 * length * frames * d
            extra = per_layer * layers
        llm_flops = (4 * llm_matmul * length + 6 * lora * length + 12 * length**2 * c["num_attention_heads"] * c["kv_channels"] * layers
                     + 4 * vocab * hidden * target_tokens + extra)
        whisper_flops = 2 * whisper_matmul * frames + 4 * frames**2 * d * w["encoder_layers"] + 2 * 3 * d * (80 * 2 * frames + d * frames)
        whisper_30s = 2 * whisper_matmul * 1500 + 4 * 1500**2 * d * w["encoder_layers"] + 2 * 3 * d * (80 * 3000 + d * 1500)
        frozen_bf16 = (sum(p.numel() for p in named.values() if not p.requires_grad) - whisper_params) * 2
        optimiser = trainable * 16  # fp32 weight, gradient, AdamW's two moments
        print(f"## {arch}: trainable {trainable:,} (LoRA {lora:,}); Whisper encoder {whisper_params:,}; LLM tokens {length}")
        print(f"- training FLOPs per utterance, cached features: {llm_flops / 1e12:.3f} TFLOP; "
              f"Whisper on the fly adds {whisper_flops / 1e12:.3f} (variable length) or {whisper_30s / 1e12:.3f} (padded to 30 s)")
        print(f"- memory: frozen LLM weights bf16 {frozen_bf16 / 1e9:.2f} GB, Whisper bf16 {whisper_params * 2 / 1e9:.2f} GB "
              f"(on the fly only), trainable + AdamW {optimiser / 1e9:.2f} GB; "
              f"{batch_size * length} LLM tokens per batch\n")
    shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per setting")
    parser.add_argument("--decode_batch_sizes", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--decode_beam_size", type=int, default=4, help="beam of the beam-search decoding rows")
    parser.add_argument("--decode_tokens", type=int, default=16, help="tokens decoded per utterance (~14 characters + end)")
    parser.add_argument("--arithmetic_only", action="store_true", help="print the full-size FLOP and memory arithmetic")
    args = parser.parse_args()
    if args.arithmetic_only:
        full_size_arithmetic()
        return
    run(args)


if __name__ == "__main__":
    main()
