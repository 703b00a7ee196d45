"""What the Python API accepts, checked and converted: images, latents, noise keys and load options.

Every argument of a wrong type, shape, range or value is a ``UserError`` with one line that names it,
never a ``ValueError`` from deep inside numpy, PIL or torch. The rules for pixels are those of files
(``utils.images``): uint8 as it is, uint16 as 16 bits, bool as black and white, floats in [0, 1];
a float tensor is already what the networks take (CHW or NCHW, values in [-1, 1]).
"""

import numbers
import os
from pathlib import Path
from typing import List

import numpy as np
import torch
from PIL import Image

from .errors import UserError, printable
from .images import ImageReadError, array_to_image, load_image, pil_to_array, to_tensor

OUTPUTS = ("pil", "tensor")
COMPILE_CHOICES = ("auto", "on", "off", True, False)


def _shown(value, limit: int = 60) -> str:
    return printable(repr(value), limit)


def _type(value) -> str:
    return type(value).__name__


def _items(images) -> list:
    """The single images in ``images``: one image, a batch (NCHW tensor, NHWC array) or a list of them."""
    if images is None:
        raise UserError("no images: give a path, a PIL image, a numpy array, a tensor, or a list of them")
    if torch.is_tensor(images) or isinstance(images, np.ndarray):
        if images.ndim == 4:
            return list(images)
        if images.ndim in (2, 3):
            return [images]
        raise UserError(f"images: a {_type(images)} of shape {tuple(images.shape)} is neither one image nor a "
                        "batch of them")
    if isinstance(images, (str, os.PathLike, Image.Image)):
        return [images]
    if isinstance(images, (list, tuple)):
        return list(images)
    raise UserError(f"images: expected a path, a PIL image, a numpy array, a tensor or a list of them; got "
                    f"{_type(images)}")


def _from_tensor(x: torch.Tensor, where: str, size: int, channels: int) -> torch.Tensor:
    if x.dim() != 3:
        raise UserError(f"{where}: a tensor image is CHW (or a batch, NCHW); got shape {tuple(x.shape)}")
    if not x.is_floating_point():  # integer pixels: the rules of arrays, resized as files are
        if x.shape[0] not in (1, 2, 3, 4):
            raise UserError(f"{where}: an integer tensor image is CHW with 1 to 4 channels; got shape "
                            f"{tuple(x.shape)}")
        return _from_image(x.detach().cpu().permute(1, 2, 0).numpy(), where, size)
    if tuple(x.shape) != (channels, size, size):
        hint = " (channels last? a tensor image is CHW)" if x.shape[-1] == channels and x.shape[0] != channels \
            else "; give a PIL image or an array to have it resized" if x.shape[0] == channels else ""
        raise UserError(f"{where}: a float tensor image must be {channels}×{size}×{size} (CHW, values in "
                        f"[-1, 1]); got shape {tuple(x.shape)}{hint}")
    x = x.detach().to("cpu", torch.float32)
    if not torch.isfinite(x).all():
        raise UserError(f"{where}: the tensor holds NaN or inf values")
    return x


def _from_image(image, where: str, size: int) -> torch.Tensor:
    """A PIL image or a numpy array, read by the rules of files, resized and cropped to ``size``."""
    try:
        return _to_unit(pil_to_array(array_to_image(image) if isinstance(image, np.ndarray) else image, size))
    except ImageReadError as e:
        raise UserError(f"{where}: {e}") from None


def _to_unit(arr: np.ndarray) -> torch.Tensor:
    """HWC uint8 → CHW float32 in [-1, 1], as the folder loop converts."""
    return to_tensor([arr])[0]


def _from_path(item, where: str, size: int) -> torch.Tensor:
    text = os.fspath(item)
    if not str(text).strip():
        raise UserError(f"{where}: an empty path")
    path = Path(text)
    if not path.exists():
        raise UserError(f"image not found: {printable(str(path))}")
    if path.is_dir():
        raise UserError(f"{printable(str(path))} is a folder, not an image file")
    try:
        return _to_unit(load_image(path, size))
    except ImageReadError as e:
        raise UserError(f"{printable(str(path))}: {e}") from None


def image_batch(images, size: int, channels: int) -> torch.Tensor:
    """Paths, PIL images, numpy arrays (HW/HWC, or an NHWC batch) and tensors (CHW/NCHW) → a float32
    NCHW batch in [-1, 1]; images other than float tensors are resized and centre-cropped to ``size``."""
    items = _items(images)
    if not items:
        raise UserError("no images: the list is empty")
    out = []
    for i, item in enumerate(items):
        where = f"image {i}"
        if torch.is_tensor(item):
            out.append(_from_tensor(item, where, size, channels))
        elif isinstance(item, (np.ndarray, Image.Image)):
            out.append(_from_image(item, where, size))
        elif isinstance(item, (str, os.PathLike)):
            out.append(_from_path(item, where, size))
        else:
            raise UserError(f"{where}: expected a path, a PIL image, a numpy array or a tensor; got {_type(item)}")
    if any(x.shape[0] != channels for x in out):
        raise UserError(f"the model takes {channels}-channel images")
    return torch.stack(out)


def latent_batch(latents, shape: tuple) -> torch.Tensor:
    """Latents as ``invert`` returns them (an NCHW tensor), one CHW latent, or a list of them → a float32
    NCHW batch; ``shape`` is one latent's (C, H, W)."""
    if isinstance(latents, (list, tuple)):
        if not latents:
            raise UserError("no latents: the list is empty")
        bad = next((i for i, x in enumerate(latents) if not torch.is_tensor(x)), None)
        if bad is not None:
            raise UserError(f"latent {bad}: expected a tensor, got {_type(latents[bad])}")
        if any(x.dim() != 3 or x.shape != latents[0].shape for x in latents):
            raise UserError(f"a list of latents holds CHW tensors of one shape, one per image "
                            f"({'×'.join(map(str, shape))})")
        latents = torch.stack([x.detach().cpu() for x in latents])
    if isinstance(latents, np.ndarray):
        latents = torch.from_numpy(latents)
    if not torch.is_tensor(latents):
        raise UserError(f"latents: expected a tensor (what invert returns) or a list of them; got {_type(latents)}")
    if latents.dim() == 3:
        latents = latents[None]
    if latents.dim() != 4 or tuple(latents.shape[1:]) != tuple(shape):
        raise UserError(f"latents must be N×{'×'.join(map(str, shape))} (what invert returns); got shape "
                        f"{tuple(latents.shape)}")
    if len(latents) == 0:
        raise UserError("no latents: the batch is empty")
    if not latents.is_floating_point():
        raise UserError(f"latents must be floating point; got {latents.dtype}")
    latents = latents.detach().to("cpu", torch.float32)
    if not torch.isfinite(latents).all():
        raise UserError("latents hold NaN or inf values")
    return latents


def noise_keys(keys, n: int) -> List[str]:
    """One name per image for its noise when η > 0 (default: its index)."""
    if keys is None:
        return [str(i) for i in range(n)]
    if isinstance(keys, (str, bytes)) or not isinstance(keys, (list, tuple)):
        raise UserError(f"keys: expected a list of {n} strings, one per image; got {_type(keys)}")
    if len(keys) != n:
        raise UserError(f"keys: {len(keys)} keys for {n} images; give one per image")
    if not all(isinstance(k, str) for k in keys):
        raise UserError("keys: every key must be a string")
    return list(keys)


def check_output(output) -> str:
    if output not in OUTPUTS:
        raise UserError(f"output must be 'pil' or 'tensor'; got {_shown(output)}")
    return output


def check_load_options(config, weights, classifier, config_B, weights_B, compile, micro_batch, deterministic,
                       workload, warn) -> None:
    """The arguments of ``DDIB.from_files`` that need no file read."""
    for name, value, optional in (("config", config, True), ("weights", weights, False),
                                  ("classifier", classifier, True), ("config_B", config_B, True),
                                  ("weights_B", weights_B, True)):
        if value is None and optional:
            continue
        if isinstance(value, dict) and name.startswith("config"):
            continue
        if not isinstance(value, (str, os.PathLike)):
            raise UserError(f"{name}: expected a path{' or a config dict' if name.startswith('config') else ''}"
                            f"{' or a diffusers folder or hub id' if name.startswith('weights') else ''}; "
                            f"got {_type(value)}")
        if not str(os.fspath(value)).strip():
            raise UserError(f"{name} is an empty path")
    if config_B is not None and weights_B is None:
        raise UserError("config_B and weights_B go together (config_B describes the weights_B model)")
    if compile not in COMPILE_CHOICES or isinstance(compile, (int, float)) and not isinstance(compile, bool):
        raise UserError(f"compile must be 'auto', 'on', 'off', True or False; got {_shown(compile)}")
    if micro_batch != "auto" and (not isinstance(micro_batch, numbers.Integral) or isinstance(micro_batch, bool)
                                  or micro_batch < 1):
        raise UserError(f"micro_batch must be a positive integer or 'auto'; got {_shown(micro_batch)}")
    if not isinstance(deterministic, bool):
        raise UserError(f"deterministic must be True or False; got {_shown(deterministic)}")
    if workload is not None and (not isinstance(workload, numbers.Integral) or isinstance(workload, bool)
                                 or workload < 0):
        raise UserError(f"workload must be a number of images or None; got {_shown(workload)}")
    if not callable(warn):
        raise UserError(f"warn must be a function taking a message; got {_type(warn)}")


def check_device(device) -> torch.device:
    """``device`` (None: the GPU when there is one) as a torch device that exists here."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, (str, torch.device)):
        raise UserError(f"device: expected 'cpu', 'cuda', 'cuda:N' or a torch.device; got {_type(device)}")
    try:
        device = torch.device(device)
    except (RuntimeError, ValueError):
        raise UserError(f"device {_shown(device)} is no device torch knows (cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {str(device)!r}: this torch build or machine has no CUDA GPU; use 'cpu'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"device {str(device)!r}: there are {torch.cuda.device_count()} GPU(s)")
    elif device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("device 'mps' is not available here; use 'cpu'")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"device {str(device)!r} is not supported; use 'cpu' or 'cuda'")
    return device


def classes_given(value):
    """Classes as given, with a tensor or array of labels read as a list (a 0-d one as one label)."""
    if torch.is_tensor(value) or isinstance(value, np.ndarray):
        return value.tolist()
    return value


def per_image_list(values, n: int, what: str) -> list:
    """A list of one value per image, checked for length."""
    values = list(values)
    if len(values) != n:
        raise UserError(f"{what}: {len(values)} classes for {n} images; give one per image")
    return values
