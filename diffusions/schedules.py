"""Noise schedules and respaced timestep sequences (the subset of the 1000 training steps we sample at)."""

import math

import numpy as np
import torch

BETA_SCHEDULES = ("linear", "cosine")
RESPACE_TYPES = ("uniform", "uniform-leading", "uniform-linspace", "uniform-trailing", "quad", "none")


def get_betas(schedule: str, total_steps: int) -> np.ndarray:
    """β₁…β_T in float64, exactly as guided-diffusion builds them."""
    if schedule == "linear":
        scale = 1000 / total_steps  # keeps the schedule's shape for any T, as in the reference
        return np.linspace(scale * 1e-4, scale * 0.02, total_steps, dtype=np.float64)
    if schedule == "cosine":
        def alpha_bar(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        return np.array([min(1 - alpha_bar((i + 1) / total_steps) / alpha_bar(i / total_steps), 0.999)
                         for i in range(total_steps)], dtype=np.float64)
    raise ValueError(f"unknown beta_schedule {schedule!r}; choose one of {', '.join(BETA_SCHEDULES)}")


def alphas_cumprod(schedule: str, total_steps: int) -> torch.Tensor:
    """ᾱ_t = ∏(1 − β) as a float64 tensor: all a DDIM sampler needs from the schedule."""
    return torch.from_numpy(np.cumprod(1.0 - get_betas(schedule, total_steps)))


def respace(kind: str, total_steps: int, steps: int) -> list:
    """The increasing training timesteps a sampler visits.

    uniform / uniform-leading: 0, s, 2s, … with s = total_steps // steps (guided-diffusion's ``ddimN``
    where steps divides total_steps); uniform-linspace: round(linspace(0, T−1, steps));
    uniform-trailing: T−1, T−1−T/steps, … (ends at the last step); quad: the DDIM paper's quadratic
    spacing up to 0.8·T, dense near t = 0 (steps closer than 1 apart are pushed up to stay distinct); none: every step (``steps`` is ignored).
    """
    if kind == "none":
        return list(range(total_steps))
    if kind not in RESPACE_TYPES:
        raise ValueError(f"unknown respace type {kind!r}; choose one of {', '.join(RESPACE_TYPES)}")
    if not 1 <= steps <= total_steps:
        raise ValueError(f"respace steps must be between 1 and total_steps={total_steps}, got {steps}")
    if kind in ("uniform", "uniform-leading"):
        ts = np.arange(steps) * (total_steps // steps)
    elif kind == "uniform-linspace":
        ts = np.round(np.linspace(0, total_steps - 1, steps))
    elif kind == "uniform-trailing":
        ts = np.round(np.arange(total_steps, 0, -total_steps / steps))[:steps][::-1] - 1
    else:  # quad
        ts = np.linspace(0, math.sqrt(total_steps * 0.8), steps) ** 2
    ts = [int(t) for t in ts]
    if kind == "quad":  # near t = 0 the squares are closer than one step apart: keep them distinct
        for i in range(1, len(ts)):
            ts[i] = max(ts[i], ts[i - 1] + 1)  # stays below total_steps: ts[i] <= max(0.8·T, i)
    if any(b <= a for a, b in zip(ts, ts[1:])):
        raise ValueError(f"respace type {kind!r} with {steps} of {total_steps} steps repeats timesteps; "
                         "use fewer steps or another type")
    return ts
