"""Noise schedules and respaced timestep sequences (the subset of the 1000 training steps we sample at)."""

import math

import numpy as np
import torch

BETA_SCHEDULES = ("linear", "cosine")
DIFFUSERS_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SCHEDULE_RTOL = 1e-4  # two tables this close in ᾱ are one schedule (float32 vs float64 builds differ by ~1e-5)
RESPACE_TYPES = ("uniform", "uniform-leading", "uniform-linspace", "uniform-trailing", "quad", "logsnr", "none")


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


def diffusers_alphas_cumprod(beta_schedule: str, total_steps: int, beta_start: float = 0.0001,
                             beta_end: float = 0.02, trained_betas=None) -> torch.Tensor:
    """ᾱ exactly as diffusers' DDPM/DDIM schedulers build it (betas and their product in float32),
    returned as float64 so the solvers read the very values diffusers steps with. Its ``linear`` is
    not guided-diffusion's: beta_start/beta_end are taken as given (no 1000/T scaling), in float32."""
    if trained_betas is not None:
        betas = torch.tensor(trained_betas, dtype=torch.float32)
    elif beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, total_steps, dtype=torch.float32)
    elif beta_schedule == "scaled_linear":  # linear in √β: latent diffusion's schedule
        betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, total_steps, dtype=torch.float32) ** 2
    elif beta_schedule == "squaredcos_cap_v2":  # the cosine schedule, β capped at 0.999
        def alpha_bar(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = torch.tensor([min(1 - alpha_bar((i + 1) / total_steps) / alpha_bar(i / total_steps), 0.999)
                              for i in range(total_steps)], dtype=torch.float32)
    else:
        raise ValueError(f"unknown diffusers beta_schedule {beta_schedule!r}; choose one of "
                         f"{', '.join(DIFFUSERS_BETA_SCHEDULES)} or give trained_betas")
    return torch.cumprod(1.0 - betas, dim=0).double()


def schedule_alphas(section: dict) -> torch.Tensor:
    """ᾱ of a config's ``diffusion`` section: diffusers' float32 table for a diffusers scheduler
    (``source: diffusers``), guided-diffusion's float64 one otherwise. Each family is sampled with
    the table it was trained with, so each reproduces its own library's numbers."""
    if section.get("source") == "diffusers":
        return diffusers_alphas_cumprod(section["beta_schedule"], section["total_steps"], section["beta_start"],
                                        section["beta_end"], section.get("trained_betas"))
    return alphas_cumprod(section["beta_schedule"], section["total_steps"])


def schedules_differ(a: torch.Tensor, b: torch.Tensor, rtol: float = SCHEDULE_RTOL):
    """None when two ᾱ tables are one schedule (same length, within ``rtol`` relative), else the
    largest relative difference (inf for different lengths)."""
    if len(a) != len(b):
        return math.inf
    worst = ((a - b).abs() / torch.minimum(a, b)).max().item()
    return None if worst <= rtol else worst


def log_snr(alphas_cumprod) -> np.ndarray:
    """λ_t = log(α_t/σ_t) with α = √ᾱ, σ = √(1−ᾱ): the time variable in which the ODE's exponential
    integrators (DPM-Solver) are exact for a constant x₀ prediction."""
    ac = np.asarray(alphas_cumprod, dtype=np.float64)
    return 0.5 * (np.log(ac) - np.log1p(-ac))


def _distinct(ts: list, top: int) -> list:
    """Rounded timesteps closer than one step apart pushed apart: up from the start, then down from
    ``top`` where pushing up overshot it."""
    for i in range(1, len(ts)):
        ts[i] = max(ts[i], ts[i - 1] + 1)
    ts[-1] = min(ts[-1], top)
    for i in range(len(ts) - 2, -1, -1):
        ts[i] = min(ts[i], ts[i + 1] - 1)
    return ts


def respace(kind: str, total_steps, steps: int, t_end=None) -> list:
    """The increasing training timesteps a sampler visits. ``total_steps``: the schedule's length, or
    the schedule itself (its ᾱ, one per training step), which logsnr spacing needs.

    uniform / uniform-leading: 0, s, 2s, … with s = total_steps // steps (guided-diffusion's ``ddimN``
    where steps divides total_steps); uniform-linspace: round(linspace(0, T−1, steps));
    uniform-trailing: T−1, T−1−T/steps, … (ends at the last step); quad: the DDIM paper's quadratic
    spacing up to 0.8·T, dense near t = 0 (steps closer than 1 apart are pushed up to stay distinct);
    logsnr: uniform in log-SNR λ = log(α/σ) between t = 0 and uniform's last step (needs the
    schedule): the step sizes higher-order solvers are built for; none: every
    step (``steps`` is ignored).

    ``t_end`` makes the last timestep (where an inversion stops) explicit instead of what the spacing
    gives: the uniform types and quad then spread their points over [0, t_end], uniform-trailing ends
    there, none visits 0…t_end. None (default) keeps each spacing as it was.
    """
    schedule = None
    if not isinstance(total_steps, (int, np.integer)):
        schedule, total_steps = total_steps, len(total_steps)
    if kind not in RESPACE_TYPES:
        raise ValueError(f"unknown respace type {kind!r}; choose one of {', '.join(RESPACE_TYPES)}")
    if t_end is not None and not 0 < t_end < total_steps:
        raise ValueError(f"t_end must be between 1 and total_steps - 1 = {total_steps - 1}, got {t_end}")
    if kind == "none":
        return list(range(total_steps if t_end is None else t_end + 1))
    if not 1 <= steps <= total_steps:
        raise ValueError(f"respace steps must be between 1 and total_steps={total_steps}, got {steps}")
    if t_end is not None and steps > t_end + 1:
        raise ValueError(f"{steps} distinct timesteps do not fit in 0…t_end={t_end}")
    if t_end is None and kind in ("uniform", "uniform-leading", "logsnr"):
        ts = np.arange(steps) * (total_steps // steps)
    elif kind in ("uniform", "uniform-leading", "uniform-linspace"):
        ts = np.round(np.linspace(0, total_steps - 1 if t_end is None else t_end, steps))
    elif kind == "uniform-trailing":
        end = total_steps if t_end is None else t_end + 1
        ts = np.round(np.arange(end, 0, -end / steps))[:steps][::-1] - 1
    elif kind == "quad":
        ts = np.linspace(0, math.sqrt(total_steps * 0.8 if t_end is None else t_end), steps) ** 2
        if t_end is not None:
            ts = np.round(ts)
    else:  # logsnr with t_end
        ts = np.array([0, t_end])
    if kind == "logsnr":
        if schedule is None:
            raise ValueError("respace type 'logsnr' needs the noise schedule (its ᾱ), not just its length")
        top = int(ts[-1])
        lam = log_snr(schedule[:top + 1])
        # λ falls with t: interpolate t over -λ, which rises
        ts = np.round(np.interp(-np.linspace(lam[0], lam[top], steps), -lam, np.arange(top + 1)))
    ts = [int(t) for t in ts]
    if kind in ("quad", "logsnr"):  # where points crowd closer than one step apart, keep them distinct
        ts = _distinct(ts, total_steps - 1 if t_end is None and kind == "quad" else ts[-1])
    if any(b <= a for a, b in zip(ts, ts[1:])) or ts[0] < 0:
        raise ValueError(f"respace type {kind!r} with {steps} of {total_steps} steps repeats timesteps; "
                         "use fewer steps or another type")
    return ts
