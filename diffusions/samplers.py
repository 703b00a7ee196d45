"""Deterministic DDIM in both directions, written over an ε-prediction callable.

``eps_fn(x, t) -> ε`` takes a float32 batch and an integer training timestep. ``alphas_cumprod`` is the
float64 ᾱ table of the full schedule; ``timesteps`` the increasing respaced sequence. The
coefficients are computed in float64 and applied in float32, as guided-diffusion does, so the
samplers reproduce its numbers.
"""

from typing import Callable, Optional, Sequence

import torch

EpsFn = Callable[[torch.Tensor, int], torch.Tensor]


def _coeffs(alphas_cumprod: torch.Tensor, t: int):
    a = alphas_cumprod[t].item()
    return a, (1.0 / a) ** 0.5, (1.0 / a - 1.0) ** 0.5


def ddim_invert(eps_fn: EpsFn, x: torch.Tensor, alphas_cumprod: torch.Tensor, timesteps: Sequence[int],
                callback: Optional[Callable[[int, torch.Tensor], None]] = None) -> torch.Tensor:
    """Run the probability-flow ODE forward: x at ``timesteps[0]`` → the latent at ``timesteps[-1]``.

    The x₀ prediction is never clipped here: clipping would make the ODE irreversible.
    """
    for i, (t, t_next) in enumerate(zip(timesteps[:-1], timesteps[1:])):
        _, recip, recipm1 = _coeffs(alphas_cumprod, t)
        a_next = alphas_cumprod[t_next].item()
        eps = eps_fn(x, t)
        x0 = recip * x - recipm1 * eps
        eps = (recip * x - x0) / recipm1
        x = x0 * a_next ** 0.5 + (1 - a_next) ** 0.5 * eps
        if callback is not None:
            callback(i, x)
    return x


def ddim_sample(eps_fn: EpsFn, x: torch.Tensor, alphas_cumprod: torch.Tensor, timesteps: Sequence[int],
                eta: float = 0.0, clip_x0: bool = True, grad_fn: Optional[EpsFn] = None,
                noise_sampler: Optional[Callable[[int], torch.Tensor]] = None,
                callback: Optional[Callable[[int, torch.Tensor], None]] = None) -> torch.Tensor:
    """Generate from x at ``timesteps[-1]`` down to x₀ (DDIM; η = 0 is the deterministic ODE).

    ``grad_fn(x, t)`` returns ∇ₓ log p(y | x_t), already scaled; it shifts ε by −√(1−ᾱ_t)·grad after
    the (clipped) x₀ prediction is turned back into ε, as guided-diffusion's ``condition_score``.
    ``noise_sampler(i)`` gives the fresh noise of step i when η > 0.
    """
    if eta > 0 and noise_sampler is None:
        noise_sampler = lambda i: torch.randn_like(x)  # noqa: E731
    for i in reversed(range(len(timesteps))):
        t = timesteps[i]
        a, recip, recipm1 = _coeffs(alphas_cumprod, t)
        a_prev = alphas_cumprod[timesteps[i - 1]].item() if i > 0 else 1.0
        eps = eps_fn(x, t)
        x0 = recip * x - recipm1 * eps
        if clip_x0:
            x0 = x0.clamp(-1, 1)
        if grad_fn is not None:
            eps = (recip * x - x0) / recipm1 - (1 - a) ** 0.5 * grad_fn(x, t)
            x0 = recip * x - recipm1 * eps
        eps = (recip * x - x0) / recipm1
        sigma = eta * ((1 - a_prev) / (1 - a)) ** 0.5 * (1 - a / a_prev) ** 0.5
        x = x0 * a_prev ** 0.5 + (1 - a_prev - sigma ** 2) ** 0.5 * eps
        if sigma > 0 and i > 0:
            x = x + sigma * noise_sampler(i)
        if callback is not None:
            callback(i, x)
    return x
