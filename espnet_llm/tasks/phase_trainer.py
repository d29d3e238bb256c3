"""ESPnet's trainer (safe to kill: ``resumable_trainer``), with a phase that continues the optimiser and LR
schedule of the phase before it, the speech reliance of validation measured at the last epoch only, and
``use_amp`` on the CPU.

The paper trains three phases, each from the last (short-form ASR, long-form ASR, CoT NER). ESPnet's
``--init_param`` carries the weights only: AdamW's moments start from zero and the warmup climbs back to the
peak LR, a jump of 2-16x over where the previous phase ended. ``--continue_schedule_from <previous exp
dir>/checkpoint.pth`` loads that checkpoint's optimiser and scheduler states instead, so the first step of
the new phase takes up the schedule at the step the previous one ended at, with its moments. The schedule is
this phase's own ``scheduler_conf`` (the recipe gives every phase of a chain the same one, its
``first_cycle_steps`` spanning the chain: ``speech_llm_runs plan``); only the position on it, the step count,
comes from the previous phase. A run stopped and resumed in this phase resumes from its own checkpoint.pth as
usual.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import warnings
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
            # the step count alone: the previous state also holds its own plan (first_cycle_steps, ...), which
            # would overwrite this phase's. step(n) puts a batch-step scheduler at step n of its own schedule
            # (torch deprecates the argument for epoch schedulers only; these are set per batch).
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="The epoch parameter|Detected call of", category=UserWarning)
                scheduler.step(state["last_epoch"])
    lrs = [group["lr"] for optimizer in optimizers for group in optimizer.param_groups]
    logging.info(f"continuing the optimiser and LR schedule of {checkpoint}: LR {lrs}")


def batches_per_epoch(batch_type: str, batch_size: int, batch_bins: int, shape_files: list[str],
                      sort_in_batch: str, sort_batch: str, accum_grad: int) -> int:
    """The optimiser steps of an epoch: ESPnet's batch sampler over the training shapes (one process; DDP splits
    each batch over the GPUs, so the count holds for any number of them)."""
    from espnet2.samplers.build_batch_sampler import build_batch_sampler

    sampler = build_batch_sampler(type=batch_type, batch_size=batch_size, batch_bins=batch_bins,
                                  shape_files=shape_files, sort_in_batch=sort_in_batch, sort_batch=sort_batch)
    return len(sampler) // accum_grad


def plan_cycle(args: argparse.Namespace) -> None:
    """A cosine cycle whose ``first_cycle_steps`` the config leaves null spans what trains: the recipe sets it for
    a system's chain of phases (``speech_llm_runs plan``); a phase trained on its own gets its own steps, counted
    here. ESPnet's scheduler would otherwise fail on None, or assert without a word on a warmup as long as it."""
    conf = args.scheduler_conf or {}
    if "first_cycle_steps" not in conf:
        return
    if conf["first_cycle_steps"] is None:
        if args.continue_schedule_from:
            raise ValueError(
                f"scheduler_conf.first_cycle_steps is null, and this phase continues the schedule of "
                f"{args.continue_schedule_from}: give --scheduler_conf first_cycle_steps=<the steps of all the phases "
                "of the chain> (run.sh stage 11 counts them)")
        steps = args.max_epoch * batches_per_epoch(args.batch_type, args.batch_size, args.batch_bins,
                                                   args.train_shape_file, args.sort_in_batch, args.sort_batch,
                                                   args.accum_grad)
        logging.info(f"scheduler_conf.first_cycle_steps is null: one cycle over this phase's {steps} steps "
                     f"({args.max_epoch} epochs)")
        args.scheduler_conf = {**conf, "first_cycle_steps": steps}
    cycle, warmup = args.scheduler_conf["first_cycle_steps"], args.scheduler_conf.get("warmup_steps", 0)
    if warmup >= cycle:
        raise ValueError(f"scheduler_conf: warmup_steps {warmup} is not below first_cycle_steps {cycle}: "
                         "the warmup would not end within the cycle; give fewer warmup steps")


def cpu_amp(options):
    """``use_amp`` on the CPU: bf16 autocast, as ESPnet's trainer gives it on a bf16 GPU (its autocast is CUDA's,
    which leaves CPU ops alone: bf16 frozen weights would meet the float32 adapter and cross-attention)."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=options.use_amp and options.ngpu == 0)


class PhaseTrainer(ResumableTrainer):
    @classmethod
    def train_one_epoch(cls, model, iterator, optimizers, schedulers, scaler, reporter, summary_writer, options,
                        distributed_option) -> bool:
        with cpu_amp(options):
            return super().train_one_epoch(model, iterator, optimizers, schedulers, scaler, reporter,
                                           summary_writer, options, distributed_option)

    @classmethod
    def validate_one_epoch(cls, model, iterator, reporter, options, distributed_option) -> None:
        """ESPnet's, with the speech LLMs' speech reliance measured at the last epoch only: its second
        teacher-forced pass was a third of a tiny run's validation time, and RESULTS.md reads the last epoch."""
        speech_llm = getattr(model, "module", model)  # under DDP, the model inside
        if hasattr(speech_llm, "measure_speech_reliance"):
            speech_llm.measure_speech_reliance = reporter.get_epoch() == options.max_epoch
        with cpu_amp(options):
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
