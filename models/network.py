"""The network seam: what the bridge needs of a denoising network, written down once.

An ``EpsNetwork`` wraps a family's module (kept as ``.net``, so its state_dict names are the
family's own and checkpoints load as they are) and answers ``network(x, t, y)`` in float32 with
exactly ``in_channels`` channels: ε, or what its ``prediction_type`` says it predicts (``v_prediction``,
``sample``; ``diffusions.denoisers`` turns each into x₀). It also says the size of what it denoises
(``image_size``: the image for pixel models, the latent for latent ones, see ``models.codec``), its
number of classes (None: unconditional), the label of its null class where it was trained for
classifier-free guidance, and whether the module learns σ (extra output channels, dropped here).

A family is registered by name with the config keys its ``model`` section takes and a builder;
``family: NAME`` in a config picks it (default ``adm``, guided-diffusion's UNet). The fast path
(``prepare``) is the family's to offer: ADM fuses upsampling, casts its blocks to 16 bits once and
compiles; other families are compiled at most, and run in float32.
"""

import inspect
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from .unet import UNetModel


class EpsNetwork(nn.Module):
    """ε(x, t, y) of a family's network, with the facts the bridge needs about it (and its classes'
    names, where its config gives them)."""
    family = "adm"  # the config family that built it (set by the loader; saved latents record it)

    def __init__(self, net: nn.Module, in_channels: int, image_size: int, num_classes: Optional[int],
                 learn_sigma: bool = False, class_names: Optional[list] = None, prediction_type: str = "epsilon",
                 null_class: Optional[int] = None):
        super().__init__()
        self.net = net
        self.in_channels, self.image_size = in_channels, image_size
        self.num_classes, self.learn_sigma = num_classes, learn_sigma
        self.class_names = class_names  # one per label where known (a config's class_names), else None
        self.prediction_type = prediction_type  # epsilon | v_prediction | sample
        self.null_class = null_class  # the label trained as "no class" (classifier-free guidance), if any

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        out = self.net(x, t, y) if self.num_classes is not None else self.net(x, t)
        return out[:, :self.in_channels].float()

    def prepare(self, dtype: Optional[torch.dtype] = None, compile: bool = False) -> bool:
        """Make the network fast for sampling; returns whether it now runs in ``dtype``. The generic
        path keeps float32 (a family must say which layers stand 16 bits) and compiles on request."""
        self.eval().requires_grad_(False)
        if compile:
            self.net.compile(dynamic=False)
        return False


class ADMNetwork(EpsNetwork):
    """guided-diffusion's UNet: learned σ when out_channels is twice in_channels."""

    def __init__(self, net: UNetModel):
        super().__init__(net, net.in_channels, net.image_size, net.num_classes,
                         learn_sigma=net.out_channels == 2 * net.in_channels)

    def forward(self, x, t, y=None):
        return self.net(x, t, y)[:, :self.in_channels].float()

    def prepare(self, dtype=None, compile=False) -> bool:
        from .fast import prepare_for_inference

        prepare_for_inference(self.net, dtype=dtype, compile=compile)
        return dtype is not None


@dataclass(frozen=True)
class Family:
    """How to build a family's network from its config section: the keys it takes (with defaults,
    which also give their types) and those it needs."""
    build: Callable[[dict], EpsNetwork]
    params: dict
    required: tuple = ("image_size",)


def constructor_params(cls) -> dict:
    """A constructor's keyword arguments and defaults (``inspect.Parameter.empty`` where none)."""
    return {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items() if k != "self"}


FAMILIES = {"adm": Family(lambda kwargs: ADMNetwork(UNetModel(**kwargs)), constructor_params(UNetModel))}


def register_family(name: str, build: Callable[[dict], EpsNetwork], params: dict,
                    required: tuple = ("image_size",)) -> None:
    """Make ``family: name`` in a config build networks with ``build(model_section)``."""
    FAMILIES[name] = Family(build, params, required)


def as_network(model) -> EpsNetwork:
    """An EpsNetwork as it is; a bare guided-diffusion UNet wrapped in its adapter."""
    if isinstance(model, EpsNetwork):
        return model
    if isinstance(model, UNetModel):
        return ADMNetwork(model)
    raise TypeError(f"expected an EpsNetwork or a UNetModel, got {type(model).__name__}; wrap other "
                    "networks in models.EpsNetwork")
