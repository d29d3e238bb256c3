"""RESULTS.md in ESPnet's manner: environment, a summary of every system, sclite tables, NER, plots.

The experiment directory it reads (run.sh's stages 11-13 write it):

    <expdir>/<system>/<phase>/                 one training run (the trainer's --output_dir), e.g.
                                               conformer/asr, decoder_only/short, decoder_only/long,
                                               decoder_only/cot, cross_attention/short, ...
        train.log                              the trainer's log: "<N>epoch results: [train] ... [valid] ..."
        images/*.png                           ESPnet's own per-metric plots (linked, not redrawn)
        gate_values.json                       optional, cross-attention systems: {"gates": [g_1, ..., g_L]},
                                               the per-layer gate values (the paper's Figure 2a); "gate":
                                               static, or dynamic (the mean over the validation set's current
                                               utterances, with the run's K, "num_history")
        speech_attention.json                  optional, decoder-only systems: {"num_history": K, "share": [...]},
                                               the per-layer attention share on speech (Figure 2b)
        decode_<tag>/                          one decoding (utils/inference_tag.sh: decode config, options, model)
          <set>/                               decoding of data/<set>: text, text_ner
            inference_options                  local/decode.sh: the program and its options, one a line
            score_cer/result.json, result.txt  espnet_llm.bin.score_cer (result.txt: each utterance's counts)
            score_ner/result.json, result.txt, espnet_llm.bin.score_ner
                      utterances.json
            **/parse_repairs.json              speech LLMs: what the output parser repaired, by kind, of each
                                               decoding job (run.sh: logdir/output.<n>/), summed
          <set>_other_speech/score_cer/        optional, a control: <set> decoded with each utterance given another
                                               utterance's speech, scored the same way; not a set of its own

A phase directory is any directory holding a decode_<tag>/<set>/score_cer or score_ner; a system without
phases (decode_<tag> right under <expdir>/<system>) is listed with phase "-". Phases are ordered
short, long, cot, then by name, then a history sweep's runs by phase and K; sets dev, test, then by name. The runs of a history sweep (run.sh
--history_sweep: ``long_k<K>``, ``cot_k<K>``) have a table and a plot against K of their own. Every decoding is a
row of the summary; the rest of RESULTS.md reads each run's latest decoding (the one whose text was written last).
Plots go to ``<RESULTS.md's directory>/results_images/``. The recipe directory (``<expdir>/..``) holds
``data/train/text``, the training sentences that the controls compare each hypothesis with.
"""
from __future__ import annotations

import datetime
import importlib
import importlib.metadata
import json
import logging
import os
import platform
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from espnet_llm.models.prompts import PROBLEM_KINDS
from espnet_llm.scoring import ctc_weight_tuning
from espnet_llm.scoring.bootstrap import RESAMPLES, SEED
from espnet_llm.scoring.cer import ESPNET_TABLE_HEADER, CerResult, cer_tokens, read_kaldi_text
from espnet_llm.scoring.claims import claim_rows, claims_table
from espnet_llm.scoring.ner import error_table, prf_table

log = logging.getLogger(__name__)

PHASE_ORDER = ("short", "long", "cot")
SWEEP_RUN = re.compile(r"^(long|cot)_k(\d+)$")  # a history sweep's run: its phase and K
SET_ORDER = ("dev", "test")
OTHER_SPEECH = "_other_speech"  # <set>_other_speech: the control decoding of <set>, not a set of its own
TRAIN_TEXT = Path("data") / "train" / "text"  # in the recipe directory: run.sh's train_set
PLOT_DIR_NAME = "results_images"


@dataclass
class Run:
    """One decoding of a system/phase."""
    system: str
    phase: str
    path: Path
    decoding: str  # its directory under path: decode_<tag>
    cer: dict[str, CerResult] = field(default_factory=dict)  # set -> result
    ner: dict[str, dict] = field(default_factory=dict)  # set -> score_ner's result.json
    repairs: dict[str, dict] = field(default_factory=dict)  # set -> parse_repairs.json summed over the jobs
    other_speech: dict[str, CerResult] = field(default_factory=dict)  # set -> its <set>_other_speech CER

    @property
    def name(self) -> str:
        return self.system if self.phase == "-" else f"{self.system}/{self.phase}"

    def decode_dir(self, data_set: str) -> Path:
        return self.path / self.decoding / data_set

    def written(self) -> float:
        """When its decoding was written: the newest of its sets' text (scoring again leaves it as it was)."""
        return max((t.stat().st_mtime for t in (self.path / self.decoding).glob("*/text")), default=0.0)


@dataclass
class DecodingOptions:
    """What made a decoding: the decode config, beam and model file, from local/decode.sh's inference_options."""
    config: str = "-"
    beam: str = "-"
    model: str = "-"


def decoding_options(run: Run, recipe_dir: Path) -> DecodingOptions:
    """The last value of each option, as argparse reads them; the beam from the options, else the decode config,
    else the program's default. Paths in the options are relative to the recipe directory."""
    files = sorted((run.path / run.decoding).glob("*/inference_options"))
    if not files:
        return DecodingOptions()
    module, *argv = files[0].read_text(encoding="utf-8").splitlines()
    values = {}
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if name.startswith("--"):
            values[name[2:]] = value if eq else (argv[i + 1] if i + 1 < len(argv) else "")
    config = values.get("config")
    beam = values.get("beam_size")
    if beam is None and config and (recipe_dir / config).is_file():
        beam = (yaml.safe_load((recipe_dir / config).read_text(encoding="utf-8")) or {}).get("beam_size")
    if beam is None:
        try:
            beam = importlib.import_module(module).get_parser().get_default("beam_size")
        except (ImportError, AttributeError):
            beam = None
    model = values.get("speech_llm_model_file") or values.get("asr_model_file")
    return DecodingOptions(Path(config).name if config else "-", "-" if beam is None else str(beam),
                           Path(model).name if model else "-")


def latest_decodings(runs: list[Run]) -> list[Run]:
    """Each system/phase's latest decoding, in the order of ``runs``."""
    by_name: dict[str, list[Run]] = {}
    for run in runs:
        by_name.setdefault(run.name, []).append(run)
    latest = {name: max(decodings, key=Run.written) for name, decodings in by_name.items()}  # each stat'ed once
    return [run for run in runs if latest[run.name] is run]


def _order(name: str, first: tuple[str, ...]) -> tuple[int, str]:
    return (first.index(name) if name in first else len(first), name)


def _phase_order(phase: str) -> tuple:
    """short, long, cot, other phases by name, then a history sweep's runs by phase and K."""
    sweep = SWEEP_RUN.match(phase)
    if sweep:
        return (1, _order(sweep.group(1), PHASE_ORDER), int(sweep.group(2)))
    return (0, _order(phase, PHASE_ORDER), 0)


def find_runs(expdir: Path) -> list[Run]:
    runs: dict[Path, Run] = {}
    for score_json in sorted(expdir.glob("**/decode_*/*/score_*/result.json")):
        decode_dir = score_json.parent.parent
        run_dir = decode_dir.parent.parent
        rel = run_dir.relative_to(expdir).parts
        if len(rel) not in (1, 2):
            log.warning("%s: not at <expdir>/<system>[/<phase>]/decode_<tag>/<set>/, skipped", score_json)
            continue
        run = runs.setdefault(decode_dir.parent, Run(rel[0], rel[1] if len(rel) == 2 else "-", run_dir,
                                                     decode_dir.parent.name))
        data_set = decode_dir.name
        with open(score_json, encoding="utf-8") as f:
            data = json.load(f)
        if data_set.endswith(OTHER_SPEECH):  # only its CER is read, for the controls
            if score_json.parent.name == "score_cer":
                run.other_speech[data_set[:-len(OTHER_SPEECH)]] = CerResult.from_json(data)
            continue
        if data_set not in run.repairs:
            repairs = read_parse_repairs(decode_dir)
            if repairs:
                run.repairs[data_set] = repairs
        if score_json.parent.name == "score_cer":
            run.cer[data_set] = CerResult.from_json(data)
        elif score_json.parent.name == "score_ner":
            run.ner[data_set] = data
    return sorted(runs.values(), key=lambda r: (r.system, _phase_order(r.phase), r.decoding))


def read_parse_repairs(decode_dir: Path) -> dict | None:
    """The speech LLM decoding jobs' parse_repairs.json summed; None where there is none (the conformer)."""
    files = sorted(decode_dir.glob("**/parse_repairs.json"))
    if not files:
        return None
    total = {"utterances": 0, "with_problems": 0, "problems": {}, "broken_ids": []}
    for path in files:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        total["utterances"] += data["utterances"]
        total["broken_ids"] += data.get("broken_ids", [])  # decodings before broken_ids was written have none
        total["with_problems"] += data["with_problems"]
        for kind, n in data["problems"].items():
            total["problems"][kind] = total["problems"].get(kind, 0) + n
    return total


_EPOCH_LINE = re.compile(r"(\d+)epoch results: (.*)$")
_SECTION = re.compile(r"\[(\w+)\] ")
_NUMBER = re.compile(r"(\w+)=([-+]?\d+(?:\.\d*)?(?:e[-+]?\d+)?)(?=,|$)")


def read_epoch_stats(train_log: Path) -> dict[int, dict[str, dict[str, float]]]:
    """epoch -> {"train": {"loss": ...}, "valid": {...}} from ESPnet trainer's per-epoch log lines.

    A resumed run may log an epoch again: the last line of an epoch wins.
    """
    stats: dict[int, dict[str, dict[str, float]]] = {}
    with open(train_log, encoding="utf-8", errors="replace") as f:
        for line in f:
            match = _EPOCH_LINE.search(line.rstrip("\n"))
            if not match:
                continue
            sections = _SECTION.split(match.group(2))  # ["", "train", body, "valid", body, ...]
            epoch_stats = {}
            for key, body in zip(sections[1::2], sections[2::2]):
                epoch_stats[key] = {k: float(v) for k, v in _NUMBER.findall(body.rstrip(", "))}
            stats[int(match.group(1))] = epoch_stats
    return stats


def plot_training_curves(run: Run, stats: dict, out_png: Path) -> None:
    """Loss (train and valid) and valid accuracy per epoch."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = sorted(stats)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    for section, style in (("train", "-o"), ("valid", "--s")):
        ys = [stats[e].get(section, {}).get("loss") for e in epochs]
        if any(y is not None for y in ys):
            ax_loss.plot(epochs, [float("nan") if y is None else y for y in ys], style, label=section)
        for key, label in (("acc", section), ("acc_current", f"{section}, current utt.")):
            ys = [stats[e].get(section, {}).get(key) for e in epochs]
            if any(y is not None for y in ys):
                ax_acc.plot(epochs, [float("nan") if y is None else y for y in ys], style, label=label)
    ax_loss.set(title=f"{run.name}: loss", xlabel="epoch", ylabel="loss")
    ax_acc.set(title=f"{run.name}: token accuracy", xlabel="epoch", ylabel="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


def plot_gate_values(run: Run, layers: list[int], gates: list[float], out_png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(layers, gates)  # the LLM layer each block sits before, counted from 0 as gate_values.json does
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.set(title=f"{run.name}: cross-attention gate per LLM layer", xlabel="layer", ylabel="gate value")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def sweep_points(runs: list[Run]) -> list[tuple[Run, str, int]]:
    """(run, phase, K) of every history-sweep run (``find_runs`` orders them by system, phase and K)."""
    return [(run, m.group(1), int(m.group(2))) for run in runs if (m := SWEEP_RUN.match(run.phase))]


def _f1(run: Run, dset: str) -> float | None:
    return 100 * run.ner[dset]["micro"]["f1"] if dset in run.ner else None


def sweep_table(points: list[tuple[Run, str, int]]) -> str:
    sets = _sorted_sets(s for run, _, _ in points for s in run.cer)
    lines = ["|system|phase|K|" + "".join(f"{s} CER|" for s in sets) + "".join(f"{s} NER F1|" for s in sets),
             "|---" * (3 + 2 * len(sets)) + "|"]
    for run, phase, k in points:
        cells = [f"{run.cer[s].counts.error_rate:.1f}" if s in run.cer else "-" for s in sets]
        cells += [f"{_f1(run, s):.1f}" if _f1(run, s) is not None else "-" for s in sets]
        lines.append("|" + "|".join([run.system, phase, str(k), *cells]) + "|")
    return "\n".join(lines)


def plot_sweep(points: list[tuple[Run, str, int]], out_png: Path) -> None:
    """CER (each system and swept phase) and CoT NER F1 (each system) against K, a line per set."""
    plt = _pyplot()
    fig, (cer_ax, f1_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    sets = _sorted_sets(s for run, _, _ in points for s in run.cer)
    for (system, phase) in dict.fromkeys((run.system, phase) for run, phase, _ in points):
        line = [(k, run) for run, p, k in points if (run.system, p) == (system, phase)]
        for dset, style in zip(sets, ("-o", "--s", ":^")):
            cer = [(k, run.cer[dset].counts.error_rate) for k, run in line if dset in run.cer]
            if cer:
                cer_ax.plot(*zip(*cer), style, label=f"{system}/{phase} {dset}")
            f1 = [(k, _f1(run, dset)) for k, run in line if _f1(run, dset) is not None]
            if f1:
                f1_ax.plot(*zip(*f1), style, label=f"{system}/{phase} {dset}")
    cer_ax.set(title="CER against history", xlabel="K (history utterances)", ylabel="CER (%)")
    f1_ax.set(title="NER F1 against history", xlabel="K (history utterances)", ylabel="micro F1 (%)")
    for ax in (cer_ax, f1_ax):
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


def plot_layer_lines(series: dict[str, tuple[list[int], list[float]]], title: str, ylabel: str,
                     out_png: Path) -> None:
    """One line per run (label -> (LLM layers, values)) against the layer: the Figure 2 plots."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, (layers, values) in series.items():
        ax.plot(layers, values, "-o", label=label)
    # whole layers only, also for a model with one block (the tiny encoder-decoder's): a single tick
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True, min_n_ticks=1))
    ax.set(title=title, xlabel="LLM layer", ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


def layer_table(rows: dict[str, tuple[list[int], list[float]]], first: str) -> str:
    """| <first> | layer i | ...: a row per run."""
    layers = sorted({i for layer_list, _ in rows.values() for i in layer_list})
    lines = [f"|{first}|" + "".join(f"layer {i}|" for i in layers), "|---" * (1 + len(layers)) + "|"]
    for label, (layer_list, values) in rows.items():
        by_layer = dict(zip(layer_list, values))
        lines.append(f"|{label}|" + "".join(f"{by_layer[i]:.3f}|" if i in by_layer else "-|" for i in layers))
    return "\n".join(lines)


def read_gates(run: Run) -> dict | None:
    """A run's gate_values.json (export_gates), its ``layers`` filled in for a file that predates them; None without."""
    gate_file = run.path / "gate_values.json"
    if not gate_file.exists():
        return None
    values = json.loads(gate_file.read_text(encoding="utf-8"))
    values.setdefault("layers", list(range(len(values["gates"]))))
    return values


def read_speech_attention(run: Run) -> dict | None:
    """A decoder-only run's speech_attention.json (bin/speech_attention.py); None without."""
    path = run.path / "speech_attention.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def figure2(runs: list[Run], out: Path, plot_dir: Path) -> list[str]:
    """RESULTS.md's Figure 2 section: (a) the gate values of every run that has them, (b) the decoder-only runs'
    attention share on speech, each a table and one plot."""
    doc = []
    gates, shares = {}, {}
    for run in runs:
        if (data := read_gates(run)) is not None:
            gates[run.name] = (data["layers"], data["gates"])
        if (data := read_speech_attention(run)) is not None:
            shares[f"{run.name} (K={data['num_history']}, {data['set']})"] = (data["layers"], data["share"])
    if gates:
        png = plot_dir / "gates_all_runs.png"
        plot_layer_lines(gates, "cross-attention gate per LLM layer, every run", "tanh(gate)", png)
        doc += ["## Gate values (Figure 2a)",
                "tanh(gate) of each LLM layer's gated cross-attention, every run that has one (`gate_values.json`): "
                "the learned value of a static gate; for a dynamic gate (a gate a token, from its hidden state) the "
                "mean over the positions that predict the validation set's current-utterance tokens, with the run's "
                "history K.",
                "", gates_table(runs), "", f"![gate values of every run]({os.path.relpath(png, out.parent)})", ""]
    if shares:
        png = plot_dir / "speech_attention.png"
        plot_layer_lines(shares, "attention of the current utterance's tokens on speech", "share of attention", png)
        doc += ["## Attention on speech (Figure 2b)",
                "Decoder-only runs, teacher-forced on the set named: per LLM layer, the attention mass that the "
                "current utterance's answer tokens put on the prompt's speech embeddings (history segments "
                "included), averaged over heads and tokens (`speech_attention.json`).",
                "", layer_table(shares, "run"), "", f"![attention share on speech]({os.path.relpath(png, out.parent)})",
                ""]
    return doc


def _run_command(cmd: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _devices() -> str:
    import torch

    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return f"{len(names)} GPU: " + ", ".join(names)
    return f"CPU only ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"


def environment_block(repo_dir: Path) -> str:
    """The environment lines of ESPnet's show_asr_result.sh, plus the libraries this project adds."""
    git_hash = _run_command(["git", "rev-parse", "HEAD"], repo_dir)
    lines = [
        "## Environments",
        f"- date: `{datetime.datetime.now().astimezone().strftime('%a %b %d %H:%M:%S %Z %Y')}`",
        f"- python version: `{sys.version}`",
        f"- espnet version: `espnet {_version('espnet')}`",
        f"- pytorch version: `pytorch {_version('torch')}`",
        f"- transformers version: `transformers {_version('transformers')}`",
        f"- peft version: `peft {_version('peft')}`",
        f"- devices: `{_devices()}`",
        f"- Git hash: `{git_hash or 'unknown (no git commit)'}`",
    ]
    if git_hash:
        commit_date = _run_command(["git", "log", "-1", "--format=%cd"], repo_dir)
        lines.append(f"  - Commit date: `{commit_date}`")
    return "\n".join(lines)


def _sorted_sets(sets) -> list[str]:
    return sorted(set(sets), key=lambda s: _order(s, SET_ORDER))


def summary_table(runs: list[Run], recipe_dir: Path) -> str:
    """A row per decoding: what made it (decode config, beam, model file) and its scores."""
    sets = _sorted_sets(s for r in runs for s in list(r.cer) + list(r.ner))
    header = ["system", "phase", "decode config", "beam", "model"] + [f"{s} CER" for s in sets]
    for s in sets:
        header += [f"{s} NER P", f"{s} NER R", f"{s} NER F1"]
    lines = ["|" + "|".join(header) + "|", "|---" * len(header) + "|"]
    for run in runs:
        options = decoding_options(run, recipe_dir)
        cells = [run.system, run.phase, options.config, options.beam, options.model]
        cells += [f"{run.cer[s].counts.error_rate:.1f}" if s in run.cer else "-" for s in sets]
        for s in sets:
            if s in run.ner:
                micro = run.ner[s]["micro"]
                cells += [f"{100 * micro[k]:.1f}" for k in ("precision", "recall", "f1")]
            else:
                cells += ["-", "-", "-"]
        lines.append("|" + "|".join(cells) + "|")
    return "\n".join(lines)


def read_train_sentences(recipe_dir: Path) -> set[str] | None:
    """The training sentences, normalised as scoring normalises a hypothesis; None without data/train/text."""
    path = recipe_dir / TRAIN_TEXT
    if not path.exists():
        return None
    sentences = {"".join(cer_tokens(text)) for text in read_kaldi_text(path).values()}
    sentences.discard("")  # an empty hypothesis recites nothing
    return sentences


def verbatim_share(decode_text: Path, train_sentences: set[str]) -> tuple[int, int]:
    """(hypotheses that are a training sentence word for word, hypotheses) of a decoding's text."""
    hyps = read_kaldi_text(decode_text)
    return sum("".join(cer_tokens(h)) in train_sentences for h in hyps.values()), len(hyps)


def controls_table(runs: list[Run], train_sentences: set[str] | None) -> str | None:
    """Per run and set: the share of hypotheses that are training sentences, and the CER with its own speech
    beside the CER with other utterances' speech; None where neither was measured."""
    if train_sentences is None and not any(run.other_speech for run in runs):
        return None
    lines = ["|system|phase|set|hypotheses|training sentences (%)|CER|CER, other speech|", "|---" * 7 + "|"]
    for run in runs:
        for s in _sorted_sets(list(run.cer) + list(run.other_speech)):
            text = run.decode_dir(s) / "text"
            cells = ["-", "-"]
            if train_sentences is not None and text.exists():
                verbatim, n = verbatim_share(text, train_sentences)
                cells = [str(n), f"{100 * verbatim / n:.1f} ({verbatim})" if n else "-"]
            cells += [f"{results[s].counts.error_rate:.1f}" if s in results else "-"
                      for results in (run.cer, run.other_speech)]
            lines.append("|" + "|".join([run.system, run.phase, s, *cells]) + "|")
    return "\n".join(lines)


LISTENING_KEYS = ("acc", "acc_current", "loss", "loss_other_speech", "speech_reliance")


def listening_table(runs: list[Run], stats_of: dict[str, dict]) -> str | None:
    """The last epoch's validation figures of each speech LLM run: accuracy on the whole target and on the
    current utterance alone, and how much worse the loss gets with another utterance's speech."""
    lines = ["|system|phase|epochs|valid acc|valid acc (current utt.)|valid loss|loss, other speech|speech reliance|",
             "|---|---|---|---|---|---|---|---|"]
    for run in runs:
        stats = stats_of.get(run.name) or {}
        measured = [e for e in stats if "speech_reliance" in stats[e].get("valid", {})]  # the last epoch's
        if not measured:
            continue
        valid = stats[max(measured)]["valid"]
        cells = [f"{valid[k]:.3f}" if k in valid else "-" for k in LISTENING_KEYS]
        lines.append("|" + "|".join([run.system, run.phase, str(max(measured)), *cells]) + "|")
    return "\n".join(lines) if len(lines) > 2 else None


def gates_table(runs: list[Run]) -> str | None:
    """The per-layer gate values of each run with a gate_values.json, beside its gate kind and history K: static
    gates are the learned numbers, dynamic ones their mean over the validation set's current-utterance tokens."""
    rows = []
    for run in runs:
        if (values := read_gates(run)) is not None:
            rows.append((run, values, dict(zip(values["layers"], values["gates"]))))
    if not rows:
        return None
    layers = sorted({i for _, _, by_layer in rows for i in by_layer})
    header = ["system", "phase", "gate", "K"] + [f"layer {i}" for i in layers]
    lines = ["|" + "|".join(header) + "|", "|---" * len(header) + "|"]
    for run, values, by_layer in rows:
        k = values.get("num_history", run_config(run).get("num_history", "-"))
        gates = [f"{by_layer[i]:+.3f}" if i in by_layer else "-" for i in layers]
        lines.append("|" + "|".join([run.system, run.phase, values.get("gate", "static"), str(k), *gates]) + "|")
    return "\n".join(lines)


def run_config(run: Run) -> dict:
    config = run.path / "config.yaml"
    return (yaml.safe_load(config.read_text(encoding="utf-8")) or {}) if config.exists() else {}


def repairs_table(runs: list[Run]) -> list[str]:
    """The parser's repairs of each speech LLM decoding, by kind, and what each kind found means; [] if none."""
    rows = [(run, s) for run in runs for s in _sorted_sets(run.repairs)]
    if not rows:
        return []
    seen = {kind for run, s in rows for kind in run.repairs[s]["problems"]}
    kinds = [k for k in PROBLEM_KINDS if k in seen] + sorted(seen - PROBLEM_KINDS.keys())
    header = ["system", "phase", "set", "utterances", "repaired"] + kinds
    lines = ["|" + "|".join(header) + "|", "|---" * len(header) + "|"]
    for run, s in rows:
        counts = run.repairs[s]
        cells = [run.system, run.phase, s, str(counts["utterances"]), str(counts["with_problems"])]
        cells += [str(counts["problems"].get(k, 0)) for k in kinds]
        lines.append("|" + "|".join(cells) + "|")
    legend = [f"- `{k}`: {PROBLEM_KINDS[k]}" for k in kinds if k in PROBLEM_KINDS]
    return lines + ([""] + legend if legend else [])


NAMED_IDS = 20


def _named(ids: list[str]) -> str:
    return " ".join(ids[:NAMED_IDS]) + (f" ... ({len(ids) - NAMED_IDS} more)" if len(ids) > NAMED_IDS else "")


def not_decoded_notes(run: Run) -> list[str]:
    """The utterances of each scored set that have no hypothesis (left out before decoding: unreadable audio) or
    an empty one written for a broken input (decoding could not read it), by name: both are scored as all
    deleted, so the set's CER covers its whole reference."""
    notes = []
    for s in _sorted_sets(run.cer):
        missing = run.cer[s].missing_hypotheses
        broken = run.repairs[s]["broken_ids"] if s in run.repairs else []
        if missing:
            notes.append(f"- {s}: {len(missing)} utterance(s) of the reference have no hypothesis: {_named(missing)}")
        if broken:
            notes.append(f"- {s}: {len(broken)} utterance(s) could not be read by decoding: {_named(broken)}")
    if not notes:
        return []
    return ["", "Not decoded, scored as all deleted (listed in <set>/score_cer/result.json and the decoding "
            "log):", *notes]


def _ner_tables(ner: dict) -> list[str]:
    lines = [prf_table(ner), "", error_table(ner)]
    notes = [f"{len(ner[k])} {k.replace('_', ' ')}" for k in
             ("malformed_hypotheses", "missing_hypotheses", "malformed_references") if ner[k]]
    if notes:
        lines += ["", "Input problems: " + "; ".join(notes) + " (listed in score_ner/result.txt)."]
    return lines


def write_results(expdir: str | Path, out: str | Path) -> str:
    """Write RESULTS.md (and its plots) for every run under ``expdir``; return the summary table."""
    expdir, out = Path(expdir), Path(out)
    decodings = find_runs(expdir)
    if not decodings:
        raise FileNotFoundError(f"no decode_<tag>/<set>/score_cer or score_ner results under {expdir}")
    runs = latest_decodings(decodings)
    plot_dir = out.parent / PLOT_DIR_NAME
    summary = summary_table(decodings, expdir.resolve().parent)
    points = sweep_points(runs)
    stats_of = {run.name: read_epoch_stats(run.path / "train.log") for run in runs if (run.path / "train.log").exists()}
    listening = listening_table(runs, stats_of)
    doc = [
        "<!-- Generated by python -m espnet_llm.bin.make_results -->",
        "# RESULTS",
        environment_block(expdir.resolve().parent),
        "",
        "## Summary",
        "CER in % (sclite or its fallback, entity marks removed); NER micro precision, recall, F1 in % "
        "(an entity is correct when type and text match, counted as a multiset per utterance). A row per "
        "decoding; the sections below read each run's latest.",
        "",
        summary,
        "",
    ]
    train_sentences = read_train_sentences(expdir.resolve().parent)
    controls = controls_table(runs, train_sentences)
    if controls:
        doc += [
            "## Controls",
            "Whether a run hears the speech or recites training text. Training sentences: the share of a set's "
            "hypotheses (normalised and without marks, as for CER) that are word for word a sentence of "
            f"`{TRAIN_TEXT}`; of held-out sets, whose sentences are not in training, such a hypothesis is recited, "
            "not heard. CER, other speech: the set decoded again with each utterance given another utterance's "
            "speech (`decode_<tag>/<set>_other_speech`), scored against the set's own references: a run that listens "
            "does far worse than with its own speech, one that recites about as well. '-': not measured"
            + (f" (no `{TRAIN_TEXT}`)." if train_sentences is None else "."),
            "",
            controls,
            "",
        ]
    gates = {run.name: values for run in runs if (values := read_gates(run)) is not None}
    attention = {run.name: data for run in runs if (data := read_speech_attention(run)) is not None}
    doc += [
        "## The paper's claims, checked",
        "Each claim of the paper that these runs can test, on the held-out sets. A difference of corpus-level "
        "scores comes with a paired bootstrap 95 % interval: the set's utterances (every reference utterance, "
        f"a missing hypothesis all deleted) drawn with replacement {RESAMPLES:,} times (seed {SEED}), one draw "
        "for all the runs compared. It holds when the interval is on the claim's side of 0, does not hold when it is on the "
        "other side, and is not significant when it contains 0.",
        "",
        claims_table(claim_rows(runs, points, gates, attention)),
        "",
    ]
    repairs = repairs_table(runs)
    if repairs:
        doc += [
            "## Parser repairs",
            "Utterances whose generated answer the output parser repaired or flagged (`repaired`), and of them "
            "those with each kind of problem (one utterance may have several kinds).",
            "",
            *repairs,
            "",
        ]
    if listening:
        doc += [
            "## Listening",
            "Validation at the last epoch, teacher-forced. Accuracy on every target token, and on the current "
            "utterance's alone (long form: after the history's transcripts; checkpoints are chosen and averaged "
            "on it). Speech reliance: the loss (nats a token) with each utterance given another utterance's "
            "speech (rolled within the batch) minus the loss with its own; a model that does not listen has "
            "none.",
            "",
            listening,
            "",
        ]
    if points:
        png = plot_dir / "history_sweep.png"
        plot_sweep(points, png)
        doc += [
            "## History sweep",
            "The long and CoT phases trained again with K history utterances (run.sh --history_sweep; each from the "
            "short phase, CoT from the long run of its K): CER in %, NER micro F1 in %.",
            "",
            sweep_table(points),
            "",
            f"![CER and NER F1 against K]({os.path.relpath(png, out.parent)})",
            "",
        ]
    doc += figure2(runs, out, plot_dir)
    for run in runs:
        doc += [f"## {run.name}", f"- exp dir: `{os.path.relpath(run.path, out.parent)}`"]
        config = run.path / "config.yaml"
        if config.exists():
            doc.append(f"- config: `{os.path.relpath(config, out.parent)}`")
        tuning = run.path / "ctc_weight_tuning"
        if tuning.is_dir():  # the Conformer's CTC weight, chosen on the validation set (local/conformer.sh)
            valid_set = next(tuning.glob("ctc*/*/cer")).parent.name
            cers = ctc_weight_tuning.tried_weights(tuning, valid_set)
            tried = ", ".join(f"{w}: {cer:.1f} %" for w, cer in sorted(cers.items(), key=lambda i: float(i[0])))
            doc.append(f"- decoded with CTC weight {ctc_weight_tuning.choose(cers)}, the lowest validation CER of "
                       f"those tried ({tried})")
        options = decoding_options(run, expdir.resolve().parent)
        doc.append(f"- decoding: `{run.decoding}` ({options.config}, beam {options.beam}, model {options.model}); "
                   "the latest of its decodings, each a row of the CER table")
        if run.cer:
            doc += ["", "### CER", "", ESPNET_TABLE_HEADER]
            doc += [d.cer[s].counts.table_row(f"{d.decoding}/{s}")
                    for d in decodings if d.path == run.path for s in _sorted_sets(d.cer)]
            doc += not_decoded_notes(run)
        for s in _sorted_sets(run.ner):
            doc += ["", f"### NER ({s})", ""] + _ner_tables(run.ner[s])

        figures = []
        stats = stats_of.get(run.name, {})
        if stats:
            png = plot_dir / f"{run.name.replace('/', '_')}_curves.png"
            plot_training_curves(run, stats, png)
            figures.append(f"![{run.name} training curves]({os.path.relpath(png, out.parent)})")
        if (gates := read_gates(run)) is not None:
            png = plot_dir / f"{run.name.replace('/', '_')}_gates.png"
            plot_gate_values(run, gates["layers"], gates["gates"], png)
            figures.append(f"![{run.name} gate values]({os.path.relpath(png, out.parent)})")
        if (run.path / "images").is_dir():
            pngs = sorted(p.name for p in (run.path / "images").glob("*.png"))
            if pngs:
                figures.append(f"ESPnet's per-metric plots: `{os.path.relpath(run.path / 'images', out.parent)}/` "
                               f"({', '.join(pngs)})")
        if figures:
            doc += ["", "### Training"] + ["", *figures]
        doc.append("")
    out.write_text("\n".join(doc), encoding="utf-8")
    return summary
