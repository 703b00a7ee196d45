"""Networks: guided-diffusion's ADM UNet and noisy classifier, with its state_dict names."""

from .unet import EncoderUNetModel, UNetModel

__all__ = ["UNetModel", "EncoderUNetModel"]
