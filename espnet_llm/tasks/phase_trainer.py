"""ESPnet's trainer (safe to kill: ``resumable_trainer``), with a phase that continues the optimiser and LR
schedule of the phase before it, and the speech reliance of validation measured at the last epoch only.

The paper trains three phases, each from the last (short-form ASR, long-form ASR, CoT NER). ESPnet's
``--init_param`` carries the weights only: AdamW's moments start from zero and the warmup climbs back to the
peak LR, a jump of 2-16x over where the previous phase ended. ``--continue_schedule_from <previous exp
dir>/checkpoint.pth`` loads that checkpoint's optimiser and scheduler states instead, so the first step of
the new phase takes the LR the previous one ended at, with its moments. The phase's own ``scheduler_conf``
is then replaced by the previous one's (the schedule goes on, it does not restart). A run stopped and
resumed in this phase resumes from its own checkpoint.pth as usual.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

import torch
from espnet2.train.trainer import TrainerOptions
from espnet2.utils.build_dataclass import build_dataclass

from espnet_llm.tasks.resumable_trainer import ResumableTrainer


@dataclasses.dataclass
class PhaseTrainerOptions(TrainerOptions):
    continue_schedule_from: str | None = None


def continue_schedule(checkpoint: str | Path, optimizers, schedulers) -> None:
    """Load the optimiser and scheduler states of an ESPnet checkpoint.pth (the model's weights are not read)."""
    states = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if len(states.get("optimizers", [])) != len(optimizers):
        raise ValueError(f"{checkpoint}: holds {len(states.get('optimizers', []))} optimiser state(s), "
                         f"this phase has {len(optimizers)}")
    for optimizer, state in zip(optimizers, states["optimizers"]):
        try:
            optimizer.load_state_dict(state)
        except ValueError as error:  # torch names no file
            raise ValueError(f"{checkpoint}: its optimiser state does not fit this phase's trainable "
                             f"parameters ({error}); train both phases with the same model layout") from error
    for scheduler, state in zip(schedulers, states["schedulers"]):
        if scheduler is not None and state is not None:
            scheduler.load_state_dict(state)
    lrs = [group["lr"] for optimizer in optimizers for group in optimizer.param_groups]
    logging.info(f"continuing the optimiser and LR schedule of {checkpoint}: LR {lrs}")


class PhaseTrainer(ResumableTrainer):
    @classmethod
    def validate_one_epoch(cls, model, iterator, reporter, options, distributed_option) -> None:
        """ESPnet's, with the speech LLMs' speech reliance measured at the last epoch only: its second
        teacher-forced pass was a third of a tiny run's validation time, and RESULTS.md reads the last epoch."""
        speech_llm = getattr(model, "module", model)  # under DDP, the model inside
        if hasattr(speech_llm, "measure_speech_reliance"):
            speech_llm.measure_speech_reliance = reporter.get_epoch() == options.max_epoch
        super().validate_one_epoch(model, iterator, reporter, options, distributed_option)

    @classmethod
    def build_options(cls, args: argparse.Namespace) -> PhaseTrainerOptions:
        return build_dataclass(PhaseTrainerOptions, args)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser):
        parser.add_argument(
            "--continue_schedule_from", type=str, default=None,
            help="checkpoint.pth of the previous phase: continue its optimiser state and LR schedule "
                 "(the weights come from --init_param)",
        )

    @classmethod
    def run(cls, model, optimizers, schedulers, train_iter_factory, valid_iter_factory,
            plot_attention_iter_factory, trainer_options, distributed_option) -> None:
        own_checkpoint = Path(trainer_options.output_dir) / "checkpoint.pth"
        resuming = trainer_options.resume and own_checkpoint.exists()
        if trainer_options.continue_schedule_from and not resuming:
            continue_schedule(trainer_options.continue_schedule_from, optimizers, schedulers)
        super().run(model, optimizers, schedulers, train_iter_factory, valid_iter_factory,
                    plot_attention_iter_factory, trainer_options, distributed_option)
