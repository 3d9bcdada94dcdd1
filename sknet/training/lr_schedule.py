"""Per-step learning-rate schedules, computed up front (MindSpore takes the array as a dynamic lr)."""

from __future__ import annotations

import math

import numpy as np


def learning_rates(
    schedule: str,
    *,
    base_lr: float,
    total_steps: int,
    steps_per_epoch: int,
    warmup_epochs: float = 0.0,
    warmup_start_lr: float = 0.0,
    end_lr: float = 0.0,
    poly_power: float = 2.0,
) -> np.ndarray:
    """One lr per step: linear warm-up from `warmup_start_lr` to `base_lr`, then the schedule's decay.

    `warmup_poly` (the zoo's): lr = end + (base − end)·(1 − t)^power; `cosine`: end + (base − end)·(1 + cos πt)/2;
    `constant`: base. t runs from 0 to 1 over the steps after warm-up.
    """
    warmup = min(int(round(warmup_epochs * steps_per_epoch)), total_steps)
    rates = np.empty(total_steps, dtype=np.float32)
    for step in range(total_steps):
        if step < warmup:
            rates[step] = warmup_start_lr + (base_lr - warmup_start_lr) * step / warmup
            continue
        t = (step - warmup) / max(1, total_steps - warmup)
        if schedule == "warmup_poly":
            rates[step] = end_lr + (base_lr - end_lr) * (1.0 - t) ** poly_power
        elif schedule == "cosine":
            rates[step] = end_lr + (base_lr - end_lr) * 0.5 * (1.0 + math.cos(math.pi * t))
        elif schedule == "constant":
            rates[step] = base_lr
        else:
            raise ValueError(f"unknown lr schedule {schedule!r}: expected warmup_poly, cosine or constant")
    return rates
