"""ESPnet's trainer, made safe to kill at any moment: a rerun with ``--resume true`` goes on where it stopped.

ESPnet's ``Trainer.run`` writes ``checkpoint.pth``, ``<n>epoch.pth`` and the averaged models with ``torch.save``
straight to their names. A SIGKILL during a save left a truncated ``checkpoint.pth``, which every rerun then failed
to load (torch's error names no file): the run could only start over by hand. Here every save of a file goes to
``<name>.tmp`` and is renamed into place, so a file is either the old one or the new one.

ESPnet saves ``checkpoint.pth`` (the commit of epoch n) before ``<n>epoch.pth``: a kill between the two leaves
epoch n done but its model file missing, and the n-best averaging at the end of the run would fail to read it.
Both hold the same weights, so a resumed run writes ``<n>epoch.pth`` again from the checkpoint.
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import torch
from espnet2.train.trainer import Trainer


@contextlib.contextmanager
def atomic_torch_save():
    """Within it, ``torch.save`` to a path writes ``<path>.tmp`` and renames it (file objects are left as they are)."""
    save = torch.save

    def save_atomically(obj, f, *args, **kwargs):
        if not isinstance(f, (str, os.PathLike)):
            return save(obj, f, *args, **kwargs)
        tmp = f"{os.fspath(f)}.tmp"
        save(obj, tmp, *args, **kwargs)
        os.replace(tmp, f)

    torch.save = save_atomically  # ESPnet's trainer calls torch.save by its module attribute
    try:
        yield
    finally:
        torch.save = save


def restore_epoch_model(output_dir: str | Path) -> None:
    """Write ``<n>epoch.pth`` from ``checkpoint.pth`` (of epoch n) where a kill between the two saves left it missing."""
    checkpoint = Path(output_dir) / "checkpoint.pth"
    if not checkpoint.exists():
        return
    try:
        states = torch.load(checkpoint, map_location="cpu", weights_only=False)
    except Exception as error:  # torch's own message names no file
        raise RuntimeError(f"{checkpoint} cannot be read ({type(error).__name__}: {error}): "
                           f"remove it to train this run from the start") from error
    epoch = states["reporter"]["epoch"]
    model_file = checkpoint.with_name(f"{epoch}epoch.pth")
    if epoch > 0 and not model_file.exists():
        logging.warning(f"{model_file} is missing (the run was killed while saving epoch {epoch}): written again "
                        f"from {checkpoint}")
        with atomic_torch_save():
            torch.save(states["model"], model_file)


class ResumableTrainer(Trainer):
    @classmethod
    def run(cls, model, optimizers, schedulers, train_iter_factory, valid_iter_factory,
            plot_attention_iter_factory, trainer_options, distributed_option) -> None:
        if trainer_options.resume and (not distributed_option.distributed or distributed_option.dist_rank == 0):
            restore_epoch_model(trainer_options.output_dir)
        with atomic_torch_save():
            super().run(model, optimizers, schedulers, train_iter_factory, valid_iter_factory,
                        plot_attention_iter_factory, trainer_options, distributed_option)
