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
import multiprocessing
import random
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from unittest import mock
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.flop_counter import FlopCounterMode
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from espnet_llm.dtypes import torch_dtype
from espnet_llm.llm.chatglm3 import CHATGLM3_6B_CONFIG
from espnet_llm.models.encoder_decoder import EncoderDecoderSpeechLLM
from espnet_llm.models.prompts import PromptLayout
from espnet_llm.resources import AISHELL_NER_DEV_TRANSCRIPT
from espnet_llm.speech.cached_encoder import CachedWhisperFeatures
from espnet_llm.speech.log_mel import SAMPLE_RATE
from espnet_llm.speech.framing import WHISPER_FRAMES_PER_SECOND
from espnet_llm.speech.whisper_encoder import WHISPER_LARGE_V2_CONFIG, WhisperSpeechEncoder
from espnet_llm.tasks.speech_llm import SpeechLLMTask
from espnet_llm.text.aishell_ner import strip_marks

CHARS_PER_SECOND = 14 / 4.5  # AISHELL-1: about 14 characters in 4.5 s
RECIPE_CONF = Path(__file__).resolve().parents[2] / "egs2" / "aishell_ner" / "llm1" / "conf"
ARCHITECTURES = ("decoder_only", "encoder_decoder")


# ------------------------------------------------------------------ data
@dataclass
class Utterance:
    seconds: float
    target: list[int]
    segments: list[float] | None = None  # long form: the seconds of each history utterance, then the current one


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
    rate = SAMPLE_RATE if cached_width is None else WHISPER_FRAMES_PER_SECOND
    segments = [[int(x * rate) for x in (u.segments or [u.seconds])] for u in batch]
    if cached_width is None:
        speech = [0.1 * torch.randn(sum(lens), generator=g) for lens in segments]
    else:
        speech = [torch.randn(sum(lens), cached_width, generator=g) for lens in segments]
    targets = [torch.tensor(u.target) for u in batch]
    inputs = dict(
        speech=pad_sequence(speech, batch_first=True).to(device),
        speech_lengths=torch.tensor([len(s) for s in speech], device=device),
        text=pad_sequence(targets, batch_first=True, padding_value=-1).to(device),
        text_lengths=torch.tensor([len(t) for t in targets], device=device),
    )
    if any(u.segments for u in batch):
        inputs["speech_segments"] = pad_sequence([torch.tensor(s) for s in segments], batch_first=True).to(device)
    return inputs


# ------------------------------------------------------------------ models
@dataclass
class Size:
    name: str
    configs: Path  # the recipe's conf/train_<arch>_short.yaml of this size
    whisper_dir: Path  # config.json of the Whisper
    chatglm3_dir: Path  # config.json + tokenizer.model


def tiny_size(workdir: Path) -> Size:
    from espnet_llm.mini.make_tiny_models import make_tiny_models

    tiny = make_tiny_models(workdir / "tiny", seed=0)
    return Size("tiny", RECIPE_CONF / "tiny", tiny / "whisper", tiny / "chatglm3")


def full_size(workdir: Path, num_layers: int | None = None) -> Size:
    """Whisper-large-v2 and ChatGLM3-6B (``num_layers`` of its 28: the memory measurement's per-layer figures)."""
    from espnet_llm.bin.count_params import published_architectures

    whisper, chatglm3 = published_architectures(workdir)
    if num_layers is not None:
        (chatglm3 / "config.json").write_text(json.dumps({**CHATGLM3_6B_CONFIG, "num_layers": num_layers}))
    return Size("full", RECIPE_CONF, whisper, chatglm3)


def build_model(arch: str, size: Size, device: torch.device, dtype: str, task: str = "asr_short", num_history: int = 0):
    """The speech LLM as the recipe builds it (SpeechLLMTask.build_model over the size's training config: frozen
    weights in ``dtype``, what trains in float32), with random weights, built directly on the device (no CPU copy
    of 6B weights). Whisper is random too, in ``dtype``, for the rows that run it on the fly."""
    args = SpeechLLMTask.get_parser().parse_args(
        ["--config", str(size.configs / f"train_{arch}_short.yaml"), "--output_dir", str(size.chatglm3_dir / "out")]
    )
    args.prompt_task, args.num_history = task, num_history
    args.speech_encoder_conf = {**args.speech_encoder_conf, "model_path": str(size.whisper_dir), "dtype": dtype}
    args.llm_conf = {**args.llm_conf, "model_path": str(size.chatglm3_dir), "dtype": dtype, "lora_dropout": 0.0}
    with torch.device(device):
        model = SpeechLLMTask.build_model(args, load_weights=False)
        whisper = WhisperEncoder(WhisperConfig.from_pretrained(size.whisper_dir)).to(torch_dtype(dtype, "dtype"))
        model.speech_encoder = WhisperSpeechEncoder(whisper)
    return model.to(device)


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
    checkpointing = model.llm.causal_lm.is_activation_checkpointing
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
            assert all(len(ids) == tokens for [(ids, _, _)] in out), "decoding stopped early"
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
        model = build_model(arch, size, device, "float32")
        utterances = aishell_like_utterances(model.layout, args.batch_size * (args.steps + 1) * 4, seed=0)
        sorted_batches = make_batches(utterances, args.batch_size, sort=True, seed=0)
        random_batches = make_batches(utterances, args.batch_size, sort=False, seed=0)
        set_attention(model, "sdpa")
        fp32 = train_row(f"{arch}: fp32, no autocast", model, sorted_batches, False, "cached")
        del model
        torch.manual_seed(0)
        model = build_model(arch, size, device, "bfloat16")  # the full-size configs' dtype
        set_attention(model, "sdpa")
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
    prompt = 9  # [gMASK] sop <|user|> \n ... <|task|> <|assistant|> \n
    c, w = CHATGLM3_6B_CONFIG, WHISPER_LARGE_V2_CONFIG
    hidden, layers, vocab, d = c["hidden_size"], c["num_layers"], c["padded_vocab_size"], w["d_model"]
    print(f"# full size, one AISHELL-average utterance: {seconds} s = {frames} Whisper frames, "
          f"{target_tokens} target tokens (14 characters + end), batch {batch_size}\n")
    for arch in ARCHITECTURES:
        model = build_model(arch, size, torch.device("meta"), "bfloat16")
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
        print(f"## {arch}: trainable {trainable:,} (LoRA {lora:,}); Whisper encoder {whisper_params:,}; LLM tokens {length}")
        print(f"- training FLOPs per utterance, cached features: {llm_flops / 1e12:.3f} TFLOP; "
              f"Whisper on the fly adds {whisper_flops / 1e12:.3f} (variable length) or {whisper_30s / 1e12:.3f} (padded to 30 s)\n")
    shutil.rmtree(workdir, ignore_errors=True)


# ------------------------------------------------------------------ full-size memory, measured on the CPU
def long_form_batch(layout: PromptLayout, batch_size: int, num_history: int, seed: int) -> list[Utterance]:
    """Utterances with the previous ones of their speaker (AISHELL-like lengths), targets as the long-form task."""
    rng = random.Random(seed)
    lines = [strip_marks(line.split(maxsplit=1)[1]) for line in AISHELL_NER_DEV_TRANSCRIPT.read_text(encoding="utf-8").splitlines()]
    batch = []
    for _ in range(batch_size):
        texts = rng.sample(lines, num_history + 1)
        seconds = [len(t) / CHARS_PER_SECOND * rng.uniform(0.9, 1.1) for t in texts]
        batch.append(Utterance(sum(seconds), layout.target_ids(texts[-1], texts[-1], texts[:-1]), seconds))
    return batch


def saved_bytes(model, batch: list[Utterance], width: int) -> int:
    """Activation bytes of one training step (what autograd saves for backward), bf16 autocast, on the CPU."""
    model.train()
    with SavedActivations(model) as saved, torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**model_inputs(batch, width, torch.device("cpu"), seed=0))[0]
    del loss
    return saved.bytes


def layers_saved_bytes(arch: str, workdir: Path, num_layers: int, task: str, history: int, batch_size: int):
    """(saved bytes, batch) of the model with ``num_layers`` LLM layers; run in a process of its own, so that each
    multi-GB model is given back to the system before the next is built."""
    torch.manual_seed(0)
    model = build_model(arch, full_size(workdir, num_layers=num_layers), torch.device("cpu"), "bfloat16", task, history)
    with speech_encoder_mode(model, "cached"):
        batch = long_form_batch(model.layout, batch_size, history, seed=0)
        return saved_bytes(model, batch, model.speech_encoder.output_size()), batch


def full_size_memory(batch_size: int = 16, num_history: int = 2) -> None:
    """The memory of a full-size training step on cached features, per architecture and phase: weights as training
    loads them (frozen bf16, trainable float32 with its gradient and AdamW moments) and the activations autograd
    saves, measured on the CPU at full width with 1 and 2 of ChatGLM3-6B's 28 layers (the same bytes as on a GPU:
    the saved tensors do not depend on the device), the per-layer difference extrapolated to 28 layers."""
    print(f"| architecture | phase | LLM tokens / memory frames per row | frozen bf16 GB | trainable + grad + AdamW GB "
          f"| activations GB (1 layer, rest) | step total GB | rows a 40 GB GPU holds (2 GB kept free) |")
    print("|---|---|---|---|---|---|---|---|")
    layers = CHATGLM3_6B_CONFIG["num_layers"]
    for arch in ARCHITECTURES:
        workdir = Path(tempfile.mkdtemp(prefix="benchmark_speech_llm."))
        meta = build_model(arch, full_size(workdir / "meta"), torch.device("meta"), "bfloat16")
        frozen = sum(p.numel() * p.element_size() for n, p in meta.named_parameters()
                     if not p.requires_grad and not n.startswith("speech_encoder."))  # cached features: no Whisper
        trainable = sum(p.numel() for p in meta.parameters() if p.requires_grad) * 16  # fp32 weight, grad, 2 moments
        del meta
        for phase, task, history in (("short", "asr_short", 0), ("long", "asr_long", num_history)):
            measured = {}
            for n in (1, 2):
                spawn = multiprocessing.get_context("spawn")
                with ProcessPoolExecutor(1, mp_context=spawn) as process:
                    measured[n], batch = process.submit(
                        layers_saved_bytes, arch, workdir / f"{n}_{phase}", n, task, history, batch_size
                    ).result()
            per_layer, rest = measured[2] - measured[1], 2 * measured[1] - measured[2]
            activations = rest + layers * per_layer
            frames = sum(u.seconds for u in batch) / len(batch) * WHISPER_FRAMES_PER_SECOND
            tokens = sum(len(u.target) for u in batch) / len(batch) + (frames / 5 if arch == "decoder_only" else 0) + 5
            print(f"| {arch} | {phase} (batch {batch_size}{f', {history} history' if history else ''}) "
                  f"| {tokens:.0f} / {frames:.0f} | {frozen / 1e9:.2f} | {trainable / 1e9:.2f} "
                  f"| {activations / 1e9:.2f} ({per_layer / 1e9:.3f}, {rest / 1e9:.2f}) "
                  f"| {(frozen + trainable + activations) / 1e9:.1f} "
                  f"| {int((40e9 - 2e9 - frozen - trainable) / (activations / batch_size))} |")
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
    parser.add_argument("--memory_only", action="store_true",
                        help="measure a full-size training step's memory per architecture and phase on the CPU")
    args = parser.parse_args()
    if args.arithmetic_only:
        full_size_arithmetic()
        return
    if args.memory_only:
        full_size_memory(args.batch_size)
        return
    run(args)


if __name__ == "__main__":
    main()
