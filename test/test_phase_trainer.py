"""A phase continues the previous phase's optimiser and LR schedule (--continue_schedule_from)."""
from __future__ import annotations

import math

import pytest
import torch
from espnet2.schedulers.cosine_anneal_warmup_restart import CosineAnnealingWarmupRestarts
from espnet2.schedulers.warmup_lr import WarmupLR

from espnet_llm.tasks.phase_trainer import continue_schedule


def phase(model, warmup_steps):
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.002)
    return optimizer, WarmupLR(optimizer, warmup_steps=warmup_steps)


def train(model, optimizer, scheduler, steps):
    """As ESPnet's trainer: an optimiser step, then a scheduler step; returns the LR each step used."""
    used = []
    for _ in range(steps):
        used.append(optimizer.param_groups[0]["lr"])
        model(torch.randn(4, 3)).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
    return used


def test_the_next_phase_takes_up_the_lr_and_moments_where_the_last_ended(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer, scheduler = phase(model, warmup_steps=10)
    first = train(model, optimizer, scheduler, 30)
    torch.save({"optimizers": [optimizer.state_dict()], "schedulers": [scheduler.state_dict()]}, tmp_path / "checkpoint.pth")
    # the next phase, as its YAML builds it: a new AdamW and the same schedule; left alone, it would warm up
    # again from zero
    fresh = torch.nn.Linear(3, 2)
    restarted = train(fresh, *phase(fresh, warmup_steps=10), 2)
    assert restarted[1] < 0.4 * first[-1]
    optimizer2, scheduler2 = phase(model, warmup_steps=10)
    continue_schedule(tmp_path / "checkpoint.pth", [optimizer2], [scheduler2])
    second = train(model, optimizer2, scheduler2, 2)
    # the LR goes on along phase 1's decay: step 31 of the same Noam curve, just below the last one
    assert second[0] == pytest.approx(0.002 * 10 ** 0.5 * 31 ** -0.5) and first[-1] > second[0] > second[1]
    assert second[0] / first[-1] == pytest.approx((30 / 31) ** 0.5)
    assert optimizer2.state_dict()["state"][0]["step"] == 32


def test_a_checkpoint_of_another_layout_is_refused_by_name(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer, scheduler = phase(model, 10)
    train(model, optimizer, scheduler, 1)
    torch.save({"optimizers": [optimizer.state_dict()], "schedulers": [scheduler.state_dict()]}, tmp_path / "checkpoint.pth")
    other, other_scheduler = phase(torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2)), 10)
    with pytest.raises(ValueError, match="checkpoint.pth: its optimiser state does not fit"):
        continue_schedule(tmp_path / "checkpoint.pth", [other], [other_scheduler])


def test_the_next_phase_keeps_its_own_planned_cycle_length(tmp_path):
    """The recipe plans one cosine cycle over a chain's phases (first_cycle_steps, by chain: a history sweep's
    K = 4 chain is longer than the main one whose short phase it starts from). The continued phase takes the
    step count of the previous one and its own cycle: no restart inside it, and it ends at min_lr."""
    def cosine(model, cycle):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        return optimizer, CosineAnnealingWarmupRestarts(optimizer, first_cycle_steps=cycle, warmup_steps=5,
                                                        max_lr=1e-4, min_lr=1e-5)

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer, scheduler = cosine(model, cycle=100)  # the short phase, planned for the main chain
    train(model, optimizer, scheduler, 40)
    torch.save({"optimizers": [optimizer.state_dict()], "schedulers": [scheduler.state_dict()]}, tmp_path / "checkpoint.pth")
    optimizer2, scheduler2 = cosine(model, cycle=200)  # long_k4 and cot_k4: 160 steps more
    continue_schedule(tmp_path / "checkpoint.pth", [optimizer2], [scheduler2])
    assert scheduler2.first_cycle_steps == 200
    used = train(model, optimizer2, scheduler2, 160)
    expected_first = 1e-5 + (1e-4 - 1e-5) * (1 + math.cos(math.pi * (40 - 5) / (200 - 5))) / 2
    assert used[0] == pytest.approx(expected_first)
    assert all(b <= a for a, b in zip(used, used[1:]))  # decays throughout: no second warmup
    assert used[-1] == pytest.approx(1e-5, rel=1e-3)
