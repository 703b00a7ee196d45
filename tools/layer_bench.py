"""Layer micro-benchmarks of the fast path's rewrites, at the shapes one UNet forward runs them.

Seconds on a GPU, so a GPU session can check each rewrite before the whole-model benchmark:

- ``upsample``: an up ResBlock's nearest ×2 upsampling + 3×3 convolution, as guided-diffusion runs it,
  against ``models.fast.UpsampleConv2d`` (one stride-2 transposed convolution, 4/9 of the
  multiply-adds). Eager, cuDNN/oneDNN, channels_last.
- ``groupnorm``: the compiled ``silu(group_norm(x) * (1 + scale) + shift)`` with inductor's own
  GroupNorm (``native``) against one whose statistics are reduced per channel over the spatial
  positions first (in NHWC the channels are the contiguous axis) and then combined per group with
  the law of total variance (``channel_stats``). GB/s counts the three unavoidable passes
  (statistics read, normalise read, write): compare with the card's bandwidth.

Each part reports ms per call and the sum over one forward (each shape times how often the UNet runs
it), largest shapes first until ``--time_budget``. On the CPU it runs too, which checks the code, not
the GPU numbers.

    python tools/layer_bench.py --config configs/256x256_diffusion.yaml --batch 32 --device cuda
"""

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.fast import UpsampleConv2d, raise_compile_limits  # noqa: E402
from models.unet import ResBlock, UNetModel, Upsample  # noqa: E402
from tools.benchmark import one_image_inputs, sync  # noqa: E402

GROUPS = 32
EPS = 1e-5
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def group_norm_channel_stats(x, num_groups, weight, bias, eps=EPS):
    """``F.group_norm`` with its statistics reduced per channel first, then per group (float32)."""
    n, c = x.shape[:2]
    spatial = tuple(range(2, x.dim()))
    var_c, mean_c = torch.var_mean(x.float(), dim=spatial, correction=0)
    mean_c, var_c = mean_c.view(n, num_groups, -1), var_c.view(n, num_groups, -1)
    mean_g = mean_c.mean(-1, keepdim=True)
    var_g = (var_c + (mean_c - mean_g).square()).mean(-1, keepdim=True)  # equal counts per channel
    scale = torch.rsqrt(var_g + eps) * weight.float().view(1, num_groups, -1)
    shift = bias.float().view(1, num_groups, -1) - mean_g * scale
    shape = (n, c) + (1,) * len(spatial)
    return (x.float() * scale.reshape(shape) + shift.reshape(shape)).to(x.dtype)


def native(x, weight, bias, scale, shift):
    return F.silu(F.group_norm(x, GROUPS, weight, bias, EPS) * (1 + scale) + shift)


def channel_stats(x, weight, bias, scale, shift):
    return F.silu(group_norm_channel_stats(x, GROUPS, weight, bias, EPS) * (1 + scale) + shift)


def layer_shapes(model_cfg: dict) -> dict:
    """Input shapes (without batch) of every GroupNorm and every upsampling convolution of one
    forward, with how often each occurs: {"groupnorm": Counter, "upsample": Counter of (C, H, W, out)}."""
    found = {"groupnorm": Counter(), "upsample": Counter()}
    with torch.device("meta"):
        unet = UNetModel(**model_cfg)
        hooks = []
        for m in unet.modules():
            if isinstance(m, torch.nn.GroupNorm):
                hooks.append(m.register_forward_pre_hook(
                    lambda _, args: found["groupnorm"].update([tuple(args[0].shape[1:])])))
            if isinstance(m, ResBlock) and isinstance(m.h_upd, Upsample):
                out = m.in_layers[-1].out_channels
                hooks.append(m.h_upd.register_forward_pre_hook(
                    lambda _, args, out=out: found["upsample"].update([tuple(args[0].shape[1:]) + (out,)])))
        with torch.no_grad():
            unet(*one_image_inputs(model_cfg))
    for h in hooks:
        h.remove()
    return found


def time_call(fn, args, device, repeats: int) -> float:
    """Seconds per call, after one warm-up call (which compiles or picks algorithms)."""
    with torch.no_grad():
        fn(*args)
        sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            fn(*args)
        sync(device)
    return (time.perf_counter() - start) / repeats


def _randn(shape, gen, device, dtype, scale=1.0):
    x = (scale * torch.randn(shape, generator=gen)).to(device, dtype)
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def groupnorm_case(shape, batch, dtype, device, gen):
    c = shape[0]
    cond = (batch, c) + (1,) * (len(shape) - 1)
    x = _randn((batch,) + shape, gen, device, dtype)
    return (x, _randn((c,), gen, device, dtype), _randn((c,), gen, device, dtype),
            _randn(cond, gen, device, dtype, 0.1), _randn(cond, gen, device, dtype, 0.1)), x.nbytes


def upsample_case(shape, batch, dtype, device, gen):
    c, h, w, out = shape
    conv = torch.nn.Conv2d(c, out, 3, padding=1).to(device)
    fused = UpsampleConv2d(conv).to(dtype=dtype, memory_format=torch.channels_last)
    x = _randn((batch, c, h, w), gen, device, dtype)
    return (x, fused), x.nbytes


def unfused_upsample(x, fused):
    return F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), fused.weight, fused.bias, padding=1)


def fused_upsample(x, fused):
    return fused(x)


def bench_part(name, shapes: Counter, variants: dict, make_case, args, device, dtype, deadline) -> dict:
    """Time every variant at each shape (largest traffic first) until ``deadline``."""
    gen = torch.Generator().manual_seed(0)
    ordered = sorted(shapes.items(), key=lambda kv: -kv[1] * torch.Size(kv[0]).numel())
    total = sum(n * torch.Size(s).numel() for s, n in shapes.items())
    rows, done = [], 0
    for shape, count in ordered:
        if time.perf_counter() > deadline:
            break
        case, nbytes = make_case(shape, args.batch, dtype, device, gen)
        with torch.no_grad():
            ref = next(iter(variants.values()))(*case).float()
        row = dict(shape=list(shape), count=count)
        for vname, fn in variants.items():
            sec = time_call(fn, case, device, args.repeats)
            with torch.no_grad():
                out = fn(*case).float()
            row[vname] = dict(ms=sec * 1e3, rel_err=((out - ref).norm() / ref.norm()).item())
            if name == "groupnorm":
                row[vname]["gbps_3_passes"] = 3 * nbytes / sec / 1e9
        rows.append(row)
        done += count * torch.Size(shape).numel()
        print(f"{name} {str(tuple(shape)):>22} ×{count}: "
              + ", ".join(f"{v} {row[v]['ms']:.3f} ms" for v in variants), flush=True)
    return dict(rows=rows, share_timed=done / total if total else 1.0,
                ms_per_forward={v: sum(r["count"] * r[v]["ms"] for r in rows) for v in variants})


def run(args) -> dict:
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    cfg = yaml.safe_load(Path(args.config).read_text())["model"]
    shapes = layer_shapes(cfg)
    raise_compile_limits()  # one static-shape compile per GroupNorm shape
    parts = {
        "upsample": ({"unfused": unfused_upsample, "fused": fused_upsample}, upsample_case),
        "groupnorm": ({"native": torch.compile(native, dynamic=False),
                       "channel_stats": torch.compile(channel_stats, dynamic=False)}, groupnorm_case),
    }
    start = time.perf_counter()
    result = dict(config=args.config, batch=args.batch, dtype=args.dtype, device=str(device), torch=torch.__version__,
                  device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU")
    for name in [part for part in parts if part in args.parts.split(",")]:
        variants, make_case = parts[name]
        deadline = start + args.time_budget * (0.25 if name == "upsample" else 1.0)
        result[name] = bench_part(name, shapes[name], variants, make_case, args, device, dtype, deadline)
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cuda = torch.cuda.is_available()
    p.add_argument("--config", default="configs/256x256_diffusion.yaml" if cuda else "configs/digits.yaml", help="model config whose layer shapes are timed")
    p.add_argument("--batch", type=int, default=32 if cuda else 4, help="batch size")
    p.add_argument("--device", default="cuda" if cuda else "cpu", help="device to time on")
    p.add_argument("--dtype", choices=list(DTYPES), default="bf16" if cuda else "fp32", help="activation and weight dtype")
    p.add_argument("--parts", default="upsample,groupnorm", help="comma list of upsample, groupnorm")
    p.add_argument("--repeats", type=int, default=20 if cuda else 3, help="timed repeats per layer (median reported)")
    p.add_argument("--time_budget", type=float, default=90.0,
                   help="seconds in all (upsampling gets the first quarter); larger shapes go first")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    result = run(args)
    for name in ("upsample", "groupnorm"):
        if name in result:
            part = result[name]
            worst = max((r[v]["rel_err"] for r in part["rows"] for v in part["ms_per_forward"]), default=0.0)
            print(f"{name}: the shapes timed hold {100 * part['share_timed']:.0f} % of its elements; ms per "
                  "forward over them: " + ", ".join(f"{k} {v:.2f}" for k, v in part["ms_per_forward"].items())
                  + f"; largest relative difference between variants {worst:.1e}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
