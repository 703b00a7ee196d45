"""Networks: guided-diffusion's ADM UNet and noisy classifier, with its state_dict names."""

from .batching import PerSample
from .unet import EncoderUNetModel, UNetModel

__all__ = ["UNetModel", "EncoderUNetModel", "PerSample"]
