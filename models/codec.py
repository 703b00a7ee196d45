"""The codec seam: between the images a user has and the state a diffusion model denoises.

A pixel model denoises the image itself (the identity codec). A latent model denoises an
autoencoder's latent: the image is encoded before the inversion and the state decoded after the
generation, so the bridge, the folder loop, the cycle check and saved latents work on states and see
images only at their ends. A codec answers ``encode(images in [-1, 1]) -> states`` and
``decode(states) -> images``; ``describe()`` names it in a saved latent's file.

``VAECodec`` wraps an autoencoder with a diagonal-Gaussian posterior (diffusers' ``AutoencoderKL``):
the state is the posterior **mean** (deterministic, as the ODE needs), shifted and scaled as the
model was trained, ``(mean − shift)·scale``; decoding undoes both. It keeps float32: it runs once per
image, not once per step.
"""

from typing import Optional

import torch
from torch import nn


class Codec:
    """The identity: pixel models denoise the image itself."""

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def decode(self, states: torch.Tensor) -> torch.Tensor:
        return states

    def describe(self) -> str:
        return "identity"

    def prepare(self, workers: int = 0, one_at_a_time: bool = False) -> "Codec":
        """On the CPU, split batches over ``workers`` single-threaded calls (see models.batching)."""
        return self


IDENTITY = Codec()


class _Encode(nn.Module):
    """Images → scaled posterior means, as one module (so a batch can be split over workers)."""

    def __init__(self, vae: nn.Module, scale: float, shift: float):
        super().__init__()
        self.vae, self.scale, self.shift = vae, scale, shift

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        mean = self.vae.encode(images.to(self.vae.dtype)).latent_dist.mean
        return ((mean - self.shift) * self.scale).float()


class _Decode(nn.Module):
    """Scaled latents → images."""

    def __init__(self, vae: nn.Module, scale: float, shift: float):
        super().__init__()
        self.vae, self.scale, self.shift = vae, scale, shift

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.vae.decode((states / self.scale + self.shift).to(self.vae.dtype)).sample.float()


class VAECodec(Codec):
    """A VAE's latent space: ``(mean − shift)·scaling_factor`` in, ``vae.decode(z/scaling_factor + shift)`` out."""

    def __init__(self, vae: nn.Module, scaling_factor: float, shift_factor: Optional[float] = None):
        self.vae = vae.eval().requires_grad_(False)
        self.scaling_factor, self.shift_factor = float(scaling_factor), float(shift_factor or 0.0)
        self._encode = _Encode(self.vae, self.scaling_factor, self.shift_factor)
        self._decode = _Decode(self.vae, self.scaling_factor, self.shift_factor)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self._encode(images)

    def decode(self, states: torch.Tensor) -> torch.Tensor:
        return self._decode(states)

    def describe(self) -> str:
        shift = f", shift_factor={self.shift_factor:g}" if self.shift_factor else ""
        return f"vae({type(self.vae).__name__}, scaling_factor={self.scaling_factor:g}{shift})"

    def prepare(self, workers: int = 0, one_at_a_time: bool = False) -> "VAECodec":
        if workers:
            from .batching import ThreadSplit

            self._encode = ThreadSplit(self._encode, workers, one_at_a_time)
            self._decode = ThreadSplit(self._decode, workers, one_at_a_time)
        return self
