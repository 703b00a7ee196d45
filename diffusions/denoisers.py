"""From a network's ε to the denoiser the solvers call, and the wrappers that steer it.

Solvers only see ``denoise(x, t) -> x₀``. Clipping x₀ to [-1, 1] and classifier guidance are
wrappers around that callable, applied in guided-diffusion's order (clip, then shift ε by the
classifier's gradient), so every solver gets both without knowing of them.
"""

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .solvers import Denoiser, coefficients

EpsFn = Callable[[torch.Tensor, int], torch.Tensor]


def eps_from_model(model, y: Optional[torch.Tensor]) -> EpsFn:
    """ε(x, t) from a network (``models.as_network`` decides how to read it).

    A non-finite ε (fp16 overflow gives ±inf) becomes NaN: clipping x₀ would turn ±inf into a finite
    but wrong image, while NaN survives to the end, where the image is caught and redone or reported.
    """
    from models.network import as_network

    net = as_network(model)

    def eps_fn(x: torch.Tensor, t: int) -> torch.Tensor:
        ts = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        eps = net(x, ts, y)
        return eps.nan_to_num(nan=float("nan"), posinf=float("nan"), neginf=float("nan"))

    return eps_fn


def from_eps(eps_fn: EpsFn, alphas_cumprod: torch.Tensor) -> Denoiser:
    """x₀ = √(1/ᾱ_t)·x − √(1/ᾱ_t − 1)·ε(x, t)."""

    def denoise(x: torch.Tensor, t: int) -> torch.Tensor:
        recip, recipm1 = coefficients(alphas_cumprod[t].item())
        return recip * x - recipm1 * eps_fn(x, t)

    return denoise


def clipped(denoise: Denoiser) -> Denoiser:
    """x₀ clipped to the image range [-1, 1]."""
    return lambda x, t: denoise(x, t).clamp(-1, 1)


def classifier_grad(classifier: torch.nn.Module, y: torch.Tensor, scale: float) -> EpsFn:
    """scale · ∇ₓ log softmax(classifier(x, t))[y], the classifier-guidance term."""

    def grad_fn(x: torch.Tensor, t: int) -> torch.Tensor:
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            ts = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
            log_probs = F.log_softmax(classifier(x_in, ts).float(), dim=-1)
            selected = log_probs[torch.arange(len(y), device=y.device), y]
            return torch.autograd.grad(selected.sum(), x_in)[0].float() * scale

    return grad_fn


def guided(denoise: Denoiser, grad_fn: EpsFn, alphas_cumprod: torch.Tensor) -> Denoiser:
    """Classifier guidance, as guided-diffusion's ``condition_score``: ε ← ε − √(1−ᾱ_t)·grad, with ε
    read back from the (clipped) x₀ prediction."""

    def denoise_guided(x: torch.Tensor, t: int) -> torch.Tensor:
        a = alphas_cumprod[t].item()
        recip, recipm1 = coefficients(a)
        eps = (recip * x - denoise(x, t)) / recipm1 - (1 - a) ** 0.5 * grad_fn(x, t)
        return recip * x - recipm1 * eps

    return denoise_guided
