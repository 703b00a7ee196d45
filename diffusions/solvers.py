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


def _exp_weights(h: float, nodes: Sequence[float]) -> List[float]:
    """Weights w_j with ∫₀ʰ e^(s−h)·p(s) ds = Σ w_j·p(s_j) for the polynomial p through the nodes s_j
    (λ offsets from the step's start), from ∫₀ʰ e^(s−h)·s^k ds = h^k − k·(the same for k−1)."""
    ints = [-math.expm1(-h)]  # 1 − e^(−h): 1 at h = +∞
    for k in range(1, len(nodes)):
        ints.append(h ** k - k * ints[-1])
    weights = []
    for j, sj in enumerate(nodes):
        coef = [1.0]  # Lagrange basis polynomial j, lowest power first
        for m, sm in enumerate(nodes):
            if m != j:
                coef = [(c_lo - sm * c) / (sj - sm) for c, c_lo in zip(coef + [0.0], [0.0] + coef)]
        weights.append(sum(c * i for c, i in zip(coef, ints)))
    return weights


def _exp_step(x: torch.Tensor, a: float, a_next: float, points: Sequence[Tuple[float, torch.Tensor]]):
    """One exponential-integrator step from ᾱ = a to ᾱ = a_next: x_t = (σ_t/σ_s)·x + σ_t·∫ e^λ·x₀(λ) dλ,
    with x₀(λ) the polynomial through ``points`` = [(λ, x₀), …], integrated exactly. One point is
    DDIM; more points raise the order (exponential Adams methods). Onto ᾱ = 1 pass one point."""
    _, sigma, lam = _als(a)
    alpha_n, sigma_n, lam_n = _als(a_next)
    out = (sigma_n / sigma) * x
    for w, (_, x0) in zip(_exp_weights(lam_n - lam, [p[0] - lam for p in points]), points):
        out = out + (alpha_n * w) * x0
    return out


def sample_dpmpp(denoise: Denoiser, x: torch.Tensor, path: Path, order: int = 2,
                 callback: Optional[Callable[[int, torch.Tensor], None]] = None) -> torch.Tensor:
    """DPM-Solver++ multistep (2M, 3M): one network evaluation per step; the x₀ predictions of the
    last ``order`` points are interpolated in λ and integrated against the ODE's exponential kernel,
    so the method has order ``order`` once enough points are known (the first steps use fewer). 2M
    uses the published formula, D = x₀ + (x₀ − x₀_prev)/(2r) with r = h_prev/h in place of x₀; 3M
    integrates the quadratic exactly. The step onto the clean image (λ = +∞) is first order, x = x₀:
    the higher-order terms have no finite limit there."""
    hist: List[Tuple[float, torch.Tensor]] = []  # (λ, x₀) of the points visited, newest last
    for i, ((t, a), (_, a_next)) in enumerate(zip(path[:-1], path[1:])):
        hist = (hist + [(_als(a)[2], denoise(x, t))])[-order:]
        k = len(hist) if a_next < 1 else 1
        if k == 2:
            (l1, d1), (l0, d0) = hist
            r = (l0 - l1) / (_als(a_next)[2] - l0)
            x = _exp_step(x, a, a_next, [(l0, d0 + (d0 - d1) / (2 * r))])
        else:
            x = _exp_step(x, a, a_next, hist[-k:])
        if callback is not None:
            callback(i, x)
    return x


def sample_heun(denoise: Denoiser, x: torch.Tensor, path: Path,
                callback: Optional[Callable[[int, torch.Tensor], None]] = None) -> torch.Tensor:
    """Heun's method (second order, two evaluations per step) in DPM-Solver++'s exponential form: a
    DDIM step predicts the next point, then the step is redone with x₀ interpolated linearly in λ
    between both ends (the trapezoid rule, linear part exact). Both evaluations lie on ``path``; the
    step onto the clean image stays DDIM (no call at ᾱ = 1). Written in x₀ rather than in ε (Karras
    et al.'s dx̂/dσ̂ = ε): an ε-network's ε at a low-noise end point blows that corrector up at large
    steps."""
    for i, ((t, a), (t_next, a_next)) in enumerate(zip(path[:-1], path[1:])):
        start = [(_als(a)[2], denoise(x, t))]
        x_next = _exp_step(x, a, a_next, start)
        if a_next < 1:
            x_next = _exp_step(x, a, a_next, start + [(_als(a_next)[2], denoise(x_next, t_next))])
        x = x_next
        if callback is not None:
            callback(i, x)
    return x


def sample_pc(denoise: Denoiser, x: torch.Tensor, path: Path, order: int = 2,
              callback: Optional[Callable[[int, torch.Tensor], None]] = None) -> torch.Tensor:
    """Predictor–corrector in the manner of UniPC, one network evaluation per step: an exponential
    Adams–Bashforth step of ``order`` predicts the next point; the x₀ predicted there (needed for the
    next step anyway) then corrects it as one more interpolation node (Adams–Moulton), raising the
    order to ``order`` + 1. The last point (the latent, or the image) stays uncorrected: there is no
    evaluation there."""
    hist: List[Tuple[float, torch.Tensor]] = []  # (λ, x₀) of the points visited, newest last
    x_prev = a_prev = None
    for i, (t, a) in enumerate(path[:-1]):
        x0 = (_als(a)[2], denoise(x, t))
        if x_prev is not None:  # correct the point just predicted with its own x₀
            x = _exp_step(x_prev, a_prev, a, hist + [x0])
            if callback is not None:
                callback(i - 1, x)
        hist = (hist + [x0])[-order:]
        x_prev, a_prev, a_next = x, a, path[i + 1][1]
        x = _exp_step(x, a, a_next, hist if a_next < 1 else hist[-1:])
    if callback is not None:
        callback(len(path) - 2, x)
    return x


def invert_ddim_fixed_point(denoise: Denoiser, x: torch.Tensor, path: Path, iterations: int = 1,
                            callback: Optional[Callable[[int, torch.Tensor], None]] = None) -> torch.Tensor:
    """DDIM inversion as the inverse of DDIM's generation step, solved by fixed-point iteration: find
    the noisier x_s with x_t = α_t·x₀(x_s) + σ_t·ε(x_s). Plain DDIM inversion takes ε at x_t instead,
    which is why its round trip drifts. Each iteration evaluates ε at the current guess of x_s and
    sets x_s ← (α_s/α_t)·(x_t − σ_t·ε) + σ_s·ε (iterating on ε, whose gain is at most σ_s·|∂ε/∂x|,
    rather than on x₀, whose gain σ_s/σ_t explodes near the image). A step's first guess reuses the
    previous step's last ε, so each step costs ``iterations`` evaluations, plus one at the start."""
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
    """A registered solver: ``solve`` runs either direction; ``invert``, where given, inverts
    ``solve``'s generation step (exactly, or by iterating towards it) and is used for inversion
    instead; ``stochastic`` solvers accept η > 0."""
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
register_solver("pc", partial(sample_pc, order=2))
for _k in (1, 2, 3):  # DDIM generation; inversion its inverse with _k fixed-point evaluations per step
    register_solver(f"ddim-fp{_k}", sample_ddim, invert=partial(invert_ddim_fixed_point, iterations=_k))
