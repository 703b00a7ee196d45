"""DDIB from Python: load one or two models (and a classifier) once, then invert, generate and
translate images given as paths, PIL images, numpy arrays or tensors.

    from ddib import DDIB
    bridge = DDIB.from_files("configs/digits.yaml", "assets/digits_unet.pt")
    out = bridge.translate(["assets/digits/3/0060.png"], class_A=3, class_B=[5, 8], steps=50)

Every argument is checked; a wrong one is a ``utils.errors.UserError`` with one line naming it.

This is where the tool's policy lives: the networks' precision, whether to compile, how many images
go through a network at once, the float32 redo and out-of-memory split (``utils.bridge``), and class
names. The command line (``sample_ddib.py``) is a thin layer over it.
"""

from typing import Optional, Sequence, Union

import torch
from PIL import Image

from diffusions import schedule_alphas
from diffusions.schedules import schedules_differ

from .bridge import Bridge, Sampling
from .checkpoints import load_network
from .classes import Labels
from .config import check_config, model_config
from .errors import UserError
from .images import to_uint8
from .inputs import (check_device, check_load_options, check_output, classes_given, image_batch, latent_batch,
                     noise_keys, per_image_list)

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


def _load_codecs(cfg_A, weights_A, cfg_B, weights_B, device, workers: int, one_at_a_time: bool) -> tuple:
    """Each side's image ↔ state codec (models.codec), loaded once when both sides share a model."""
    from models.codec import IDENTITY

    def load(cfg, weights):
        if cfg.get("codec") is None:
            return IDENTITY
        from .diffusers_loading import load_codec
        return load_codec(cfg, weights, device).prepare(workers, one_at_a_time)

    codec_A = load(cfg_A, weights_A)
    return codec_A, codec_A if weights_B is None else load(cfg_B, weights_B)


def default_clip_x0(cfg: dict) -> bool:
    """Clipping x₀ to the image range is on for pixel models (a diffusers model: as its scheduler's
    clip_sample says) and off for latent ones, whose state is no image."""
    if cfg.get("codec") is not None:
        return False
    return cfg["model"].get("clip_sample", True) if cfg.get("family") == "diffusers" else True


def check_sampling_for(cfg_B: dict, sampling: dict) -> None:
    """Settings the target model must allow: classifier-free guidance needs its null class, and x₀
    clipping needs it to denoise images."""
    if sampling.get("cfg_scale") is not None and cfg_B["model"].get("null_class") is None:
        raise UserError("cfg_scale (classifier-free guidance) needs a model trained with a null class, such as "
                        "DiT; the target model has none")
    if sampling.get("clip_x0") and cfg_B.get("codec") is not None:
        raise UserError("clip_x0 clips the denoised state to [-1, 1], and this model's state is a VAE latent, "
                        "not an image: leave clip_x0 off")


class DDIB:
    """A loaded bridge: ``invert`` images to latents with class A, ``generate`` images from latents
    with class B, or ``translate`` both at once. Sampling settings (``steps``, ``respace_type``,
    ``solver``, ``eta``, ``clip_x0``, ``classifier_scale``, ``seed``, ``t_end``) are set at construction
    and can be overridden per call.

    Classes: ``class_A`` is one class for every image, or a list with one per image. ``class_B`` is one
    class, or a list of target classes that every image goes to (as ``--class_B 5,8``): the result is
    then one list per image, one output per target. ``class_B_per_image`` gives each image its own
    target instead. A class is a label or a name the model knows.

    Outputs: PIL images (8 bits, values clamped), or with ``output="tensor"`` float32 NCHW on the CPU,
    unclamped: in [-1, 1] up to the solver's error, a little outside it where x₀ is not clipped."""

    def __init__(self, bridge: Bridge, image_size: int, micro_batch: int = 8, compiled: bool = False,
                 precision: str = "float32", configs: Optional[tuple] = None):
        self.bridge, self.image_size, self.micro_batch = bridge, image_size, micro_batch
        self.compiled, self.precision = compiled, precision
        self.configs = configs  # (cfg_A, cfg_B) as loaded

    @classmethod
    def from_pretrained(cls, weights, weights_B=None, *, scheduler_config=None, scheduler_config_B=None,
                        **kwargs) -> "DDIB":
        """Load diffusers models: a pipeline folder, a model folder or a hub id (``google/ddpm-cat-256``)
        for the source side, optionally another for the target side. The architecture, schedule, VAE
        and class names come from the folder; ``scheduler_config`` gives the schedule of a model
        folder that has none. Other arguments as ``from_files``."""
        return cls.from_files(scheduler_config, weights, config_B=scheduler_config_B, weights_B=weights_B, **kwargs)

    @classmethod
    def from_files(cls, config, weights, classifier=None, *, config_B=None, weights_B=None, device=None,
                   precision: str = "auto", compile: Union[str, bool] = "auto", micro_batch: Union[int, str] = 8,
                   deterministic: bool = False, workload: Optional[int] = None, warn=print,
                   **sampling) -> "DDIB":
        """Load a model from its config (a path, or a dict as ``load_config`` returns or a YAML file
        holds) and weights, and optionally a second model for the generation half and a noisy
        classifier for guidance on the target side. ``weights`` may also be a diffusers folder or hub
        id, ``config`` then None (or the scheduler config of a model folder without one); likewise
        ``weights_B`` and ``config_B``.

        device: ``cpu``, ``cuda``, ``cuda:N`` or a torch.device (default: the GPU when there is one).
        precision: ``auto`` | ``no`` | ``bf16`` | ``fp16``. compile: ``auto`` (on a GPU when ``workload``,
        the number of images this process will translate, is at least 256), ``on``/``off`` or True/False.
        micro_batch: images per network call (a positive integer), or ``auto`` (the largest that fits the
        GPU). On the CPU each batch is split over a pool of single-threaded workers, one per torch thread
        (the process's torch threads are set to 1): OpenMP's per-operation barriers cost many times over
        when another program shares the cores. deterministic: on the CPU, each image goes through the
        networks alone, so outputs are bit-identical for any batch size or process count (about 2x slower
        on small models). Every argument is checked: a wrong one is a ``UserError`` naming it.
        """
        from .diffusers_loading import is_diffusers_source

        check_load_options(config, weights, classifier, config_B, weights_B, compile, micro_batch, deterministic,
                           workload, warn)
        cfg_A = _config(config, weights, "config")
        if config_B is None and not is_diffusers_source(weights_B):
            cfg_B = cfg_A  # one model, or the same architecture with other weights
        else:
            cfg_B = _config(config_B, weights_B, "config_B")
        check_bridgeable(cfg_A, cfg_B)
        device = check_device(device)
        if classifier is not None and cfg_B["classifier"] is None:
            raise UserError("a classifier was given but the target model's config has no 'classifier' section")
        if classifier is None and sampling.get("classifier_scale", 0) not in (0, None):
            raise UserError("classifier_scale needs a classifier (classifier=PATH to its weights)")
        sampling.setdefault("classifier_scale", 1.0 if classifier is not None else 0.0)
        sampling.setdefault("clip_x0", default_clip_x0(cfg_B))
        check_sampling_for(cfg_B, sampling)
        schedule = schedule_alphas(cfg_A["diffusion"])  # the source's table (check_bridgeable: B's agrees)
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
        codec_A, codec_B = _load_codecs(cfg_A, weights, cfg_B, weights_B, device, workers, deterministic)
        if micro_batch == "auto":  # probed on the prepared networks: their dtype decides the memory
            from models.fast import pick_micro_batch
            micro_batch = pick_micro_batch(model_A, clf, device, cpu_batch=8)
        bridge = Bridge(model_A=model_A, model_B=model_B, classifier=clf, device=device, sampling=sampling,
                        alphas_cumprod=schedule, low_precision=low,
                        fallback=lambda: _prepare(load(), None, False, workers, deterministic)[0],
                        pad_to=micro_batch if compiled and not workers else None, warn=warn,
                        codec_A=codec_A, codec_B=codec_B)
        return cls(bridge, cfg_A["model"]["image_size"], int(micro_batch), compiled,
                   {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype] if low else "float32", (cfg_A, cfg_B))

    # --- conversion -------------------------------------------------------------------------------
    def images_to_tensor(self, images) -> torch.Tensor:
        """Paths, PIL images, numpy arrays (HW/HWC, or an NHWC batch) or float CHW/NCHW tensors in
        [-1, 1] → a float32 NCHW batch. Arrays and PIL images follow the rules of files: uint8 as it
        is, uint16 as 16 bits, bool as black and white, floats in [0, 1]; others are refused."""
        return image_batch(images, self.image_size, self.image_channels)

    @property
    def image_channels(self) -> int:
        """Channels of the images (a latent model's images are RGB; its networks see the VAE's latents)."""
        return self.bridge.model_A.in_channels if self.bridge.codec_A.describe() == "identity" else 3

    def _classes(self, value, n: int, network, name: str, per_image: bool) -> list:
        """One label per image from one class (or a list of one per image when ``per_image``)."""
        if network.num_classes is None:
            if value is not None:
                raise UserError(f"{name}: that side's model is unconditional: give no class")
            return [None] * n
        if value is None:
            raise UserError(f"{name}: that side's model is class-conditional ({network.num_classes} classes): "
                            "give a class")
        if isinstance(value, (list, tuple)) != per_image:
            raise UserError(f"{name}: expected {'a list of one class per image' if per_image else 'one class'}, "
                            f"got {type(value).__name__}")
        values = per_image_list(value, n, name) if per_image else [value] * n
        labels = Labels.of(network)
        try:
            return [labels.resolve(v) for v in values]
        except UserError as e:
            raise UserError(f"{name}: {e}") from None

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
        """Images → latents (float32 NCHW on the CPU), conditioned on ``class_A`` (one class, or a list
        of one per image; None for an unconditional model)."""
        s = self._sampling(sampling)
        x = self.images_to_tensor(images)
        class_A = classes_given(class_A)
        ys = self._classes(class_A, len(x), self.bridge.model_A, "class_A", isinstance(class_A, (list, tuple)))
        return self._batched(lambda sl: self.bridge.invert(x[sl], ys[sl], sampling=s), len(x))

    def generate(self, latents, class_B=None, output: str = "pil", keys: Sequence[str] = None, *,
                 class_B_per_image=None, **sampling):
        """Latents (as ``invert`` returns them) → images conditioned on ``class_B`` (one class, or a list
        of targets: one list of outputs per latent) or ``class_B_per_image``. ``keys`` name each image's
        noise when η > 0 (default: its index)."""
        s = self._sampling(sampling)
        check_output(output)
        latents = latent_batch(latents, self.bridge.state_shape)
        keys = noise_keys(keys, len(latents))
        class_B, class_B_per_image = classes_given(class_B), classes_given(class_B_per_image)
        if isinstance(class_B, (list, tuple)):
            if class_B_per_image is not None:
                raise UserError("give class_B or class_B_per_image, not both")
            if not class_B:
                raise UserError("class_B: the list of targets is empty")
            per_target = [self._generate(latents, b, False, output, [f"{k}#{b}" for k in keys], s) for b in class_B]
            return [[outs[i] for outs in per_target] for i in range(len(latents))]
        if class_B_per_image is not None:
            if class_B is not None:
                raise UserError("give class_B or class_B_per_image, not both")
            return self._generate(latents, class_B_per_image, True, output, keys, s)
        return self._generate(latents, class_B, False, output, keys, s)

    def _generate(self, latents, classes, per_image: bool, output: str, keys: list, s: Sampling):
        ys = self._classes(classes, len(latents), self.bridge.model_B,
                           "class_B_per_image" if per_image else "class_B", per_image)
        out = self._batched(lambda sl: self.bridge.generate(latents[sl], ys[sl], keys[sl], sampling=s), len(latents))
        return out if output == "tensor" else [Image.fromarray(a) for a in to_uint8(out)]

    def translate(self, images, class_A=None, class_B=None, output: str = "pil", *, class_B_per_image=None,
                  **sampling):
        """Images of class A → class B: ``generate(invert(images, class_A), class_B)``. With a list of
        target classes each image is inverted once and generated once per target: the result is then
        one list per image, in the order of ``class_B``."""
        check_output(output)
        self._sampling(sampling)  # a bad setting is named before any image is read
        latents = self.invert(images, class_A, **sampling)
        return self.generate(latents, class_B, output, class_B_per_image=class_B_per_image, **sampling)

    def _sampling(self, overrides: dict) -> Sampling:
        if overrides and self.configs is not None:
            check_sampling_for(self.configs[1], overrides)
        try:
            s = self.bridge.with_sampling(**overrides) if overrides else self.bridge.sampling
        except ValueError as e:
            raise UserError(str(e)) from None
        if s.classifier_scale != 0 and self.bridge.classifier is None:
            raise UserError("classifier_scale needs a classifier: load one with DDIB.from_files(..., classifier=PATH)")
        return s


def _config(config, weights, what: str) -> dict:
    """One side's config: a dict is checked as a file's would be (one a diffusers folder described is
    already checked), a path or None goes to ``model_config`` (a diffusers folder needs none)."""
    if isinstance(config, dict):
        return config if config.get("family") == "diffusers" else check_config(config, f"the {what} dict")
    return model_config(config, weights)


def check_bridgeable(cfg_A, cfg_B) -> None:
    """Two models can bridge only through one latent space: the same codec (pixels, or the same VAE
    latent), image shape and noise schedule. Schedules built by different libraries (guided-diffusion's
    float64 ``linear`` and diffusers' float32 one) are one schedule when their ᾱ agree within
    ``SCHEDULE_RTOL``; the bridge then samples with the source model's table."""
    codec_A, codec_B = cfg_A.get("codec"), cfg_B.get("codec")
    if codec_A != codec_B:
        def space(c):
            return "pixels" if c is None else f"a VAE latent (scaling_factor {c['scaling_factor']:g})"
        raise UserError(f"the two models denoise different spaces ({space(codec_A)} vs {space(codec_B)}"
                        f"{', other VAEs' if codec_A and codec_B else ''}); a bridge needs one latent space")
    for key in ("image_size", "in_channels"):
        if cfg_A["model"].get(key, 3) != cfg_B["model"].get(key, 3):
            raise UserError(f"the two models differ in {key} ({cfg_A['model'].get(key, 3)} vs "
                            f"{cfg_B['model'].get(key, 3)}); a bridge needs the same image shape on both sides")
    if cfg_A["diffusion"] != cfg_B["diffusion"] and schedules_differ(schedule_alphas(cfg_A["diffusion"]),
                                                                     schedule_alphas(cfg_B["diffusion"])):
        raise UserError(f"the two models differ in their noise schedule ({_schedule_text(cfg_A)} vs "
                        f"{_schedule_text(cfg_B)}); a bridge needs the same schedule on both sides")


def _schedule_text(cfg: dict) -> str:
    section = dict(cfg["diffusion"])
    if section.get("trained_betas") is not None:
        section["trained_betas"] = "[…]"
    return str(section)
