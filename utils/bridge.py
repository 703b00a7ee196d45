"""The two halves of a bridge on batches of tensors, with the guards that keep a long run going.

Each side encodes images into the state its model denoises before the inversion and decodes states
after the generation (``models.codec``: the identity for pixel models, a VAE for latent ones), so
callers hand in and get back images, and latents are states.

The guards split a batch that runs out of memory, redo in float32 what came out non-finite under
16-bit precision, and report per image whether the result is finite, so no caller writes a
non-finite image.
"""

import difflib
import math
import numbers
from dataclasses import dataclass, field, fields, replace
from typing import Callable, Optional, Sequence

import torch

from diffusions import RESPACE_TYPES, SOLVERS, generate, get_solver, invert, respace

from models.codec import IDENTITY, Codec

from .errors import printable
from .images import image_seed


class SettingError(ValueError):
    """A sampling setting that cannot work; ``field`` names it (the command line shows its flag)."""

    def __init__(self, field_name: str, problem: str):
        super().__init__(f"{field_name} {problem}")
        self.field, self.problem = field_name, problem


def _integer(minimum=None, optional=False):
    def check(name, value):
        if optional and value is None:
            return
        if not isinstance(value, numbers.Integral) or isinstance(value, bool):
            raise SettingError(name, f"must be an integer{' or None' if optional else ''}, got {_shown(value)}")
        if minimum is not None and value < minimum:
            raise SettingError(name, f"must be at least {minimum}, got {value}")
    return check


def _number(low=-math.inf, high=math.inf, optional=False):
    def check(name, value):
        if optional and value is None:
            return
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            raise SettingError(name, f"must be a number{' or None' if optional else ''}, got {_shown(value)}")
        if not math.isfinite(value):
            raise SettingError(name, f"must be a finite number, got {value}")
        if not low <= value <= high:
            raise SettingError(name, f"must be between {low:g} and {high:g}, got {value}")
    return check


def _flag(name, value):
    if not isinstance(value, bool):  # "no" is truthy: only True and False say what they mean
        raise SettingError(name, f"must be True or False, got {_shown(value)}")


def _one_of(choices):
    def check(name, value):
        options = choices()
        if not isinstance(value, str) or value not in options:
            raise SettingError(name, f"{_shown(value)} is unknown; choose one of {', '.join(options)}")
    return check


def _shown(value) -> str:
    return printable(repr(value), 60)


def _valid(check):
    return {"check": check}


MIN_END_NOISE = 0.1  # σ at the last timestep; below it a translation stays within a few levels of the source


@dataclass(frozen=True)
class Sampling:
    """How each half of the bridge is solved. η > 0 applies to generation only (stochastic solvers);
    inversion is always the deterministic ODE and never clips x₀.

    Each field carries its own check (type and range) in its metadata, so a new setting is one line
    here, ``name: type = field(default=..., metadata=_valid(_number(0, 10)))``; ``check`` runs them all,
    then the checks that need the schedule."""
    steps: int = field(default=100, metadata=_valid(_integer(1)))
    respace_type: str = field(default="uniform", metadata=_valid(_one_of(lambda: RESPACE_TYPES)))
    solver: str = field(default="ddim", metadata=_valid(_one_of(lambda: tuple(SOLVERS))))
    eta: float = field(default=0.0, metadata=_valid(_number(0, 1)))
    clip_x0: bool = field(default=True, metadata=_valid(_flag))
    classifier_scale: float = field(default=0.0, metadata=_valid(_number()))
    seed: int = field(default=0, metadata=_valid(_integer()))
    # last timestep (where inversion stops); None: what the spacing gives
    t_end: Optional[int] = field(default=None, metadata=_valid(_integer(1, optional=True)))
    # classifier-free guidance of the generation; None: none
    cfg_scale: Optional[float] = field(default=None, metadata=_valid(_number(optional=True)))

    @classmethod
    def names(cls) -> tuple:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def unknown(cls, given) -> None:
        """Raise for a keyword that is no sampling setting, with the closest one."""
        for key in given:
            if key not in cls.names():
                close = difflib.get_close_matches(str(key), cls.names(), n=1)
                raise SettingError(str(key), "is not a sampling setting" + (f" (did you mean {close[0]}?)" if close
                                                                             else "")
                                   + f"; the settings are {', '.join(cls.names())}")

    @classmethod
    def make(cls, **settings) -> "Sampling":
        cls.unknown(settings)
        return cls(**settings)

    def updated(self, **changes) -> "Sampling":
        self.unknown(changes)
        return replace(self, **changes)

    def timesteps(self, schedule) -> list:
        """The respaced timesteps; ``schedule`` is the step count or the ᾱ table (logsnr spacing needs ᾱ)."""
        return respace(self.respace_type, schedule, self.steps, self.t_end)

    def check(self, schedule) -> "Sampling":
        """Raise ValueError (``SettingError`` naming the field) for settings that cannot run on
        ``schedule`` (the ᾱ table) or under which no translation happens; returns self."""
        for f in fields(self):
            if "check" in f.metadata:
                f.metadata["check"](f.name, getattr(self, f.name))
        total = schedule if isinstance(schedule, int) else len(schedule)
        if self.t_end is not None and self.t_end >= total:
            raise SettingError("t_end", f"must be below the schedule's total_steps {total}, got {self.t_end}")
        ts = self.timesteps(schedule)
        if self.eta > 0 and not get_solver(self.solver).stochastic:
            raise SettingError("eta", f"> 0 needs a stochastic solver (ddim), not {self.solver!r}")
        if torch.is_tensor(schedule) or isinstance(schedule, (list, tuple)):
            end = float(schedule[ts[-1]])
            if (1.0 - end) ** 0.5 < MIN_END_NOISE:
                if len(ts) == 1:
                    raise SettingError("steps", f"{self.steps} visits only t = {ts[0]}: no translation happens "
                                                "(the image comes back unchanged); use at least 2 steps")
                raise SettingError("t_end" if self.t_end is not None else "steps",
                                   f"{self.t_end if self.t_end is not None else self.steps} ends the inversion at "
                                   f"t = {ts[-1]}, where the noise is too weak to leave the source (σ = "
                                   f"{(1.0 - end) ** 0.5:.3f} < {MIN_END_NOISE}): the translation would return "
                                   "the source within a few levels; end later")
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

    def codec(self, side: str) -> Codec:
        """The images ↔ states codec of side ``"A"`` or ``"B"``."""
        return self.codec_A if side == "A" else self.codec_B

    def timesteps(self, sampling: Optional[Sampling] = None) -> list:
        return (sampling or self.sampling).timesteps(self.alphas_cumprod)

    def with_sampling(self, **changes) -> Sampling:
        return self.sampling.updated(**changes).check(self.alphas_cumprod)

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
        codec = self.codec(side)
        return self._guarded(lambda idx, nets: invert(nets[side], codec.encode(x0[idx]), None if y is None else y[idx],
                                                      self.alphas_cumprod, ts, solver=s.solver), len(x0))

    def generate(self, latents: torch.Tensor, classes: Sequence[Optional[int]], keys: Sequence[str],
                 side: str = "B", guided: bool = True, sampling: Optional[Sampling] = None):
        """Latents → images with the target model (or the source's, ``side="A"``), decoded by that side's
        codec; ``keys`` name each image's noise; ``guided=False`` leaves out both kinds of guidance.
        Returns (images, ok)."""
        s = sampling or self.sampling
        latents, y, ts = latents.to(self.device), _labels(classes, self.device), self.timesteps(s)
        codec = self.codec(side)

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
