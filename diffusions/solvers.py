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

from dataclasses import dataclass
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
