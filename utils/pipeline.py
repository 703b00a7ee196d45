"""DDIB from Python: load one or two models (and a classifier) once, then invert, generate and
translate images given as paths, PIL images, numpy arrays or tensors.

    from ddib import DDIB
    bridge = DDIB.from_files("configs/digits.yaml", "assets/digits_unet.pt")
    out = bridge.translate(["assets/digits/3/0060.png"], class_A=3, class_B=[5, 8], steps=50)

This is where the tool's policy lives: the networks' precision, whether to compile, how many images
go through a network at once, the float32 redo and out-of-memory split (``utils.bridge``), and class
names. The command line (``sample_ddib.py``) is a thin layer over it.
"""

from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from diffusions import alphas_cumprod

from .bridge import Bridge, Sampling
from .checkpoints import load_network
from .classes import Labels
from .config import load_config
from .errors import UserError
from .images import ImageReadError, load_image, pil_to_array, to_tensor, to_uint8

COMPILE_MIN_IMAGES = 256  # per process; below this compile="auto" stays eager
PRECISIONS = ("auto", "no", "fp16", "bf16")


def network_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The networks' dtype (None: float32). ``auto`` is 16 bits on a GPU (bf16 where supported: the fast
    path, faithful within the bounds tests/test_fast.py states) and float32 on the CPU (where bf16 is
    slower per image and less exact)."""
    from models.fast import default_dtype

    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return default_dtype(device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dtype == torch.float16 and device.type == "cpu":
        raise UserError("--mixed_precision fp16 needs a GPU; use bf16 on the CPU")
    return dtype


_CPU_WORKERS = []


def cpu_workers() -> int:
    """torch's thread count as the process started: the split pool's size. Remembered, because building
    a bridge sets the process to one thread and a second bridge would otherwise see one."""
    if not _CPU_WORKERS:
        _CPU_WORKERS.append(torch.get_num_threads())
    return _CPU_WORKERS[0]


def launch_precision(flag: str, launched: str) -> str:
    """``--mixed_precision auto`` takes a 16-bit setting given to ``accelerate launch``; an explicit flag wins."""
    return launched if flag == "auto" and launched in ("fp16", "bf16") else flag


def choose_compile(compile: Union[str, bool], device: torch.device, workload: Optional[int]) -> bool:
    """torch.compile pays back its minutes of compiling only over many images on a GPU."""
    if compile == "auto":
        return device.type == "cuda" and (workload or 0) >= COMPILE_MIN_IMAGES
    return compile in (True, "on")


def _prepare(nets, dtype, compile: bool, workers: int, one_at_a_time: bool):
    """Each distinct network made fast once (shared networks stay shared); on the CPU with ``workers``,
    parts of each batch go through the networks on single-threaded kernels in a pool of that many threads
    (``one_at_a_time``: one image per part, for bit-identical results)."""
    from models import ThreadSplit
    from models.fast import prepare_for_inference

    done, low = {}, False
    for net in nets:
        if net is None or id(net) in done:
            continue
        if hasattr(net, "prepare"):  # an EpsNetwork: its family decides what is fast
            low = net.prepare(dtype, compile) or low
            inner = net
        else:  # the classifier
            inner = prepare_for_inference(net, dtype=dtype, compile=compile)
        if workers:
            if hasattr(inner, "net"):
                inner.net = ThreadSplit(inner.net, workers, one_at_a_time)
            else:
                inner = ThreadSplit(inner, workers, one_at_a_time)
        done[id(net)] = inner
    return tuple(None if net is None else done[id(net)] for net in nets), low


class DDIB:
    """A loaded bridge: ``invert`` images to latents with class A, ``generate`` images from latents
    with class B, or ``translate`` both at once. Sampling settings (``steps``, ``respace_type``,
    ``solver``, ``eta``, ``clip_x0``, ``classifier_scale``, ``seed``) are set at construction and can be
    overridden per call."""

    def __init__(self, bridge: Bridge, image_size: int, micro_batch: int = 8, compiled: bool = False,
                 precision: str = "float32"):
        self.bridge, self.image_size, self.micro_batch = bridge, image_size, micro_batch
        self.compiled, self.precision = compiled, precision

    @classmethod
    def from_files(cls, config, weights, classifier=None, *, config_B=None, weights_B=None, device=None,
                   precision: str = "auto", compile: Union[str, bool] = "auto", micro_batch: Union[int, str] = 8,
                   deterministic: bool = False, workload: Optional[int] = None, warn=print,
                   **sampling) -> "DDIB":
        """Load a model from its config (a path, or a dict from ``load_config``) and weights, and optionally
        a second model for the generation half and a noisy classifier for guidance on the target side.

        precision: ``auto`` | ``no`` | ``bf16`` | ``fp16``. compile: ``auto`` (on a GPU when ``workload``,
        the number of images this process will translate, is at least 256), True/False.
        micro_batch: images per network call, or ``auto`` (the largest that fits the GPU).
        On the CPU each batch is split over a pool of single-threaded workers, one per torch thread (the
        process's torch threads are set to 1): OpenMP's per-operation barriers cost many times over when
        another program shares the cores. deterministic: on the CPU, each image goes through the networks
        alone, so outputs are bit-identical for any batch size or process count (about 2x slower on
        small models).
        """
        cfg_A = config if isinstance(config, dict) else load_config(config)
        cfg_B = cfg_A if config_B is None else config_B if isinstance(config_B, dict) else load_config(config_B)
        check_bridgeable(cfg_A, cfg_B)
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if classifier is not None and cfg_B["classifier"] is None:
            raise UserError("a classifier was given but the target model's config has no 'classifier' section")
        sampling.setdefault("classifier_scale", 1.0 if classifier is not None else 0.0)
        schedule = alphas_cumprod(cfg_A["diffusion"]["beta_schedule"], cfg_A["diffusion"]["total_steps"])
        try:
            sampling = Sampling.make(**sampling).check(schedule)
        except ValueError as e:
            raise UserError(str(e)) from None
        dtype = network_dtype(precision, device)
        compiled = choose_compile(compile, device, workload)
        if device.type == "cuda":  # static shapes: let cuDNN time its algorithms once per shape, as benchmarked
            torch.backends.cudnn.benchmark = True
        workers = 0
        if deterministic and device.type != "cpu":
            warn("deterministic mode is for the CPU; on a GPU results may still differ in the last bits by batch")
        if device.type == "cpu" and (deterministic or not compiled):
            workers = cpu_workers()
            torch.set_num_threads(1)

        def load():
            model_A = load_network(cfg_A, weights, "model", device=device)
            model_B = model_A if weights_B is None else \
                load_network(cfg_B, weights_B, "model", "target model (--weights_B)", device)
            clf = None if classifier is None else load_network(cfg_B, classifier, "classifier", device=device)
            return model_A, model_B, clf

        (model_A, model_B, clf), low = _prepare(load(), dtype, compiled, workers, deterministic)
        if micro_batch == "auto":  # probed on the prepared networks: their dtype decides the memory
            from models.fast import pick_micro_batch
            micro_batch = pick_micro_batch(model_A, clf, device, cpu_batch=8)
        bridge = Bridge(model_A=model_A, model_B=model_B, classifier=clf, device=device, sampling=sampling,
                        alphas_cumprod=schedule, low_precision=low,
                        fallback=lambda: _prepare(load(), None, False, workers, deterministic)[0],
                        pad_to=micro_batch if compiled and not workers else None, warn=warn)
        return cls(bridge, cfg_A["model"]["image_size"], micro_batch, compiled,
                   {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype] if low else "float32")

    # --- conversion -------------------------------------------------------------------------------
    def images_to_tensor(self, images) -> torch.Tensor:
        """Paths, PIL images, uint8 HWC arrays or [-1, 1] CHW/NCHW tensors → a float32 NCHW batch."""
        if torch.is_tensor(images):
            return (images[None] if images.dim() == 3 else images).float()
        if isinstance(images, (str, Path, Image.Image, np.ndarray)):
            images = [images]
        arrays = []
        for item in images:
            if torch.is_tensor(item):
                arrays.append(to_uint8(item))
            elif isinstance(item, Image.Image):
                arrays.append(pil_to_array(item, self.image_size))
            elif isinstance(item, np.ndarray):
                arrays.append(pil_to_array(Image.fromarray(item.astype(np.uint8)), self.image_size))
            else:
                try:
                    arrays.append(load_image(item, self.image_size))
                except ImageReadError as e:
                    raise UserError(f"{item}: {e}") from None
        return to_tensor(arrays)

    def _classes(self, value, n: int, network) -> list:
        if network.num_classes is None:
            if value is not None:
                raise UserError("that side's model is unconditional: give no class")
            return [None] * n
        if value is None:
            raise UserError(f"that side's model is class-conditional ({network.num_classes} classes): give a class")
        values = list(value) if isinstance(value, (list, tuple)) else [value] * n
        if len(values) != n:
            raise UserError(f"{len(values)} classes for {n} images")
        labels = Labels.of(network)
        return [labels.resolve(v) for v in values]

    def _batched(self, fn, n: int):
        outs = []
        for start in range(0, n, self.micro_batch):
            out, ok = fn(slice(start, start + self.micro_batch))
            if not ok.all():
                bad = [start + i for i in (~ok).nonzero().flatten().tolist()]
                raise RuntimeError(f"image(s) {bad} came out non-finite (NaN or inf)")
            outs.append(out.cpu())
        return torch.cat(outs)

    # --- the bridge ------------------------------------------------------------------------------------
    def invert(self, images, class_A=None, **sampling) -> torch.Tensor:
        """Images → latents (float32 NCHW on the CPU), conditioned on ``class_A`` (one class, or one per
        image; None for an unconditional model)."""
        s = self._sampling(sampling)
        x = self.images_to_tensor(images)
        ys = self._classes(class_A, len(x), self.bridge.model_A)
        return self._batched(lambda sl: self.bridge.invert(x[sl], ys[sl], sampling=s), len(x))

    def generate(self, latents: torch.Tensor, class_B=None, output: str = "pil", keys: Sequence[str] = None,
                 **sampling):
        """Latents → images conditioned on ``class_B`` (one class, or one per latent): PIL images, or
        with ``output="tensor"`` a [-1, 1] NCHW tensor. ``keys`` name each image's noise when η > 0."""
        s = self._sampling(sampling)
        ys = self._classes(class_B, len(latents), self.bridge.model_B)
        keys = list(keys) if keys is not None else [str(i) for i in range(len(latents))]
        out = self._batched(lambda sl: self.bridge.generate(latents[sl], ys[sl], keys[sl], sampling=s),
                            len(latents))
        return out if output == "tensor" else [Image.fromarray(a) for a in to_uint8(out)]

    def translate(self, images, class_A=None, class_B=None, output: str = "pil", **sampling):
        """Images of class A → class B. With a list of target classes each image is inverted once and
        generated once per target: the result is then one list per image, in the order of ``class_B``."""
        latents = self.invert(images, class_A, **sampling)
        if not isinstance(class_B, (list, tuple)):
            return self.generate(latents, class_B, output, **sampling)
        per_target = [self.generate(latents, b, output, keys=[f"{i}#{b}" for i in range(len(latents))], **sampling)
                      for b in class_B]
        return [[outs[i] for outs in per_target] for i in range(len(latents))]

    def _sampling(self, overrides: dict) -> Sampling:
        try:
            return self.bridge.with_sampling(**overrides) if overrides else self.bridge.sampling
        except (TypeError, ValueError) as e:
            raise UserError(str(e)) from None


def check_bridgeable(cfg_A, cfg_B) -> None:
    """Two models can bridge only through one latent space: same image shape and noise schedule."""
    for key in ("image_size", "in_channels"):
        if cfg_A["model"].get(key, 3) != cfg_B["model"].get(key, 3):
            raise UserError(f"the two models differ in {key} ({cfg_A['model'].get(key, 3)} vs "
                            f"{cfg_B['model'].get(key, 3)}); a bridge needs the same image shape on both sides")
    if cfg_A["diffusion"] != cfg_B["diffusion"]:
        raise UserError(f"the two models differ in their noise schedule ({cfg_A['diffusion']} vs "
                        f"{cfg_B['diffusion']}); a bridge needs the same schedule on both sides")
