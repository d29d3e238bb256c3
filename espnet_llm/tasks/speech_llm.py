"""The speech LLM task: ESPnet's AbsTask built from YAML, with ESPnet's trainer, iterators and collate.

``conf/train_*.yaml`` chooses ``model`` (decoder_only | encoder_decoder | hybrid: both at once), ``speech_encoder`` (whisper: audio
through the frozen encoder; whisper_cached: its output dumped by espnet_llm.bin.dump_whisper_features, read as
``feats.scp,speech,kaldi_ark``),
``speech_adapter`` (frame_stack | none; ESPnet's own ``--adapter`` is its LoRA-for-encoders option), ``llm`` (chatglm3), each with its ``*_conf``, plus ``prompt_task``
(asr_short | asr_long | ner) and ``num_history`` (K previous utterances for the long-form tasks).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch
from espnet2.tasks.abs_task import AbsTask
from espnet2.torch_utils.model_summary import model_summary
from espnet2.train.abs_espnet_model import AbsESPnetModel
from espnet2.train.class_choices import ClassChoices
from espnet2.train.collate_fn import CommonCollateFn
from espnet2.train.dataset import ESPnetDataset
from espnet2.utils.nested_dict_action import NestedDictAction
from espnet2.utils.yaml_no_alias_safe_dump import yaml_no_alias_safe_dump
from torch.utils.data import DataLoader

from espnet_llm.llm.lora_llm import ChatGLM3LLM
from espnet_llm.models.adapter import FrameStackAdapter
from espnet_llm.models.decoder_only import DecoderOnlySpeechLLM
from espnet_llm.models.encoder_decoder import EncoderDecoderSpeechLLM
from espnet_llm.models.hybrid import HybridSpeechLLM
from espnet_llm.models.param_count import trainable_report
from espnet_llm.models.prompts import TASKS, PromptLayout
from espnet_llm.speech.cached_encoder import CachedWhisperFeatures
from espnet_llm.speech.whisper_encoder import WhisperArchitecture, WhisperSpeechEncoder
from espnet_llm.tasks.config_checks import check_numbers
from espnet_llm.tasks.phase_trainer import PhaseTrainer, plan_cycle
from espnet_llm.tasks.preprocessor import SpeechLLMPreprocessor
from espnet_llm.tasks.speech_loader import open_entry

model_choices = ClassChoices(
    "model",
    classes=dict(decoder_only=DecoderOnlySpeechLLM, encoder_decoder=EncoderDecoderSpeechLLM, hybrid=HybridSpeechLLM),
    type_check=AbsESPnetModel,
    default="decoder_only",
)
speech_encoder_choices = ClassChoices(
    "speech_encoder",
    classes=dict(whisper=WhisperSpeechEncoder, whisper_cached=CachedWhisperFeatures),
    default="whisper",
)
adapter_choices = ClassChoices(
    "speech_adapter", classes=dict(frame_stack=FrameStackAdapter), default="frame_stack", optional=True
)
llm_choices = ClassChoices("llm", classes=dict(chatglm3=ChatGLM3LLM), default="chatglm3")


def llm_model_path(args: argparse.Namespace) -> Path:
    """``llm_conf.model_path``, checked before anything loads it: sentencepiece's error would not name the key."""
    path = (args.llm_conf or {}).get("model_path")
    if not path:
        raise FileNotFoundError("llm_conf.model_path is not set in the training config")
    if not (Path(path) / "tokenizer.model").is_file():
        what = "has no tokenizer.model" if Path(path).is_dir() else "does not exist"
        raise FileNotFoundError(f"llm_conf.model_path: {path} {what} (the recipe's stage 5 prepares the models)")
    return Path(path)


class SpeechLLMTask(AbsTask):
    num_optimizers: int = 1
    class_choices_list = [model_choices, speech_encoder_choices, adapter_choices, llm_choices]
    trainer = PhaseTrainer  # ESPnet's, able to continue the previous phase's optimiser and LR schedule

    @classmethod
    def add_task_arguments(cls, parser: argparse.ArgumentParser):
        group = parser.add_argument_group(description="Task related")
        group.add_argument("--prompt_task", choices=TASKS, default="asr_short", help="what the model is taught")
        group.add_argument(
            "--num_history", type=int, default=0,
            help="previous utterances of the speaker put before the current one (asr_long and ner)",
        )
        group.add_argument(
            "--tokenizer_fingerprint", action=NestedDictAction, default=None,
            help="written by training (the sha256 of the LLM's tokenizer.model and its special-token ids): "
            "a model is built only with the tokenizer it was trained with",
        )
        group.add_argument(
            "--preprocessor_conf", action=NestedDictAction, default=dict(),
            help="SpeechLLMPreprocessor options: sample_rate, max_speech_seconds, random_history (training only)",
        )
        for class_choices in cls.class_choices_list:
            class_choices.add_arguments(group)

    @classmethod
    def build_collate_fn(cls, args, train: bool):
        return CommonCollateFn(float_pad_value=0.0, int_pad_value=-1)

    @classmethod
    def build_preprocess_fn(cls, args, train: bool):
        # Train and valid lists both: ESPnet's collect-stats mode reads both sets with train=False.
        entries = list(args.train_data_path_and_name_and_type) + list(args.valid_data_path_and_name_and_type)
        return cls.preprocessor_for(args, entries, train)

    @classmethod
    def preprocessor_for(cls, args, entries, train: bool = False) -> SpeechLLMPreprocessor:
        layout = PromptLayout(cls.tokenizer(args), args.prompt_task)
        feature_dim = None  # audio; with the cache, (frames, feature_dim) arrays
        if args.speech_encoder == "whisper_cached":
            feature_dim = CachedWhisperFeatures(**args.speech_encoder_conf).output_size()
        conf = dict(args.preprocessor_conf)
        conf["random_history"] = train and conf.get("random_history", False)  # validation and stats: all of it
        return SpeechLLMPreprocessor(layout, entries, num_history=args.num_history, feature_dim=feature_dim, **conf)

    @classmethod
    def tokenizer(cls, args):
        from espnet_llm.llm.tokenizer import ChatGLM3Tokenizer

        return ChatGLM3Tokenizer(str(llm_model_path(args) / "tokenizer.model"))

    @classmethod
    def required_data_names(cls, train: bool = True, inference: bool = False):
        return ("speech",) if inference else ("speech", "text")

    @classmethod
    def optional_data_names(cls, train: bool = True, inference: bool = False):
        return ("text_ner", "history")

    @classmethod
    def build_model(cls, args: argparse.Namespace, load_weights: bool = True) -> AbsESPnetModel:
        """load_weights=False: the architecture only, from the config files (run under the meta device)."""
        llm_model_path(args)
        llm = llm_choices.get_class(args.llm)(**args.llm_conf, load_weights=load_weights)
        check_tokenizer(getattr(args, "tokenizer_fingerprint", None), llm.tokenizer)
        speech_class = speech_encoder_choices.get_class(args.speech_encoder)
        if load_weights or speech_class is CachedWhisperFeatures:  # the cache has no weights to skip
            speech_encoder = speech_class(**args.speech_encoder_conf)
        else:
            speech_encoder = WhisperArchitecture(**args.speech_encoder_conf)
        adapter_class = adapter_choices.get_class(args.speech_adapter)
        adapter = None
        if adapter_class is not None:
            conf = {"output_size": llm.hidden_size, **args.speech_adapter_conf}
            adapter = adapter_class(input_size=speech_encoder.output_size(), **conf)
        layout = PromptLayout(llm.tokenizer, args.prompt_task)
        model = model_choices.get_class(args.model)(speech_encoder, adapter, llm, layout, **args.model_conf)
        model.exempt_from_weight_decay()  # applies where the config sets exclude_weight_decay
        logging.info("trainable parameters:\n" + trainable_report(model))
        return model

    @classmethod
    def main_worker(cls, args: argparse.Namespace):
        check_numbers(args)
        if args.dry_run:
            cls.dry_run(args)
            return
        if args.collect_stats:  # only lengths are collected: ESPnet then builds no model, no LLM is loaded
            args.model_conf = {**args.model_conf, "extract_feats_in_collect_stats": False}
        else:
            plan_cycle(args)
            if args.tokenizer_fingerprint is None:  # recorded in config.yaml; a continued phase checks its own
                args.tokenizer_fingerprint = cls.tokenizer(args).fingerprint()
        super().main_worker(args)

    @classmethod
    def dry_run(cls, args: argparse.Namespace):
        """Build the configured model at its real size on the meta device (no weights read) and report it."""
        logging.basicConfig(level=args.log_level, format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s")
        with torch.device("meta"):
            model = cls.build_model(args, load_weights=False)
        logging.info(model_summary(model))
        output_dir = Path(args.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        with (output_dir / "config.yaml").open("w", encoding="utf-8") as f:
            yaml_no_alias_safe_dump(vars(args), f, indent=4, sort_keys=False)
        logging.info(f"dry run: configuration checked and written to {output_dir / 'config.yaml'}")

    # ---------------------------------------------------------------- data
    @classmethod
    def build_dataset(cls, args, iter_options, keys_to_load=None):
        dataset = super().build_dataset(args, iter_options, keys_to_load)
        return fault_tolerant(dataset)

    @classmethod
    def build_streaming_iterator(
        cls,
        data_path_and_name_and_type,
        preprocess_fn,
        collate_fn,
        key_file: str | None = None,
        batch_size: int = 1,
        dtype=np.float32,
        num_workers: int = 1,
        allow_variable_data_keys: bool = False,
        ngpu: int = 0,
        inference: bool = False,
        mode: str | None = None,
        multi_task_dataset: bool = False,
        utt2length: dict[str, int] | None = None,
    ) -> DataLoader:
        """Batches of utterances in key order (collect-stats), or, given ``utt2length``, of the keys sorted
        by it, longest first, so that a batch holds similar lengths (decoding); tolerant of unreadable audio.

        ESPnet's own streaming dataset reads audio where no error can be caught per utterance, so the
        map-style ESPnetDataset is used, over the keys of key_file (or of the first data file).
        """
        dataset = fault_tolerant(
            ESPnetDataset(data_path_and_name_and_type, preprocess=preprocess_fn, float_dtype=np.dtype(dtype).name)
        )
        cls.check_task_requirements(dataset, allow_variable_data_keys, train=False, inference=inference)
        keys = read_keys(key_file or data_path_and_name_and_type[0][0])
        if utt2length is not None:
            keys = sorted(keys, key=lambda k: -utt2length[k])  # stable: equal lengths keep their order
        batches = [keys[i:i + batch_size] for i in range(0, len(keys), batch_size)]
        return DataLoader(
            dataset, batch_sampler=batches, collate_fn=collate_fn, num_workers=num_workers, pin_memory=ngpu > 0
        )


class TokenizerMismatch(ValueError):
    """A model built with another tokenizer than the one it was trained with."""


def check_tokenizer(trained_with: dict | None, tokenizer) -> None:
    """Refuse a tokenizer other than the one a model was trained with (its token ids would mean other text)."""
    if trained_with is None:
        return
    now = tokenizer.fingerprint()
    if now != trained_with:
        shifted = sorted(k for k, v in now["special_ids"].items() if trained_with.get("special_ids", {}).get(k) != v)
        raise TokenizerMismatch(
            f"{tokenizer.model_file}: sha256 {now['sha256'][:12]}..., but the model was trained with a tokenizer of "
            f"sha256 {str(trained_with.get('sha256'))[:12]}... (tokenizer_fingerprint in its config)"
            + (f"; special-token ids shifted: {' '.join(shifted)}" if shifted else "")
            + ": use the LLM directory the model was trained with"
        )


def read_keys(path: str) -> list[str]:
    """The utterance ids of a key file or scp (first column), in file order."""
    with open(path, encoding="utf-8") as f:
        return [line.split(maxsplit=1)[0] for line in f if line.strip()]


def fault_tolerant(dataset: ESPnetDataset) -> ESPnetDataset:
    """Audio read as the model hears it (any rate and channels); an unreadable audio file, or an utterance the
    feature dump lists as failed, becomes an empty utterance (logged by id, skipped by the model)."""
    path, data_type = dataset.debug_info["speech"]
    dataset.loader_dict["speech"] = open_entry(path, data_type)
    return dataset
