"""A phase continues the previous phase's optimiser and LR schedule (--continue_schedule_from)."""
from __future__ import annotations

import pytest
import torch
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
    # the next phase, as its YAML builds it: a new AdamW and a short new warmup; left alone, its second step
    # would be back at the peak LR, 1.7x where phase 1 ended
    fresh = torch.nn.Linear(3, 2)
    restarted = train(fresh, *phase(fresh, warmup_steps=2), 2)
    assert restarted[1] == pytest.approx(0.002) and restarted[1] > 1.7 * first[-1]
    optimizer2, scheduler2 = phase(model, warmup_steps=2)
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
