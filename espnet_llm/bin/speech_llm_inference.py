"""Decode with a trained speech LLM: ``python -m espnet_llm.bin.speech_llm_inference``, or from Python::

    from espnet_llm.bin.speech_llm_inference import Speech2Text
    speech2text = Speech2Text("exp/decoder_only/cot/config.yaml", "exp/decoder_only/cot/valid.acc_current.ave.pth")
    best, *others = speech2text("a.flac", history=["before.wav", ...])  # or arrays, with fs=their rate
    best.text, best.marked, best.entities, best.score, best.score_per_token, best.problems

Reads audio (``sound``: any rate and channels, made 16-kHz mono) or Whisper's dumped features (``kaldi_ark``
of (frames, dim) arrays), whichever the speech entry holds, with any model: one trained on the cache decodes
audio through the Whisper its config names. Writes ESPnet's ``<output_dir>/{n}best_recog/{text,token,score}``
(``--nbest``; score: the answer's log-probability) and, for the NER task, ``text_ner`` (the current utterance
with entity marks). A decode in which no utterance could be decoded exits non-zero. A broken utterance (unreadable, empty, over 30 s) gets an empty
hypothesis, is named in the log and counted; decoding goes on. An output the parser had to repair or flag is
logged with its problems; ``<output_dir>/parse_repairs.json`` counts them: utterances, broken (and their ids,
broken_ids), with_problems, and per kind of problem (espnet_llm.models.prompts.PROBLEM_KINDS) the utterances
that had it.

A batch generates at most ``--max_new_tokens``, and fewer where its speech is short: ``--tokens_per_second``
for each second of a row's speech (for ner the current utterance's twice: transcript and marked copy), plus
its separators and a margin, for its longest answer; so an answer gone into a loop stops early.

Batches are formed from the utterances sorted by length (longest first: little padding, and an
out-of-memory batch shows at once); the outputs are written in the key file's order. Lengths come from
``--shape_file`` (utt2num_samples, or the dump's feats_shape: ``<uttid> <length>[,...]`` of single utterances),
else from utt2num_samples or feats_shape beside the speech scp, else from reading the speech itself; the
history utterances' lengths are added for the long-form tasks.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from espnet2.fileio.datadir_writer import DatadirWriter
from espnet2.fileio.read_text import read_2columns_text
from espnet2.utils import config_argparse
from espnet2.utils.types import str2bool, str2triple_str, str_or_none
from espnet.utils.cli_utils import get_commandline_args

from espnet_llm.bin.pack import resolve_base_models, unpacked
from espnet_llm.dtypes import torch_dtype
from espnet_llm.models.checkpoint import CheckpointError, checkpoint_state
from espnet_llm.models.prompts import TOKENS_PER_SECOND, Problem, PromptLayout
from espnet_llm.speech.audio_input import load_model_audio, to_model_audio
from espnet_llm.tasks.speech_loader import open_entry
from espnet_llm.tasks.speech_llm import SpeechLLMTask, TokenizerMismatch, read_keys
from espnet_llm.text.aishell_ner import Entity

LENGTH_FILES = ("utt2num_samples", "feats_shape")  # looked for beside the speech scp (audio, dumped features)


LARGE_ON_CPU = 1e9  # parameters: a CPU decode of more is refused unless asked for (ChatGLM3-6B: 25 GB a job in float32)


class LargeModelOnCPU(ValueError):
    """A CPU decode of a model over LARGE_ON_CPU parameters, not asked for."""


READS = ("audio", "features")  # what a decoding model is given: audio through its frozen Whisper, or Whisper's output


def reading(train_args: argparse.Namespace, reads: str, train_config: str = "the training config") -> argparse.Namespace:
    """The training config with its speech encoder set to read ``reads``: audio through the frozen Whisper the
    config names (also for a model trained on that Whisper's cached features: Whisper is frozen, so the trained
    weights are the same), or the cached features of that Whisper (``dump_whisper_features``)."""
    if reads not in READS:
        raise ValueError(f"reads {reads!r}: one of {READS}")
    args = argparse.Namespace(**vars(train_args))
    conf = dict(getattr(args, "speech_encoder_conf", None) or {})
    if reads == "audio" and getattr(args, "speech_encoder", "whisper") == "whisper_cached":
        if not conf.get("model_path"):
            raise ValueError(f"{train_config}: trained on cached Whisper features without naming their Whisper "
                             "(speech_encoder_conf model_path): it cannot decode audio")
        conf.pop("output_size", None)
    elif reads == "features":
        conf = {k: v for k, v in conf.items() if k in ("output_size", "model_path", "pad_to_30s", "dtype")}
    args.speech_encoder = "whisper" if reads == "audio" else "whisper_cached"
    args.speech_encoder_conf = conf
    return args


def load_model(
    train_config: str, model_file: str | None, device: str, allow_large_model_on_cpu: bool = False, reads: str = "audio",
):
    """The model of a training config as training builds it (frozen weights in the config's dtype, what trains in
    float32), reading audio or cached Whisper features (``reading``), the trained weights (all, or trainable
    only) loaded over the base models. -> (model, the training config as the model was built)

    The model file is read, and a CPU decode of a large model refused, before the model is built, so either fails
    in a moment."""
    with open(train_config, encoding="utf-8") as f:
        args = reading(argparse.Namespace(**yaml.safe_load(f)), reads, train_config)
    state = checkpoint_state(model_file) if model_file is not None else None
    if device == "cpu" and not allow_large_model_on_cpu:
        with torch.device("meta"):  # the size, from the config files alone
            size = sum(p.numel() for p in SpeechLLMTask.build_model(args, load_weights=False).parameters())
        if size > LARGE_ON_CPU:
            raise LargeModelOnCPU(
                f"{train_config}: a model of {size / 1e9:.1f}B parameters would be decoded on the CPU: decode on GPUs "
                f"(run.sh --gpu_inference true), or pass --allow_large_model_on_cpu true (run.sh --inference_args) "
                f"to decode on the CPU anyway, with the memory of the whole model in every job"
            )
    model = SpeechLLMTask.build_model(args)
    if state is not None:
        model.load_state_dict(state)  # strict on the trainable weights; the frozen ones come from the base models
    model.to(device=device).eval()
    return model, args


def autocast_dtype(train_args) -> torch.dtype:
    """The dtype the decoding runs its matmuls in: that of the frozen LLM weights, as training does with ESPnet's
    use_amp (the float32 trainable weights and gate adds are cast by autocast, not by hand)."""
    return torch_dtype(train_args.llm_conf.get("dtype", "float32"), "llm_conf dtype")


def as_trained(device: str, train_args):
    """The autocast that a model of ``train_args`` runs under on ``device``, as in training (for decoding and the
    teacher-forced measurements alike): bf16 frozen weights meet the float32 adapter and cross-attention."""
    dtype = autocast_dtype(train_args)
    return torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype != torch.float32)


def utterance_lengths(
    data_path_and_name_and_type: list, keys: list[str], num_history: int, shape_file: str | None = None
) -> dict[str, int]:
    """Each key's speech length (samples or frames) with its last ``num_history`` history utterances."""
    entries = {name: (path, kind) for path, name, kind in data_path_and_name_and_type}
    speech_path, speech_type = entries["speech"]
    table = next(
        (p for p in [shape_file] + [str(Path(speech_path).with_name(n)) for n in LENGTH_FILES] if p and Path(p).is_file()),
        None,
    )
    known = {k: int(v.split(",")[0]) for k, v in read_2columns_text(table).items()} if table else {}
    history = read_2columns_text(entries["history"][0]) if num_history and "history" in entries else {}
    needed = set(keys) | {h for k in keys for h in history.get(k, "").split()[-num_history:]}
    missing = sorted(needed - known.keys())
    if missing:
        logging.info(f"reading {len(missing)} utterance(s) to find their lengths (no shape file has them)")
        loader = open_entry(speech_path, speech_type)
        for k in missing:
            try:
                known[k] = len(loader[k])
            except KeyError:  # not in the speech scp: the dataset names it when its batch is loaded
                known[k] = 0
    return {k: known[k] + sum(known[h] for h in history.get(k, "").split()[-num_history:]) for k in keys}


def token_limit(
    layout: PromptLayout, speech_lengths: torch.Tensor, segments: torch.Tensor | None, rate: float,
    tokens_per_second: float, max_new_tokens: int,
) -> int:
    """max_new_tokens for a batch: what the answer of its longest row can take, never above the configured one."""
    budgets = []
    for b, length in enumerate(speech_lengths.tolist()):
        lengths = [length] if segments is None else [n for n in segments[b].tolist() if n > 0]
        budgets.append(layout.answer_budget(length / rate, lengths[-1] / rate, len(lengths) - 1, tokens_per_second))
    return min(max_new_tokens, max(budgets))


@dataclass
class Hypothesis:
    """One answer of the decoding of an utterance."""

    text: str  # the current utterance's transcript
    marked: str  # the model's entity-marked copy of it (ner; the text otherwise); may differ: ner_text_mismatch
    entities: list[Entity]  # with character offsets into ``text``
    score: float  # log-probability of the answer under the model: its tokens and its end token, summed
    score_per_token: float  # the same over the number of those tokens
    token_ids: list[int]  # the whole generated answer (history transcripts and separators included)
    problems: list[Problem]  # what the output parser repaired or flagged


class Speech2Text:
    """Decoding as a library, as ESPnet's ``Speech2Text``: built from a training config and a model file, called on
    one utterance (with, for the long-form tasks, its previous utterances, oldest first, of which the last
    ``num_history`` of the config are used, as in training); returns its ``nbest`` answers, best first.

    ``reads="audio"`` (the default): the speech is an audio file, or an array with its sample rate ``fs``; any
    rate and channel count is made Whisper's 16-kHz mono (speech.audio_input), bad audio refused by name. A
    model trained on cached Whisper features decodes audio through the Whisper its config names.
    ``reads="features"``: Whisper's dumped features, (frames, dim), as stage 12 decodes them.
    """

    def __init__(
        self,
        speech_llm_train_config: str,
        speech_llm_model_file: str | None = None,
        device: str = "cpu",
        beam_size: int = 1,
        max_new_tokens: int = 200,
        tokens_per_second: float = TOKENS_PER_SECOND,
        allow_large_model_on_cpu: bool = False,
        nbest: int = 1,
        reads: str = "audio",
    ):
        if not 1 <= nbest <= beam_size:
            raise ValueError(f"nbest {nbest}: between 1 and beam_size ({beam_size})")
        self.model, self.train_args = load_model(
            speech_llm_train_config, speech_llm_model_file, device, allow_large_model_on_cpu, reads
        )
        self.device, self.reads, self.nbest = device, reads, nbest
        self.beam_size, self.max_new_tokens, self.tokens_per_second = beam_size, max_new_tokens, tokens_per_second
        self.preprocessor = SpeechLLMTask.preprocessor_for(self.train_args, [])  # its checks and time steps a second

    @classmethod
    def from_pretrained(
        cls, model: str | Path, base_models: dict[str, str] | None = None, cache_dir: str | Path | None = None,
        **kwargs,
    ) -> "Speech2Text":
        """A pack of ``espnet_llm.bin.pack`` (unpacked into ``cache_dir``, by default beside it), its unpacked
        directory, or a run directory (its config's paths as they are: from the recipe directory). ``base_models``
        (``{"llm": path, "speech_encoder": path}``) replaces the paths the pack recorded, each checked against the
        pack's record of it. The pack's decode config gives the defaults of the other options."""
        files = unpacked(model, cache_dir)
        config = resolve_base_models(files, base_models)
        options = {}
        if "decode_config" in files:
            decode = yaml.safe_load(Path(files["decode_config"]).read_text(encoding="utf-8")) or {}
            options = {k: v for k, v in decode.items() if k in ("beam_size", "nbest", "max_new_tokens", "tokens_per_second")}
        return cls(config, files.get("speech_llm_model_file"), **{**options, **kwargs})

    @property
    def layout(self) -> PromptLayout:
        return self.model.layout

    def model_input(self, speech, fs: int | None, name: str) -> np.ndarray:
        """One utterance as the model reads it, or an AudioError / ValueError naming it."""
        if self.reads == "audio":
            speech = load_model_audio(speech) if isinstance(speech, (str, Path)) else to_model_audio(speech, fs, name)
        speech = np.asarray(speech, dtype=np.float32)
        problem = self.preprocessor.check_speech(speech)
        if problem:
            raise ValueError(f"{name}: {problem}")
        return speech

    @torch.no_grad()
    def __call__(self, speech, history=(), fs: int | None = None) -> list[Hypothesis]:
        """``speech`` (and each of ``history``): a file path, or an array at ``fs`` Hz (audio), or features."""
        if not self.layout.uses_history and len(history):
            raise ValueError(f"the {self.layout.task} task takes no history utterances")
        history = list(history)[len(history) - self.preprocessor.num_history:] if self.preprocessor.num_history else []
        pieces = [
            torch.from_numpy(self.model_input(s, fs, "the speech" if i == len(history) else f"history utterance {i + 1}"))
            for i, s in enumerate((*history, speech))
        ]
        lengths = torch.tensor([len(p) for p in pieces])
        segments = lengths[None] if self.layout.uses_history else None
        return self.decode_batch(torch.cat(pieces)[None], lengths.sum()[None], segments)[0]

    @torch.no_grad()
    def decode_batch(self, speech, speech_lengths, segments=None) -> list[list[Hypothesis]]:
        """A padded batch of utterances, none broken: (B, T[, dim]), (B,), and (B, K + 1) segment lengths."""
        speech, speech_lengths = speech.to(self.device), speech_lengths.to(self.device)
        rate = self.preprocessor.rate
        limit = token_limit(self.layout, speech_lengths, segments, rate, self.tokens_per_second, self.max_new_tokens)
        # the audio stays float32 up to the log-mel; bf16 weights run under autocast, as in training
        with as_trained(self.device, self.train_args):
            decoded = self.model.generate(
                speech, speech_lengths, None if segments is None else segments.to(self.device),
                beam_size=self.beam_size, max_new_tokens=limit, nbest=self.nbest,
            )
        return [
            [Hypothesis(p.text, p.marked, p.entities, float(lp.sum()), float(lp.mean()) if len(lp) else 0.0, ids,
                        p.problems) for ids, lp, p in row]
            for row in decoded
        ]


def inference(
    output_dir: str,
    data_path_and_name_and_type: list,
    speech_llm_train_config: str,
    speech_llm_model_file: str | None,
    key_file: str | None = None,
    batch_size: int = 1,
    ngpu: int = 0,
    beam_size: int = 1,
    max_new_tokens: int = 200,
    tokens_per_second: float = TOKENS_PER_SECOND,
    num_workers: int = 1,
    log_interval: int = 20,
    shape_file: str | None = None,
    allow_large_model_on_cpu: bool = False,
    nbest: int = 1,
) -> dict:
    """Decode every utterance; returns counts (utterances, broken and their ids, parse problems and their kinds)."""
    if ngpu > 1:
        raise NotImplementedError("decode with --ngpu 0 or 1; split the data for more (ESPnet's --inference_nj)")
    speech2text = Speech2Text(
        speech_llm_train_config, speech_llm_model_file, "cuda" if ngpu > 0 else "cpu", beam_size,
        max_new_tokens, tokens_per_second, allow_large_model_on_cpu, nbest,
        reads=speech_kind(data_path_and_name_and_type),
    )
    train_args, layout = speech2text.train_args, speech2text.layout
    preprocessor = SpeechLLMTask.preprocessor_for(train_args, data_path_and_name_and_type)
    keys_in_order = read_keys(key_file or data_path_and_name_and_type[0][0])
    loader = SpeechLLMTask.build_streaming_iterator(
        data_path_and_name_and_type,
        preprocess_fn=preprocessor,
        collate_fn=SpeechLLMTask.build_collate_fn(train_args, False),
        key_file=key_file,
        batch_size=batch_size,
        num_workers=num_workers,
        ngpu=ngpu,
        inference=True,
        allow_variable_data_keys=True,  # text/text_ner may be given alongside, for convenience; unused
        utt2length=utterance_lengths(data_path_and_name_and_type, keys_in_order, preprocessor.num_history, shape_file),
    )
    broken_ids: list[str] = []
    counts = {"utterances": 0, "broken": 0, "broken_ids": broken_ids, "with_problems": 0, "problems": {}}
    audio_seconds, start = 0.0, time.perf_counter()
    outputs: dict[str, dict[str, dict[str, str]]] = {}  # key -> nbest dir -> file -> line, written in key order
    for batch_index, (keys, batch) in enumerate(loader, 1):
        speech, speech_lengths = batch["speech"], batch["speech_lengths"]
        keep = [i for i, n in enumerate(speech_lengths.tolist()) if n > 0]
        results = {}
        if keep:
            segments = batch.get("speech_segments")
            segments = segments[keep] if segments is not None else None
            results = dict(zip(keep, speech2text.decode_batch(speech[keep], speech_lengths[keep], segments)))
        for i, key in enumerate(keys):
            counts["utterances"] += 1
            if i not in results:
                counts["broken"] += 1
                broken_ids.append(key)
                logging.warning(f"utterance {key}: broken (reason logged above): empty hypothesis written")
                hyps = [Hypothesis("", "", [], float("-inf"), float("-inf"), [], [])] * nbest
            else:
                hyps = results[i]
                if hyps[0].problems:
                    counts["with_problems"] += 1
                    for kind in dict.fromkeys(p.kind for p in hyps[0].problems):
                        counts["problems"][kind] = counts["problems"].get(kind, 0) + 1
                    logging.warning(f"utterance {key}: repaired model output: {'; '.join(map(str, hyps[0].problems))}")
            outputs[key] = {}
            for n, hyp in enumerate(hyps, 1):
                out = outputs[key][f"{n}best_recog"] = {
                    "text": hyp.text,
                    "token": " ".join(layout.tokenizer.convert_ids_to_tokens(hyp.token_ids)),
                    "score": str(hyp.score),
                }
                if layout.task == "ner":
                    out["text_ner"] = hyp.marked
        audio_seconds += float(speech_lengths.sum()) / preprocessor.rate
        if batch_index % log_interval == 0:
            elapsed = time.perf_counter() - start
            logging.info(
                f"decoded {counts['utterances']} utterances, {counts['utterances'] / elapsed:.2f} utt/s, "
                f"RTF {elapsed / max(audio_seconds, 1e-9):.3f}"
            )
    with DatadirWriter(output_dir) as writer:
        for key in keys_in_order:
            for nbest_dir, files in outputs[key].items():
                for name, value in files.items():
                    writer[nbest_dir][name][key] = value
    with open(Path(output_dir) / "parse_repairs.json", "w", encoding="utf-8") as f:
        json.dump(counts, f, indent=1)
    elapsed = time.perf_counter() - start
    by_kind = ", ".join(f"{n} {kind}" for kind, n in counts["problems"].items())
    logging.info(
        f"done: {counts['utterances']} utterances in {elapsed:.1f} s (RTF {elapsed / max(audio_seconds, 1e-9):.3f}); "
        f"{counts['broken']} broken{': ' + ' '.join(broken_ids) if broken_ids else ''}; "
        f"{counts['with_problems']} outputs repaired by the parser{' (' + by_kind + ')' if by_kind else ''}"
    )
    return counts


def speech_kind(data_path_and_name_and_type: list) -> str:
    """What the speech entry holds, in READS: audio (a ``sound`` scp, or arrays of one dimension), or Whisper's
    dumped features (arrays of two), seen in its first readable entry (features where none is: nothing decodes)."""
    path, _, data_type = next(e for e in data_path_and_name_and_type if e[1] == "speech")
    if data_type == "sound":
        return "audio"
    loader = open_entry(path, data_type)
    for key in loader:
        array = loader[key]
        if array.size:
            return "audio" if array.ndim == 1 else "features"
    return "features"


def get_parser():
    parser = config_argparse.ArgumentParser(
        description="Speech LLM decoding", formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--log_level", type=lambda x: x.upper(), default="INFO",
                        choices=("ERROR", "WARNING", "INFO", "DEBUG", "NOTSET"))
    parser.add_argument("--output_dir", type=str, required=True)
    parser.add_argument("--ngpu", type=int, default=0, help="0: CPU, 1: one GPU")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--allow_large_model_on_cpu", type=str2bool, default=False,
        help="decode a model of over 1B parameters on the CPU (refused by default: each job holds the whole model)",
    )
    parser.add_argument("--num_workers", type=int, default=1)
    group = parser.add_argument_group("Input data related")
    group.add_argument("--data_path_and_name_and_type", type=str2triple_str, required=True, action="append")
    group.add_argument("--key_file", type=str_or_none)
    group.add_argument("--batch_size", type=int, default=1)
    group.add_argument(
        "--shape_file", type=str_or_none,
        help="utterance lengths for length-sorted batches (utt2num_samples or feats_shape); "
        "default: utt2num_samples or feats_shape beside the speech scp, else read from the speech",
    )
    group = parser.add_argument_group("The model configuration related")
    group.add_argument("--speech_llm_train_config", type=str, required=True)
    group.add_argument("--speech_llm_model_file", type=str_or_none)
    group = parser.add_argument_group("Decoding related")
    group.add_argument("--beam_size", type=int, default=1, help="1: greedy search")
    group.add_argument("--nbest", type=int, default=1, help="answers written per utterance ({n}best_recog/)")
    group.add_argument("--max_new_tokens", type=int, default=200, help="the most tokens an answer may take")
    group.add_argument(
        "--tokens_per_second", type=float, default=TOKENS_PER_SECOND,
        help="a batch's max_new_tokens: this many per second of speech (for ner the current utterance's counted "
        "twice), plus separators and a margin, for its longest answer; never above --max_new_tokens",
    )
    group.add_argument("--log_interval", type=int, default=20, help="batches between progress lines")
    return parser


def main(cmd=None):
    print(get_commandline_args(), file=sys.stderr)
    args = get_parser().parse_args(cmd)
    logging.basicConfig(level=args.log_level, format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s")
    torch.manual_seed(args.seed)
    kwargs = vars(args)
    for k in ("log_level", "seed", "config"):
        kwargs.pop(k, None)
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    try:
        counts = inference(**kwargs)
    except (CheckpointError, FileNotFoundError, LargeModelOnCPU, TokenizerMismatch) as error:  # one line
        sys.exit(f"ERROR: {error}")
    if counts["utterances"] and counts["broken"] == counts["utterances"]:
        sys.exit(f"ERROR: none of the {counts['utterances']} utterances could be decoded (their reasons are logged "
                 f"above); empty hypotheses written to {args.output_dir}")


if __name__ == "__main__":
    main()
