"""What the speed tools compare the product's fast path against; the tool itself never runs these.

guided-diffusion's ``--use_fp16`` conversion, per-call autocast, and torch.compile settings beyond
the defaults the tool uses.
"""

import contextlib
import os
import sys
from typing import Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models.fast import _cast_blocks, _check_model  # noqa: E402

# torch.compile settings to compare on a GPU (tools/benchmark.py's fast_<preset> paths). "default" is
# torch.compile's default mode; "tuned" adds inductor's coordinate-descent tuning of its Triton kernels'
# tile sizes (the GroupNorm/SiLU/add kernels that are most of the non-convolution time) and lowers 1×1
# convolutions (skip connections, attention projections) to matrix products that inductor can fuse
# with their bias and residual adds; "autotune" also benchmarks Triton convolution/GEMM templates
# against cuDNN/cuBLAS (much longer compile); "cudagraphs" replays each step as one CUDA graph
# (launch overhead: matters for small batches).
COMPILE_PRESETS = {
    "default": None,
    "tuned": {"coordinate_descent_tuning": True, "conv_1x1_as_mm": True},
    "autotune": {"max_autotune": True, "coordinate_descent_tuning": True, "conv_1x1_as_mm": True},
    "cudagraphs": {"triton.cudagraphs": True},
}


def compile_options(preset: str) -> Optional[dict]:
    if preset not in COMPILE_PRESETS:
        raise ValueError(f"compile_preset must be one of {', '.join(COMPILE_PRESETS)}, got {preset!r}")
    return COMPILE_PRESETS[preset]


def convert_like_guided_diffusion_fp16(model: torch.nn.Module) -> torch.nn.Module:
    """The baseline: guided-diffusion's ``--use_fp16``. Only the blocks' conv weights become fp16;
    GroupNorm upcasts to float32 and back on every call (GroupNorm32), embeddings and head stay
    float32. Returns the same module, eval mode, parameters not requiring grad."""
    _check_model(model)
    model.eval().requires_grad_(False)
    _cast_blocks(model, torch.float16, group_norm=False)
    return model


def autocast_context(device: torch.device, dtype: Optional[torch.dtype]):
    """``torch.autocast`` for ``dtype`` on ``device`` (the per-call casting baseline), or a no-op."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)
