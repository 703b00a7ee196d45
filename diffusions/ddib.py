"""DDIB: invert with the source condition, generate with the target condition.

Builds the ε and guidance callables the samplers take from a guided-diffusion style UNet and
classifier, and composes the two ODE solves into one translation.
"""

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from .samplers import ddim_invert, ddim_sample


def eps_from_model(model: torch.nn.Module, y: Optional[torch.Tensor]) -> Callable:
    """ε(x, t) from a UNet; a learned-σ model's extra output channels are dropped.

    A non-finite ε (fp16 overflow gives ±inf) becomes NaN: clipping x₀ would turn ±inf into a finite
    but wrong image, while NaN survives to the end, where the image is caught and redone or reported.
    """
    channels = model.in_channels

    def eps_fn(x: torch.Tensor, t: int) -> torch.Tensor:
        ts = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        eps = model(x, ts, y)[:, :channels].float()
        return eps.nan_to_num(nan=float("nan"), posinf=float("nan"), neginf=float("nan"))

    return eps_fn


def classifier_grad(classifier: torch.nn.Module, y: torch.Tensor, scale: float) -> Callable:
    """scale · ∇ₓ log softmax(classifier(x, t))[y], the classifier-guidance term."""

    def grad_fn(x: torch.Tensor, t: int) -> torch.Tensor:
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            ts = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
            log_probs = F.log_softmax(classifier(x_in, ts).float(), dim=-1)
            selected = log_probs[torch.arange(len(y), device=y.device), y]
            return torch.autograd.grad(selected.sum(), x_in)[0].float() * scale

    return grad_fn


def _labels(label, n: int, device) -> Optional[torch.Tensor]:
    """None (unconditional), one class for the whole batch, or a tensor of one class per image."""
    if label is None or torch.is_tensor(label):
        return label
    return torch.full((n,), int(label), device=device, dtype=torch.long)


def invert(model, x0: torch.Tensor, class_A, alphas_cumprod: torch.Tensor,
           timesteps: Sequence[int]) -> torch.Tensor:
    """Images in [-1, 1] → DDIM latents at ``timesteps[-1]``, conditioned on ``class_A`` (an int, a
    tensor of one label per image, or None for an unconditional model)."""
    eps_fn = eps_from_model(model, _labels(class_A, len(x0), x0.device))
    return ddim_invert(eps_fn, x0.float(), alphas_cumprod, timesteps)


def generate(model, latent: torch.Tensor, class_B, alphas_cumprod: torch.Tensor,
             timesteps: Sequence[int], eta: float = 0.0, clip_x0: bool = True, classifier=None,
             classifier_scale: float = 0.0, noise_sampler=None) -> torch.Tensor:
    """DDIM latents → images in [-1, 1], conditioned on ``class_B``, optionally classifier-guided."""
    y = _labels(class_B, len(latent), latent.device)
    grad_fn = None
    if classifier is not None and classifier_scale != 0:
        if y is None:
            raise ValueError("classifier guidance needs a target class")
        grad_fn = classifier_grad(classifier, y, classifier_scale)
    return ddim_sample(eps_from_model(model, y), latent.float(), alphas_cumprod, timesteps, eta=eta,
                       clip_x0=clip_x0, grad_fn=grad_fn, noise_sampler=noise_sampler)


def translate(model, x0: torch.Tensor, class_A: Optional[int], class_B: Optional[int],
              alphas_cumprod: torch.Tensor, timesteps: Sequence[int], **generate_kwargs) -> torch.Tensor:
    """One DDIB translation: ``generate(invert(x0, class_A), class_B)``."""
    latent = invert(model, x0, class_A, alphas_cumprod, timesteps)
    return generate(model, latent, class_B, alphas_cumprod, timesteps, **generate_kwargs)
