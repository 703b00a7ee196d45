"""diffusers' denoising networks behind the network seam: UNet2DModel (unconditional, or
class-conditional through ``class_labels``) and DiT (``DiTTransformer2DModel``, class-conditional with
a null class for classifier-free guidance).

The modules are built and loaded by diffusers itself (``utils.diffusers_loading``); this adapter
only calls them: ``network(x, t, y)`` gives the module's raw prediction (ε, v or x₀, as its scheduler
config's ``prediction_type`` says) in float32, learned-variance channels dropped. Nothing here
imports diffusers.
"""

from typing import Optional

import torch
from torch import nn

from .network import EpsNetwork


class _Call(nn.Module):
    """A diffusers module called positionally, returning a tensor: what ``ThreadSplit`` and
    ``torch.compile`` wrap. Inputs are cast to the module's dtype (16 bits once prepared)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.module(x.to(self.module.dtype), t, class_labels=y, return_dict=False)[0]


class DiffusersNetwork(EpsNetwork):
    """A diffusers UNet2DModel or DiT as an EpsNetwork. ``image_size`` is the size of what it denoises
    (DiT: the latent's), ``in_channels`` its channels; out_channels = 2·in_channels means learned σ."""
    family = "diffusers"

    def __init__(self, module: nn.Module, in_channels: int, image_size: int, num_classes: Optional[int],
                 out_channels: int, prediction_type: str = "epsilon", null_class: Optional[int] = None,
                 class_names: Optional[list] = None):
        super().__init__(_Call(module), in_channels, image_size, num_classes,
                         learn_sigma=out_channels == 2 * in_channels, class_names=class_names,
                         prediction_type=prediction_type, null_class=null_class)

    def prepare(self, dtype: Optional[torch.dtype] = None, compile: bool = False) -> bool:
        """The whole module in ``dtype`` (bf16/fp16; diffusers keeps its timestep embedding's
        arithmetic in float32 and casts the result), then torch.compile on request. The prediction
        leaves in float32 (``forward``)."""
        self.eval().requires_grad_(False)
        if dtype is not None:
            self.net.module.to(dtype)
        if compile:
            self.net.compile(dynamic=False)
        return dtype is not None
