"""DDIB: invert with the source condition, generate with the target condition.

Builds the denoiser a solver walks from a network (and, for generation, the clipping and guidance
wrappers), and composes the two ODE solves into one translation. Any registered solver
(``diffusions.solvers``) runs either half.
"""

from typing import Optional, Sequence

import torch

from .denoisers import classifier_free, classifier_grad, clipped, guided, model_denoiser
from .solvers import generation_path, inversion_path, run_generation, run_inversion


def _labels(label, n: int, device) -> Optional[torch.Tensor]:
    """None (unconditional), one class for the whole batch, or a tensor of one class per image."""
    if label is None or torch.is_tensor(label):
        return label
    return torch.full((n,), int(label), device=device, dtype=torch.long)


def invert(model, x0: torch.Tensor, class_A, alphas_cumprod: torch.Tensor, timesteps: Sequence[int],
           solver: str = "ddim", callback=None) -> torch.Tensor:
    """Images in [-1, 1] → latents at ``timesteps[-1]``, conditioned on ``class_A`` (an int, a tensor
    of one label per image, or None for an unconditional model). x₀ is never clipped here: clipping
    would make the ODE irreversible."""
    denoise = model_denoiser(model, _labels(class_A, len(x0), x0.device), alphas_cumprod)
    return run_inversion(solver, denoise, x0.float(), inversion_path(alphas_cumprod, timesteps),
                         callback=callback)


def generate(model, latent: torch.Tensor, class_B, alphas_cumprod: torch.Tensor, timesteps: Sequence[int],
             eta: float = 0.0, clip_x0: bool = True, classifier=None, classifier_scale: float = 0.0,
             noise_sampler=None, solver: str = "ddim", callback=None, cfg_scale=None) -> torch.Tensor:
    """Latents → images in [-1, 1], conditioned on ``class_B``, optionally guided: classifier-free with
    ``cfg_scale`` (None or 1: the conditional prediction alone), by a classifier with
    ``classifier_scale``. ``noise_sampler(i)`` gives step i's noise when η > 0."""
    y = _labels(class_B, len(latent), latent.device)
    if cfg_scale is not None and cfg_scale != 1:
        if y is None:
            raise ValueError("classifier-free guidance needs a target class")
        denoise = classifier_free(model, y, cfg_scale, alphas_cumprod)
    else:
        denoise = model_denoiser(model, y, alphas_cumprod)
    if clip_x0:
        denoise = clipped(denoise)
    if classifier is not None and classifier_scale != 0:
        if y is None:
            raise ValueError("classifier guidance needs a target class")
        denoise = guided(denoise, classifier_grad(classifier, y, classifier_scale), alphas_cumprod)
    return run_generation(solver, denoise, latent.float(), generation_path(alphas_cumprod, timesteps),
                          eta=eta, noise=noise_sampler, callback=callback)


def translate(model, x0: torch.Tensor, class_A: Optional[int], class_B: Optional[int],
              alphas_cumprod: torch.Tensor, timesteps: Sequence[int], **generate_kwargs) -> torch.Tensor:
    """One DDIB translation: ``generate(invert(x0, class_A), class_B)``."""
    solver = generate_kwargs.get("solver", "ddim")
    latent = invert(model, x0, class_A, alphas_cumprod, timesteps, solver=solver)
    return generate(model, latent, class_B, alphas_cumprod, timesteps, **generate_kwargs)
