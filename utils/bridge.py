"""The two halves of a bridge on batches of tensors, with the guards that keep a long run going.

Each side encodes images into the state its model denoises before the inversion and decodes states
after the generation (``models.codec``: the identity for pixel models, a VAE for latent ones), so
callers hand in and get back images, and latents are states.

The guards split a batch that runs out of memory, redo in float32 what came out non-finite under
16-bit precision, and report per image whether the result is finite, so no caller writes a
non-finite image.
"""

import math
from dataclasses import dataclass, field, replace
from typing import Callable, Optional, Sequence

import torch

from diffusions import generate, get_solver, invert, respace

from models.codec import IDENTITY, Codec

from .images import image_seed


@dataclass(frozen=True)
class Sampling:
    """How each half of the bridge is solved. η > 0 applies to generation only (stochastic solvers);
    inversion is always the deterministic ODE and never clips x₀."""
    steps: int = 100
    respace_type: str = "uniform"
    solver: str = "ddim"
    eta: float = 0.0
    clip_x0: bool = True
    classifier_scale: float = 0.0
    seed: int = 0
    t_end: Optional[int] = None  # last timestep (where inversion stops); None: what the spacing gives
    cfg_scale: Optional[float] = None  # classifier-free guidance of the generation; None: none

    def timesteps(self, schedule) -> list:
        """The respaced timesteps; ``schedule`` is the step count or the ᾱ table (logsnr spacing needs ᾱ)."""
        return respace(self.respace_type, schedule, self.steps, self.t_end)

    def check(self, schedule) -> "Sampling":
        """Raise ValueError for settings that cannot run on ``schedule`` (as in ``timesteps``); returns self."""
        self.timesteps(schedule)
        solver = get_solver(self.solver)
        if not 0 <= self.eta <= 1:  # also refuses nan
            raise ValueError(f"eta must be between 0 and 1, got {self.eta}")
        if not math.isfinite(self.classifier_scale):
            raise ValueError(f"classifier_scale must be a finite number, got {self.classifier_scale}")
        scale = self.cfg_scale
        if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                                  or not math.isfinite(scale)):
            raise ValueError(f"cfg_scale must be a finite number or None, got {self.cfg_scale!r}")
        if self.eta > 0 and not solver.stochastic:
            raise ValueError(f"eta > 0 needs a stochastic solver (ddim), not {self.solver!r}")
        return self


def _labels(values: Sequence[Optional[int]], device) -> Optional[torch.Tensor]:
    if values[0] is None:
        return None
    return torch.tensor(values, dtype=torch.long, device=device)


@dataclass
class Bridge:
    """The networks of both sides (EpsNetworks), the schedule and the sampling settings, with guarded
    batch calls. ``model_B`` is ``model_A`` for a one-model bridge."""
    model_A: torch.nn.Module
    model_B: torch.nn.Module
    alphas_cumprod: torch.Tensor
    device: torch.device
    sampling: Sampling = field(default_factory=Sampling)
    classifier: Optional[torch.nn.Module] = None
    low_precision: bool = False  # the networks hold 16-bit weights
    fallback: Optional[Callable[[], tuple]] = None  # builds float32 (model_A, model_B, classifier) on demand
    pad_to: Optional[int] = None  # compiled networks: pad every batch to this size (one static shape)
    warn: Callable[[str], None] = print
    codec_A: Codec = IDENTITY  # images ↔ the states model_A denoises
    codec_B: Codec = IDENTITY
    _split_warned: bool = field(default=False, repr=False)
    _float32: Optional[tuple] = field(default=None, repr=False)

    @property
    def state_shape(self) -> tuple:
        """The shape of one latent: what model_A denoises (the image, or a VAE's latent)."""
        return (self.model_A.in_channels, self.model_A.image_size, self.model_A.image_size)

    @property
    def latent_space(self) -> dict:
        """What made model_A's latents: its network family and codec (recorded in saved latents)."""
        return {"family": getattr(self.model_A, "family", "adm"), "codec": self.codec_A.describe()}

    def timesteps(self, sampling: Optional[Sampling] = None) -> list:
        return (sampling or self.sampling).timesteps(self.alphas_cumprod)

    def with_sampling(self, **changes) -> Sampling:
        return replace(self.sampling, **changes).check(self.alphas_cumprod)

    def _networks(self, low: bool) -> dict:
        if low or not self.low_precision:
            nets = (self.model_A, self.model_B, self.classifier)
        else:
            if self._float32 is None:
                self._float32 = self.fallback()
            nets = self._float32
        return dict(zip(("A", "B", "classifier"), nets))

    def _split_on_oom(self, fn, idx: list, low: bool) -> torch.Tensor:
        padded = idx + [idx[-1]] * (self.pad_to - len(idx)) if self.pad_to and len(idx) < self.pad_to else idx
        try:
            with torch.no_grad():
                return fn(padded, self._networks(low))[:len(idx)]
        except torch.OutOfMemoryError:
            if len(idx) == 1:
                raise
            if not self._split_warned:
                self.warn(f"out of memory at {len(idx)} images per batch; retrying with smaller batches "
                          "(pass a smaller --micro_batch to avoid this)")
                self._split_warned = True
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            self.pad_to = None  # smaller batches from here on
            half = len(idx) // 2
            return torch.cat([self._split_on_oom(fn, idx[:half], low), self._split_on_oom(fn, idx[half:], low)])

    def _guarded(self, fn, n: int):
        """Run ``fn(indices, networks)`` over a batch of n; returns (output, finite mask)."""
        out = self._split_on_oom(fn, list(range(n)), low=True)
        bad = ~torch.isfinite(out).flatten(1).all(dim=1)
        if bad.any() and self.low_precision and self.fallback is not None:
            redo = bad.nonzero().flatten().tolist()
            self.warn(f"{len(redo)} image(s) came out non-finite in 16-bit precision; redoing them in float32")
            out[bad] = self._split_on_oom(fn, redo, low=False)
            bad = ~torch.isfinite(out).flatten(1).all(dim=1)
        return out, ~bad

    def invert(self, x0: torch.Tensor, classes: Sequence[Optional[int]], side: str = "A",
               sampling: Optional[Sampling] = None):
        """Images → latents (states) with the source model (or the target's, ``side="B"``), encoded by
        that side's codec first; returns (latents, ok)."""
        s = sampling or self.sampling
        x0, y, ts = x0.to(self.device), _labels(classes, self.device), self.timesteps(s)
        codec = self.codec_A if side == "A" else self.codec_B
        return self._guarded(lambda idx, nets: invert(nets[side], codec.encode(x0[idx]), None if y is None else y[idx],
                                                      self.alphas_cumprod, ts, solver=s.solver), len(x0))

    def generate(self, latents: torch.Tensor, classes: Sequence[Optional[int]], keys: Sequence[str],
                 side: str = "B", guided: bool = True, sampling: Optional[Sampling] = None):
        """Latents → images with the target model (or the source's, ``side="A"``), decoded by that side's
        codec; ``keys`` name each image's noise; ``guided=False`` leaves out both kinds of guidance.
        Returns (images, ok)."""
        s = sampling or self.sampling
        latents, y, ts = latents.to(self.device), _labels(classes, self.device), self.timesteps(s)
        codec = self.codec_A if side == "A" else self.codec_B

        def fn(idx, nets):
            return codec.decode(generate(
                nets[side], latents[idx], None if y is None else y[idx], self.alphas_cumprod, ts, eta=s.eta,
                clip_x0=s.clip_x0, classifier=nets["classifier"] if guided else None,
                classifier_scale=s.classifier_scale, solver=s.solver, cfg_scale=s.cfg_scale if guided else None,
                noise_sampler=self._noise_sampler(s, [keys[i] for i in idx], latents.shape[1:])))
        return self._guarded(fn, len(latents))

    def _noise_sampler(self, s: Sampling, keys, shape):
        """Each image draws its noise from its own generator, seeded by the run's seed and the image's
        key, so results do not depend on which other images share its batch or process."""
        if s.eta == 0:
            return None
        gens = [torch.Generator().manual_seed(image_seed(s.seed, k)) for k in keys]
        return lambda i: torch.stack([torch.randn(tuple(shape), generator=g) for g in gens]).to(self.device)
