"""Fast inference for the ADM UNet and classifier: 16-bit weights, channels_last, torch.compile.

Why not autocast: autocast re-casts every float32 weight on every call and runs GroupNorm in float32,
so on a GPU about a third of eager bf16 time goes to casts and copies. Here the blocks' weights are
cast once; the timestep/class embedding, the ResBlocks' embedding projections and the output head
stay in float32, so ε leaves the network in float32 and timesteps are embedded exactly. GroupNorm
runs in the activation dtype: PyTorch's bf16/fp16 GroupNorm kernels (and inductor's decomposition)
accumulate their statistics in float32 anyway, so guided-diffusion's float32 round trip only costs
memory traffic.

Call these after ``load_state_dict``: they keep every parameter name, so state_dict stays
guided-diffusion compatible, but they change dtypes and memory formats in place.
"""

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .network import ADMNetwork
from .unet import EncoderUNetModel, GroupNorm32, ResBlock, UNetModel, Upsample

# The parts guided-diffusion's ``--use_fp16`` converts; time_embed, label_emb and out stay float32.
_BLOCKS = ("input_blocks", "middle_block", "output_blocks")
_CONVS = (nn.Conv1d, nn.Conv2d)
HALF_DTYPES = (torch.float16, torch.bfloat16)


class LowPrecisionGroupNorm(nn.GroupNorm):
    """GroupNorm in the input's dtype (statistics are accumulated in float32 by the kernel)."""

    def forward(self, x):
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


# Rows: taps of the 4-wide transposed kernel; columns: taps of the 3×3 kernel that land on them.
_UPSAMPLE_TAPS = ((0., 0., 1.), (0., 1., 1.), (1., 1., 0.), (1., 0., 0.))


class UpsampleConv2d(nn.Conv2d):
    """``conv3x3(nearest_upsample_2x(x))`` as one stride-2 transposed convolution with a 4×4 kernel.

    Nearest upsampling repeats every pixel, so each output pixel of the 3×3 convolution sees only a
    2×2 block of distinct input pixels: summing the taps that land on the same input pixel gives 4
    multiply-adds per output and input channel instead of 9, and the 4×-sized upsampled tensor is
    never written. Keeps the original ``weight``/``bias`` parameters (state_dict unchanged); the
    fused kernel is derived in float32 into a non-persistent buffer, and derived again whenever a
    state_dict is loaded. Same result up to float rounding (summation order).
    """

    def __init__(self, conv: nn.Conv2d):
        if conv.kernel_size != (3, 3) or conv.stride != (1, 1) or conv.padding != (1, 1) or conv.groups != 1:
            raise ValueError("UpsampleConv2d fuses a 3×3, stride-1, padding-1, ungrouped convolution")
        super().__init__(conv.in_channels, conv.out_channels, 3, padding=1, bias=conv.bias is not None,
                         device="meta")
        self.weight, self.bias = conv.weight, conv.bias
        self.register_buffer("fused_weight", self._derive(), persistent=False)
        self.register_load_state_dict_post_hook(UpsampleConv2d._rederive)

    @staticmethod
    def _rederive(module: "UpsampleConv2d", incompatible_keys) -> None:
        module.fused_weight.copy_(module._derive())

    @torch.no_grad()
    def _derive(self) -> torch.Tensor:
        taps = torch.tensor(_UPSAMPLE_TAPS, device=self.weight.device)
        w = torch.einsum("ka,oiab->oikb", taps, self.weight.float())
        return torch.einsum("oikb,lb->iokl", w, taps).to(self.weight.dtype).contiguous()

    def forward(self, x):
        return F.conv_transpose2d(x, self.fused_weight, self.bias, stride=2, padding=1)


class _FusedUpsample(nn.Module):
    """Stands in for ``Upsample(use_conv=True)``: its ``conv`` (same parameter names) upsamples."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = UpsampleConv2d(conv)

    def forward(self, x):
        return self.conv(x)


def fuse_upsampling(model: nn.Module) -> nn.Module:
    """Replace every nearest-×2-then-3×3-conv (up ResBlocks, ``Upsample`` with a conv) by one
    ``UpsampleConv2d``; parameter names, and so the state_dict, stay guided-diffusion's.

    For the 256×256 ImageNet UNet this removes 4.9 % of a forward's FLOPs (the five upsampling
    convolutions at 16² … 256²) and the upsampled copies of their inputs.
    """
    for module in list(model.modules()):
        if isinstance(module, ResBlock) and isinstance(module.h_upd, Upsample):
            module.h_upd = nn.Identity()
            module.in_layers[-1] = UpsampleConv2d(module.in_layers[-1])
        for name, child in module.named_children():
            if isinstance(child, Upsample) and child.use_conv:
                setattr(module, name, _FusedUpsample(child.conv))
    return model


def _blocks(model: nn.Module):
    return [getattr(model, name) for name in _BLOCKS if hasattr(model, name)]


def _swap_group_norms(module: nn.Module) -> None:
    """Replace GroupNorm32 by LowPrecisionGroupNorm, sharing the same parameters (names unchanged)."""
    for name, child in module.named_children():
        if isinstance(child, GroupNorm32):
            new = LowPrecisionGroupNorm(child.num_groups, child.num_channels, child.eps, child.affine)
            new.weight, new.bias = child.weight, child.bias
            setattr(module, name, new)
        else:
            _swap_group_norms(child)


def _cast_blocks(model: nn.Module, dtype: torch.dtype, group_norm: bool) -> None:
    """Cast the blocks' convolutions (and, if ``group_norm``, their GroupNorms) to ``dtype``.

    Linear layers (the ResBlocks' embedding projections) stay float32: they read the float32
    embedding and are negligible in cost.
    """
    kinds = _CONVS + ((nn.GroupNorm,) if group_norm else ())
    for block in _blocks(model):
        for module in block.modules():
            if isinstance(module, kinds):
                module.to(dtype)


def _check_model(model: nn.Module) -> None:
    if not isinstance(model, (UNetModel, EncoderUNetModel)):
        raise TypeError(f"expected a UNetModel or EncoderUNetModel, got {type(model).__name__}")


def raise_compile_limits() -> None:
    """Several prepared models and batch sizes share UNetModel.forward's code object; the default
    recompile limit (8) would silently fall back to eager."""
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(64, getattr(torch._dynamo.config, name)))


def prepare_for_inference(model: nn.Module, dtype: Optional[torch.dtype] = None,
                          channels_last: Optional[bool] = None, compile: bool = False,
                          compile_options: Optional[dict] = None) -> nn.Module:
    """Make a loaded UNetModel or EncoderUNetModel fast for sampling; returns the same module.

    dtype: None keeps float32 (numerically the reference path); torch.bfloat16 / torch.float16 cast
    the blocks once, GroupNorm included. channels_last: None means "when compiling" (inductor then
    keeps NHWC throughout; in eager, CUDA GroupNorm would transpose back). compile: torch.compile
    with static shapes (one compile per batch size: keep the micro-batch fixed and pad the last one),
    with inductor's ``compile_options`` (None: its defaults, what the tool uses).
    Parameters stop requiring grad; classifier guidance still differentiates w.r.t. the input.
    """
    _check_model(model)
    if dtype is not None and dtype not in HALF_DTYPES:
        raise ValueError(f"dtype must be None, torch.bfloat16 or torch.float16, got {dtype}")
    model.eval().requires_grad_(False)
    _swap_group_norms(model)
    fuse_upsampling(model)
    if dtype is not None:
        _cast_blocks(model, dtype, group_norm=True)
    if channels_last if channels_last is not None else compile:
        model.to(memory_format=torch.channels_last)
    if compile:
        raise_compile_limits()
        model.compile(options=compile_options, dynamic=False)
    return model


def default_dtype(device) -> Optional[torch.dtype]:
    """bf16 where the GPU supports it, else fp16 on a GPU; float32 (None) on the CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _probe(model, classifier, batch: int, device, classifier_scale: float) -> None:
    """One eager UNet forward and, with a classifier, one guidance gradient at ``batch``."""
    x = torch.randn(batch, model.in_channels, model.image_size, model.image_size, device=device)
    t = torch.full((batch,), 500, device=device, dtype=torch.long)
    y = torch.zeros(batch, dtype=torch.long, device=device) if model.num_classes else None
    inner = model.net if isinstance(model, ADMNetwork) else model
    with torch.no_grad():
        inner.forward(x, t, y)  # .forward skips torch.compile: probing must not trigger compiles
    if classifier is not None:
        x_in = x.detach().requires_grad_(True)
        logp = F.log_softmax(classifier.forward(x_in, t).float(), dim=-1)[:, 0].sum()
        torch.autograd.grad(logp * classifier_scale, x_in)


def pick_micro_batch(model: nn.Module, classifier: Optional[nn.Module] = None, device=None,
                     candidates: Sequence[int] = (64, 48, 32, 24, 16, 12, 8, 6, 4, 3, 2, 1),
                     memory_fraction: float = 0.85, cpu_batch: int = 4) -> int:
    """The largest micro-batch (from ``candidates``) whose forward (+ guidance step) fits the GPU.

    Tries eager steps at decreasing sizes, catching out-of-memory, and also rejects sizes whose
    peak exceeds ``memory_fraction`` of the card (compiled graphs and fragmentation need headroom).
    On the CPU memory is rarely the limit and big batches do not run faster: returns ``cpu_batch``.
    Call it on the prepared model, so the probe sees the dtype that will run.
    """
    device = torch.device(device if device is not None else next(model.parameters()).device)
    if device.type != "cuda":
        return cpu_batch
    total = torch.cuda.get_device_properties(device).total_memory
    for batch in sorted(candidates, reverse=True):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        try:
            _probe(model, classifier, batch, device, 1.0)
        except torch.cuda.OutOfMemoryError:
            continue
        finally:
            torch.cuda.empty_cache()
        if torch.cuda.max_memory_allocated(device) <= memory_fraction * total:
            return batch
    raise RuntimeError("even a micro-batch of 1 does not fit on the GPU")
