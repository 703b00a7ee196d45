"""ODE solvers of the probability-flow ODE, one short function each, registered by name.

Every solver has one signature, ``solve(denoise, x, path, **options) -> x``:

- ``denoise(x, t) -> x₀`` predicts the clean image from a float32 batch at integer training step t
  (x₀ clipping and classifier guidance are wrappers around it, see ``diffusions.denoisers``);
- ``path`` is the list of points ``(t, ᾱ)`` to visit in the direction of travel: decreasing noise for
  generation (ending at ``(None, 1.0)``, the clean image), increasing noise for inversion.

The same function therefore runs both halves of a bridge: inversion is the solver walking the path
upwards. Coefficients are computed in float64 Python scalars and applied in float32, as
guided-diffusion does, so DDIM reproduces its numbers.
"""

import math
from dataclasses import dataclass
from functools import partial
from typing import Callable, List, Optional, Sequence, Tuple

import torch

Denoiser = Callable[[torch.Tensor, Optional[int]], torch.Tensor]
Path = List[Tuple[Optional[int], float]]


def generation_path(alphas_cumprod: torch.Tensor, timesteps: Sequence[int]) -> Path:
    """From the last respaced timestep down to the clean image (ᾱ = 1, no network call there)."""
    return [(int(t), alphas_cumprod[t].item()) for t in reversed(timesteps)] + [(None, 1.0)]


def inversion_path(alphas_cumprod: torch.Tensor, timesteps: Sequence[int]) -> Path:
    """From the first respaced timestep (the image is taken as x at that step) up to the last."""
    return [(int(t), alphas_cumprod[t].item()) for t in timesteps]


def coefficients(a: float) -> Tuple[float, float]:
    """√(1/ᾱ) and √(1/ᾱ − 1): x₀ = c₁·x − c₂·ε and ε = (c₁·x − x₀) / c₂."""
    return (1.0 / a) ** 0.5, (1.0 / a - 1.0) ** 0.5


def sample_ddim(denoise: Denoiser, x: torch.Tensor, path: Path, eta: float = 0.0,
                noise: Optional[Callable[[int], torch.Tensor]] = None,
                callback: Optional[Callable[[int, torch.Tensor], None]] = None) -> torch.Tensor:
    """DDIM (first order; η = 0 is the deterministic ODE). ``noise(i)`` gives step i's fresh noise
    when η > 0 (generation only: the noise level must fall along ``path``)."""
    if eta > 0 and noise is None:
        noise = lambda i: torch.randn_like(x)  # noqa: E731
    for i, ((t, a), (_, a_next)) in enumerate(zip(path[:-1], path[1:])):
        recip, recipm1 = coefficients(a)
        x0 = denoise(x, t)
        eps = (recip * x - x0) / recipm1
        sigma = eta * ((1 - a_next) / (1 - a)) ** 0.5 * (1 - a / a_next) ** 0.5 if eta else 0.0
        x = x0 * a_next ** 0.5 + (1 - a_next - sigma ** 2) ** 0.5 * eps
        if sigma > 0:
            x = x + sigma * noise(i)
        if callback is not None:
            callback(i, x)
    return x


def _als(a: float) -> Tuple[float, float, float]:
    """α = √ᾱ, σ = √(1−ᾱ) and the log-SNR λ = log(α/σ) (+∞ at the clean image, ᾱ = 1)."""
    alpha, sigma = a ** 0.5, (1.0 - a) ** 0.5
    return alpha, sigma, (math.log(alpha / sigma) if sigma > 0 else math.inf)


def sample_dpmpp(denoise: Denoiser, x: torch.Tensor, path: Path, order: int = 2,
                 callback: Optional[Callable[[int, torch.Tensor], None]] = None) -> torch.Tensor:
    """DPM-Solver++ multistep (2M, 3M): x₀ predictions of the last ``order`` points extrapolated in λ,
    the linear part of the ODE integrated exactly — one network evaluation per step, order ``order``
    once enough points are known (the first steps use fewer). The step onto the clean image (λ = +∞)
    is first order, x = x₀ prediction: the higher-order terms have no finite limit there.

    Step from s to t, h = λ_t − λ_s: x_t = (σ_t/σ_s)·x − α_t·expm1(−h)·D, where 2M takes
    D = x₀ + (x₀ − x₀_prev)/(2r), r = h_prev/h (the published 2M), and 3M integrates the quadratic
    through the last three x₀ against e^λ exactly."""
    hist: List[Tuple[float, torch.Tensor]] = []  # (λ, x₀) of the points visited, newest last
    for i, ((t, a), (_, a_next)) in enumerate(zip(path[:-1], path[1:])):
        _, sigma, lam = _als(a)
        alpha_n, sigma_n, lam_n = _als(a_next)
        x0 = denoise(x, t)
        hist = (hist + [(lam, x0)])[-order:]
        h = lam_n - lam
        em1 = math.expm1(-h)  # −(1 − e^(−h)); −1 at λ_t = +∞
        k = len(hist) if sigma_n > 0 else 1
        if k == 1:
            x = (sigma_n / sigma) * x - (alpha_n * em1) * x0
        elif k == 2:
            (l1, d1), (l0, d0) = hist[-2:]
            r = (l0 - l1) / h
            x = (sigma_n / sigma) * x - (alpha_n * em1) * (d0 + (d0 - d1) / (2 * r))
        else:
            (l2, d2), (l1, d1), (l0, d0) = hist[-3:]
            dd01, dd12 = (d0 - d1) / (l0 - l1), (d1 - d2) / (l1 - l2)
            dd012 = (dd01 - dd12) / (l0 - l2)
            slope = dd01 + (l0 - l1) * dd012  # the quadratic's derivative at λ_s
            c1 = alpha_n * (h + em1)  # ∫ e^(λ−λ_t)·(λ−λ_s) dλ · σ_t e^(λ_t) … = α_t (h − 1 + e^(−h))
            c2 = alpha_n * (h * h - 2 * h - 2 * em1)  # … for (λ−λ_s)²: α_t (h² − 2h + 2 − 2e^(−h))
            x = (sigma_n / sigma) * x - (alpha_n * em1) * d0 + c1 * slope + c2 * dd012
        if callback is not None:
            callback(i, x)
    return x


def sample_heun(denoise: Denoiser, x: torch.Tensor, path: Path,
                callback: Optional[Callable[[int, torch.Tensor], None]] = None) -> torch.Tensor:
    """Heun's method (second order, two evaluations per step) in DPM-Solver++'s exponential form: a
    DDIM step predicts the next point, and the step is redone with the x₀ prediction interpolated
    linearly in λ between both ends (the trapezoid rule, with the linear part integrated exactly).
    Both evaluations are on ``path``; the step onto the clean image stays DDIM (no call at ᾱ = 1).
    Written in x₀ rather than in ε (Karras et al.'s dx̂/dσ̂ = ε form): ε-networks' ε at a low-noise end
    point, divided by a tiny σ, would blow the corrector up at large steps."""
    for i, ((t, a), (t_next, a_next)) in enumerate(zip(path[:-1], path[1:])):
        _, sigma, lam = _als(a)
        alpha_n, sigma_n, lam_n = _als(a_next)
        h = lam_n - lam
        em1 = math.expm1(-h)
        x0 = denoise(x, t)
        x_next = (sigma_n / sigma) * x - (alpha_n * em1) * x0
        if sigma_n > 0:
            slope = (denoise(x_next, t_next) - x0) / h  # dx₀/dλ of the linear interpolant
            x_next = x_next + (alpha_n * (h + em1)) * slope  # ∫ of (λ − λ_s)·slope against e^λ
        x = x_next
        if callback is not None:
            callback(i, x)
    return x


def invert_ddim_fixed_point(denoise: Denoiser, x: torch.Tensor, path: Path, iterations: int = 1,
                            callback: Optional[Callable[[int, torch.Tensor], None]] = None) -> torch.Tensor:
    """The inverse of DDIM's generation step, solved by fixed-point iteration: find x_s (noisier) with
    x_t = α_t·x₀(x_s) + σ_t·ε(x_s). Plain DDIM inversion takes ε at x_t instead, which is why its
    round trip drifts; each iteration evaluates ε at the current guess of x_s, x_s ← α_s/α_t·(x_t −
    σ_t·ε) + σ_s·ε (a contraction: it is DDIM inversion with a better ε). Each step's first guess
    reuses the previous step's last ε, so a step costs ``iterations`` evaluations (plus one at the
    start)."""
    eps = None
    for i, ((t, a), (t_next, a_next)) in enumerate(zip(path[:-1], path[1:])):
        ratio, sig, sig_next = (a_next / a) ** 0.5, (1 - a) ** 0.5, (1 - a_next) ** 0.5
        if eps is None:
            eps = (x - a ** 0.5 * denoise(x, t)) / sig
        for _ in range(iterations):
            guess = ratio * (x - sig * eps) + sig_next * eps
            eps = (guess - a_next ** 0.5 * denoise(guess, t_next)) / sig_next
        x = ratio * (x - sig * eps) + sig_next * eps
        if callback is not None:
            callback(i, x)
    return x


@dataclass(frozen=True)
class Solver:
    """A registered solver: ``solve`` runs either direction; ``invert``, where given, is the exact
    algebraic inverse of ``solve``'s generation (used for inversion instead); ``stochastic`` solvers
    accept η > 0."""
    solve: Callable
    invert: Optional[Callable] = None
    stochastic: bool = False


SOLVERS = {"ddim": Solver(sample_ddim, stochastic=True)}


def register_solver(name: str, solve: Callable, invert: Optional[Callable] = None,
                    stochastic: bool = False) -> None:
    """Make a solver available by name (``--solver NAME``, ``DDIB(..., solver=NAME)``)."""
    SOLVERS[name] = Solver(solve, invert, stochastic)


def get_solver(name: str) -> Solver:
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; choose one of {', '.join(SOLVERS)}")
    return SOLVERS[name]


def run_inversion(solver: str, denoise: Denoiser, x: torch.Tensor, path: Path, **kw) -> torch.Tensor:
    """x at ``path[0]`` → the latent at ``path[-1]`` (deterministic: η is not an inversion option)."""
    chosen = get_solver(solver)
    return (chosen.invert or chosen.solve)(denoise, x, path, **kw)


def run_generation(solver: str, denoise: Denoiser, x: torch.Tensor, path: Path, eta: float = 0.0,
                   noise=None, **kw) -> torch.Tensor:
    """The latent at ``path[0]`` → the image; η > 0 only for stochastic solvers."""
    chosen = get_solver(solver)
    if eta > 0:
        if not chosen.stochastic:
            raise ValueError(f"eta > 0 needs a stochastic solver (ddim), not {solver!r}")
        kw.update(eta=eta, noise=noise)
    return chosen.solve(denoise, x, path, **kw)


register_solver("dpm++2m", partial(sample_dpmpp, order=2))
register_solver("dpm++3m", partial(sample_dpmpp, order=3))
register_solver("heun", sample_heun)
for _k in (1, 2, 3):  # DDIM generation; inversion its inverse, _k fixed-point evaluations per step
    register_solver(f"ddim-fp{_k}", sample_ddim, invert=partial(invert_ddim_fixed_point, iterations=_k))
