"""What run.sh needs to know of its speech LLM runs, read from their training configs (or, once trained,
from a run's config.yaml), so that the recipe passes paths and reads no YAML itself.

    python -m espnet_llm.bin.speech_llm_runs whisper CONFIG...
        "<model_path> <pad_to_30s>": the one Whisper whose features stage 6 dumps for all of them
    python -m espnet_llm.bin.speech_llm_runs whisper_dim MODEL_PATH
        the width of that Whisper's features (stage 5 makes the tiny one)
    python -m espnet_llm.bin.speech_llm_runs runs --conf_dir DIR --phases "short long cot" [--train_config C]
            [--history_sweep "0 1 2 3 4"] SYSTEM
        a line per run of a speech LLM system, in training order: "<system> <run> <config> <num_history> <from>"
        (num_history: "-" for the config's own; from: the run of the same system it starts from, "-" for none)
    python -m espnet_llm.bin.speech_llm_runs history_check (--history_k K | --utt2history FILE ...) RUN...
        fails, naming what to rerun, when the history of the data cannot hold the runs' num_history
    python -m espnet_llm.bin.speech_llm_runs plan --expdir EXP --fs FS --dumpdir DUMP --train_set SET
            --valid_set SET [--feature_cache MODEL_PATH --feats_dir DIR] RUN...
        a line per run (a line of ``runs``) for stages 10 and 11, its fields separated by tabs: the collect-stats
        directory, the data and input options (of collect-stats and training), and the options of training alone
        (shape files; once the stats exist, the steps of a schedule that spans the phases, where a config leaves
        them null)
    python -m espnet_llm.bin.speech_llm_runs decode_features --feats_dir DIR RUN_DIR/config.yaml SET...
        DIR if the run was trained on cached features (each set's must be there), else nothing
    python -m espnet_llm.bin.speech_llm_runs has_gates RUN_DIR/config.yaml             (prints true or false)
    python -m espnet_llm.bin.speech_llm_runs model RUN_DIR/config.yaml                 (prints its model choice)
"""
from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from espnet_llm.speech.framing import WHISPER_FRAMES_PER_SECOND

MISSING = object()
GATED_MODELS = ("encoder_decoder", "hybrid")  # the models with cross-attention gates (stage 13 exports them)
DATA_ENTRIES = ("text,text,text", "text_ner,text_ner,text", "utt2history,history,text")  # of <dumpdir>/raw/<set>


PREVIOUS_PHASE = {"short": None, "long": "short", "cot": "long"}  # short starts from the pretrained models
SWEPT_PHASES = ("long", "cot")  # the phases with a history, which --history_sweep runs once per K


class ConfigError(ValueError):
    """A config that lacks what the recipe needs, configs that disagree, or an input of theirs not there."""


@dataclass(frozen=True)
class Run:
    """One training run of a speech LLM system: ``<expdir>/<system>/<name>``, trained with ``config`` (its
    num_history replaced by ``num_history`` unless None), from the model of ``<system>/<init_from>`` (None:
    from the pretrained models)."""
    system: str
    name: str
    config: str
    num_history: int | None = None
    init_from: str | None = None

    def line(self) -> str:
        return " ".join([self.system, self.name, self.config, "-" if self.num_history is None else
                         str(self.num_history), self.init_from or "-"])

    @classmethod
    def parse(cls, line: str) -> "Run":
        fields = line.split()
        if len(fields) != 5:
            raise ConfigError(f"not a run line (<system> <run> <config> <num_history> <from>): {line!r}")
        system, name, config, history, init_from = fields
        return cls(system, name, config, None if history == "-" else int(history),
                   None if init_from == "-" else init_from)


def system_runs(system: str, phases: list[str], conf_dir: str, train_config: str | None = None,
                history_sweep: list[int] = ()) -> list[Run]:
    """The runs of a speech LLM system in training order: one per phase (``<phase>``, from the phase before it in
    short -> long -> cot, trained now or before), then for each K of ``history_sweep`` the long and cot phases
    among ``phases`` again with K history utterances (``long_k<K>`` from ``short``, ``cot_k<K>`` from
    ``long_k<K>``)."""
    unknown = [p for p in phases if p not in PREVIOUS_PHASE]
    if unknown:
        raise ConfigError(f"phases {unknown}: the phases are {' '.join(PREVIOUS_PHASE)}")
    config = lambda phase: train_config or f"{conf_dir}/train_{system}_{phase}.yaml"  # noqa: E731
    runs = [Run(system, phase, config(phase), None, PREVIOUS_PHASE[phase]) for phase in phases]
    swept = [p for p in phases if p in SWEPT_PHASES]
    if history_sweep and not swept:
        raise ConfigError(f"--history_sweep runs the phases with a history ({' '.join(SWEPT_PHASES)}), and "
                          f"--llm_phases '{' '.join(phases)}' names neither")
    for k in history_sweep:
        for phase in swept:
            previous = PREVIOUS_PHASE[phase]
            runs.append(Run(system, f"{phase}_k{k}", config(phase), k,
                            previous if previous == "short" else f"{previous}_k{k}"))
    return runs


def num_history(run: Run) -> int:
    """The history utterances a run reads (0 for the short-form task, whatever its config says)."""
    config = load(run.config)
    if config_value(config, run.config, "prompt_task") == "asr_short":
        return 0
    return run.num_history if run.num_history is not None else int(config_value(config, run.config, "num_history"))


def history_check(runs: list[Run], history_k: int | None = None, utt2history: list[str] = ()) -> None:
    """The data's history must hold as many utterances as the runs read: ``history_k`` when the data stages make
    it now, else the longest history a line of each ``utt2history`` holds."""
    needed = max((num_history(run) for run in runs), default=0)
    if history_k is not None and history_k < needed:
        raise ConfigError(f"--history_k {history_k}: the runs read up to {needed} history utterances "
                          f"({', '.join(f'{r.system}/{r.name}' for r in runs if num_history(r) > history_k)}): "
                          f"use --history_k {needed}")
    for path in utt2history:
        if not Path(path).is_file():
            raise ConfigError(f"{path} not found: run the data stages (1-4) first")
        held = max((len(line.split()) - 1 for line in Path(path).read_text(encoding="utf-8").splitlines()),
                   default=0)
        if held < needed:
            raise ConfigError(f"{path} holds at most {held} history utterances, and the runs read up to {needed}: "
                              f"run the data stages again from stage 1 with --history_k {needed}")


def config_value(config: dict, path: str, name: str, default=MISSING):
    """The value at ``name`` ("key.subkey") of a loaded config; absent or null: ``default``, else an error."""
    node = config
    for key in name.split("."):
        if not isinstance(node, dict) or node.get(key) is None:
            if default is MISSING:
                raise ConfigError(f"{path}: {name} not found")
            return default
        node = node[key]
    return node


def load(path: str | Path) -> dict:
    return yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}


def shell_word(value) -> str:
    """A value as the recipe's options spell it (booleans as YAML does)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def feature_whisper(configs: list[str]) -> tuple[str, str] | None:
    """(model_path, pad_to_30s) of the Whisper in every config's speech_encoder_conf; they must agree, since
    stage 6 dumps one Whisper's features for all of them. None without configs."""
    chosen = None
    for path in configs:
        config = load(path)
        model = shell_word(config_value(config, path, "speech_encoder_conf.model_path", ""))
        pad = shell_word(config_value(config, path, "speech_encoder_conf.pad_to_30s", False))
        if not model:
            raise ConfigError(f"{path} names no speech_encoder_conf model_path, "
                              f"the Whisper whose features stage 6 dumps")
        if chosen is None:
            chosen = (path, model, pad)
        elif (model, pad) != chosen[1:]:
            raise ConfigError(
                f"--use_feature_cache true dumps one Whisper's features for every speech LLM, but the "
                f"speech_encoder_conf of {chosen[0]} is model_path {chosen[1]}, pad_to_30s {chosen[2]} and that of "
                f"{path} is model_path {model}, pad_to_30s {pad}: make them agree, select the runs of one Whisper "
                f"(--systems, --llm_phases), or use --use_feature_cache false")
    return None if chosen is None else chosen[1:]


def whisper_dim(model_path: str) -> int:
    """d_model of a Whisper (config.json, a CTranslate2 directory or an OpenAI .pt checkpoint's dims)."""
    if not Path(model_path).exists():
        raise ConfigError(f"{model_path} (speech_encoder_conf model_path) not found: stage 5 makes the tiny one; "
                          f"put the full one there (openai/whisper-large-v2)")
    config = Path(model_path) / "config.json"  # transformers' has d_model: read without importing it (4 s)
    if config.is_file() and "d_model" in (fields := json.loads(config.read_text())):
        return int(fields["d_model"])
    from espnet_llm.speech.whisper_encoder import whisper_config  # torch and transformers: only when asked

    return whisper_config(model_path).d_model


def stats_dir(config: dict, path: str, expdir: str, feature_cache: bool, history: int | None = None) -> str:
    """Where a run's collect-stats output goes. A speech LLM's shapes depend only on its task, its history
    (``history``, or the config's num_history) and its tokenizer (and on its input: audio, or cached features),
    so runs that share these (the same phase of both architectures) share the stats."""
    task = config_value(config, path, "prompt_task")
    if history is None:
        history = config_value(config, path, "num_history")
    llm = Path(str(config_value(config, path, "llm_conf.model_path"))).name
    return f"{expdir}/stats/{task}_history{history}_{llm}{'_whisper_feats' if feature_cache else ''}"


def cached_train_opts(config: dict, path: str, dim: int, fs: int) -> list[str]:
    """The training options of a speech LLM on the cached features of a Whisper ``dim`` values wide."""
    # The YAML's speech_encoder_conf (model_path, pad_to_30s) stays: whisper_cached takes the same arguments.
    opts = ["--speech_encoder", "whisper_cached", "--speech_encoder_conf", f"output_size={dim}"]
    batch_type = config_value(config, path, "batch_type", "folded")
    batch_bins = int(config_value(config, path, "batch_bins", 1000000))
    # ESPnet's numel batches count the elements of every input: a second of speech is fs audio samples, but
    # 50 frames x D values as features (x4 for Whisper-large-v2's D=1280, x1.6 for Whisper base's D=512).
    # batch_bins is scaled by 50*D/fs so that a batch holds about as many utterances as on the audio (the
    # target tokens, counted too, are few); a --batch_bins in --train_args comes later and wins.
    if batch_type == "numel":
        opts += ["--batch_bins", str(batch_bins * WHISPER_FRAMES_PER_SECOND * dim // fs)]
    elif batch_type == "length":  # frames instead of samples
        opts += ["--batch_bins", str(batch_bins * WHISPER_FRAMES_PER_SECOND // fs)]
    return opts  # batch_size: the same


def data_opts(dumpdir: str, train_set: str, valid_set: str, feats_dir: str | None) -> list[str]:
    """The training and validation data: the audio (or its cached features), the transcript with and
    without entity marks (the NER task reads the marked one), and the ids of each utterance's history."""
    opts = []
    for part, dset in (("train", train_set), ("valid", valid_set)):
        if feats_dir:  # (frames, D) float16 arrays, read as float32
            speech = f"{feats_dir}/{dset}/feats.scp,speech,kaldi_ark"
        else:
            speech = f"{dumpdir}/raw/{dset}/wav.scp,speech,sound"
        for entry in (speech, *(f"{dumpdir}/raw/{dset}/{e}" for e in DATA_ENTRIES)):
            opts += [f"--{part}_data_path_and_name_and_type", entry]
    return opts


def steps_per_epoch(config: dict, path: str, stats: str, batch_bins: int) -> int:
    """The optimiser steps of an epoch of a run, as its training counts them (ESPnet's defaults where unset)."""
    from espnet_llm.tasks.phase_trainer import batches_per_epoch

    return batches_per_epoch(
        config_value(config, path, "batch_type", "folded"), int(config_value(config, path, "batch_size", 20)),
        batch_bins, [f"{stats}/train/speech_shape", f"{stats}/train/text_shape"],
        config_value(config, path, "sort_in_batch", "descending"), config_value(config, path, "sort_batch", "ascending"),
        int(config_value(config, path, "accum_grad", 1)))


def schedule_steps(runs: list[tuple[Run, dict, str, int]]) -> dict[Run, int]:
    """runs: (run, config, stats dir, batch_bins). For each system whose configs leave the ``first_cycle_steps`` of
    their schedule null: the steps of all the phases of one chain (short -> long -> cot, or short -> long_k<K> ->
    cot_k<K> of a history sweep), so that one warmup-and-decay spans them (each phase continues the previous one's
    schedule). Nothing while any of their stats is missing. By system, not by model: two systems of one model
    (encoder_decoder with static and with dynamic gates) train apart."""
    totals: dict[Run, int] = {}
    chains: dict[tuple, list] = {}
    for item in runs:
        run = item[0]
        chains.setdefault((run.system, run.num_history), []).append(item)
    for (system, history), group in chains.items():
        if history is not None:  # a sweep's chain starts from the short phase too
            group = [item for item in chains.get((system, None), []) if item[0].init_from is None] + group
        if not any("first_cycle_steps" in (config.get("scheduler_conf") or {})
                   and config["scheduler_conf"]["first_cycle_steps"] is None for _, config, _, _ in group):
            continue
        if not all(Path(f"{stats}/train/speech_shape").is_file() for _, _, stats, _ in group):
            continue
        total = sum(int(config_value(config, run.config, "max_epoch")) * steps_per_epoch(config, run.config, stats, bins)
                    for run, config, stats, bins in group)
        for run, _, _, _ in group:
            if run.num_history == history:  # the short phase keeps the total of its own chain
                totals[run] = total
    return totals


def train_overrides(train_args: str) -> dict:
    """The training options given after every config (run.sh's --train_args), as ESPnet's parser reads them: a
    ``--<name>_conf key=value`` gives one key of the mapping."""
    if not train_args.strip():
        return {}
    from espnet_llm.tasks.speech_llm import SpeechLLMTask

    parser = SpeechLLMTask.get_parser()
    for action in parser._actions:  # only what is given (ESPnet's parser reads a --config of its own)
        if action.dest != "config":
            action.default = argparse.SUPPRESS
    given = vars(parser.parse_known_args(shlex.split(train_args))[0])
    given.pop("config", None)
    return given


def with_overrides(config: dict, overrides: dict) -> dict:
    """The config as its training reads it, the overrides after it (a mapping merged key by key)."""
    merged = dict(config)
    for key, value in overrides.items():
        both_mappings = isinstance(value, dict) and isinstance(config.get(key), dict)
        merged[key] = {**config[key], **value} if both_mappings else value
    return merged


def plan(llm_runs: list[Run], args: argparse.Namespace) -> list[str]:
    """The fields of ``plan`` per run, in their order."""
    dim = whisper_dim(args.feature_cache) if args.feature_cache else None
    overrides = train_overrides(args.train_args)
    runs, fields = [], []
    for run in llm_runs:
        path = run.config
        config = with_overrides(load(path), overrides)
        stats = stats_dir(config, path, args.expdir, dim is not None, run.num_history)
        opts = data_opts(args.dumpdir, args.train_set, args.valid_set, args.feats_dir if dim else None)
        if run.num_history is not None:  # after --config: the sweep's K replaces the config's
            opts += ["--num_history", str(run.num_history)]
        batch_bins = int(config_value(config, path, "batch_bins", 1000000))
        if dim:
            cached = cached_train_opts(config, path, dim, args.fs)
            opts += cached
            if "--batch_bins" in cached and "batch_bins" not in overrides:
                batch_bins = int(cached[cached.index("--batch_bins") + 1])
        training = [f"--{part}_shape_file {stats}/{part}/{shape}" for part in ("train", "valid")
                    for shape in ("speech_shape", "text_shape")]
        runs.append((run, config, stats, batch_bins))
        fields.append([stats, " ".join(opts), training])
    totals = schedule_steps(runs)
    for (run, *_), field in zip(runs, fields):
        total = totals.get(run)
        if total is not None:
            field[2].append(f"--scheduler_conf first_cycle_steps={total}")
    return ["\t".join([stats, opts, " ".join(training)]) for stats, opts, training in fields]


def decode_features(run_config: str, feats_dir: str, sets: list[str]) -> str | None:
    """The features a trained run decodes: ``feats_dir`` if it was trained on them, else None (the audio)."""
    if load(run_config).get("speech_encoder") != "whisper_cached":
        return None
    for dset in sets:
        if not Path(f"{feats_dir}/{dset}/feats.scp").is_file():
            raise ConfigError(f"{run_config} was trained on cached Whisper features, and {feats_dir}/{dset}/feats.scp "
                              f"is not there: run stage 6 with this set in --test_sets")
    return feats_dir


def answer_to(args: argparse.Namespace) -> str | None:
    """What ``main`` prints for a question (None: nothing, a check that passed)."""
    if args.question == "whisper":
        whisper = feature_whisper(args.configs)
        return " ".join(whisper) if whisper else ""
    if args.question == "whisper_dim":
        return str(whisper_dim(args.model_path))
    if args.question == "runs":
        sweep = args.history_sweep.split()
        if not all(k.isdigit() for k in sweep):
            raise ConfigError(f"--history_sweep '{args.history_sweep}': must be whole numbers, e.g. \"0 1 2 3 4\"")
        runs = system_runs(args.system, args.phases.split(), args.conf_dir, args.train_config or None,
                           [int(k) for k in sweep])
        return "\n".join(run.line() for run in runs)
    if args.question == "history_check":
        history_check([Run.parse(line) for line in args.runs], args.history_k, args.utt2history)
        return None
    if args.question == "plan":
        return "\n".join(plan([Run.parse(line) for line in args.runs], args))
    if args.question == "decode_features":
        return decode_features(args.run_config, args.feats_dir, args.sets) or ""
    if args.question == "model":
        return load(args.run_config).get("model", "")
    return shell_word(load(args.run_config).get("model") in GATED_MODELS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m espnet_llm.bin.speech_llm_runs",
                                     description=__doc__.split("\n")[0])
    questions = parser.add_subparsers(dest="question", required=True)
    questions.add_parser("whisper").add_argument("configs", nargs="*")
    questions.add_parser("whisper_dim").add_argument("model_path")
    runs_parser = questions.add_parser("runs")
    runs_parser.add_argument("--conf_dir", required=True)
    runs_parser.add_argument("--phases", required=True, help="space-separated, among short long cot")
    runs_parser.add_argument("--train_config", default="", help="the config of every run (for one run)")
    runs_parser.add_argument("--history_sweep", default="", help="space-separated numbers of history utterances")
    runs_parser.add_argument("system")
    check_parser = questions.add_parser("history_check")
    check_parser.add_argument("--history_k", type=int, help="the history that the data stages write now")
    check_parser.add_argument("--utt2history", action="append", default=[], help="the history the data holds "
                              "(repeated: a file each)")
    check_parser.add_argument("runs", nargs="*", help="lines of `runs`")
    plan_parser = questions.add_parser("plan")
    plan_parser.add_argument("--expdir", required=True)
    plan_parser.add_argument("--fs", type=int, required=True)
    plan_parser.add_argument("--dumpdir", required=True)
    plan_parser.add_argument("--train_set", required=True)
    plan_parser.add_argument("--valid_set", required=True)
    plan_parser.add_argument("--feature_cache", metavar="MODEL_PATH", help="the runs train on this Whisper's features")
    plan_parser.add_argument("--feats_dir", help="the features: <feats_dir>/<set>/feats.scp")
    plan_parser.add_argument("--train_args", default="", help="run.sh's --train_args: they follow the config")
    plan_parser.add_argument("runs", nargs="*", help="lines of `runs`")
    decode_parser = questions.add_parser("decode_features")
    decode_parser.add_argument("--feats_dir", required=True)
    decode_parser.add_argument("run_config")
    decode_parser.add_argument("sets", nargs="+")
    questions.add_parser("has_gates").add_argument("run_config")
    questions.add_parser("model").add_argument("run_config")
    args = parser.parse_args(argv)
    try:
        # stdout is the answer run.sh reads: what the libraries print on import (ESPnet's trainer does) goes to stderr
        with contextlib.redirect_stdout(sys.stderr):
            answer = answer_to(args)
        if answer is not None:
            print(answer)
    except ConfigError as error:
        print(f"Error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
