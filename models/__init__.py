"""Networks: guided-diffusion's ADM UNet and noisy classifier (with its state_dict names), and the
seam any other denoising network plugs into."""

from .batching import ThreadSplit
from .network import FAMILIES, ADMNetwork, EpsNetwork, as_network, register_family
from .unet import EncoderUNetModel, UNetModel

__all__ = ["UNetModel", "EncoderUNetModel", "ThreadSplit", "EpsNetwork", "ADMNetwork", "FAMILIES",
           "register_family", "as_network"]
