"""How close the compiled GroupNorm → scale/shift → SiLU of a UNet comes to its memory-traffic floor.

Half of a compiled 256×256 UNet forward's non-convolution time is unexplained by its convolutions
(docs/speed.md). This times, for the GroupNorm input shapes of a config's UNet (channels_last, 16-bit,
at one batch size), the compiled ``silu(group_norm(x) * (1 + scale) + shift)`` two ways:

- ``native``: ``F.group_norm`` as the model runs it (inductor's own lowering);
- ``channel_stats``: statistics reduced per channel over the spatial positions first (in NHWC the
  channels are the contiguous axis, so the reduction reads whole rows), then combined per group
  with the law of total variance; the same normalisation up to rounding.

It reports ms per call, the GB/s of the three unavoidable passes (statistics read, normalise read,
write), and the sum over one forward (each shape times how often the UNet runs it). Seconds on a
GPU; on the CPU it runs too (inductor's C++ backend), which checks the code, not the GPU numbers.

    python tools/norm_bench.py --config configs/256x256_diffusion.yaml --batch 32 --device cuda
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

from models.fast import raise_compile_limits  # noqa: E402
from models.unet import UNetModel  # noqa: E402

GROUPS = 32
EPS = 1e-5


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


VARIANTS = {"native": native, "channel_stats": channel_stats}


def norm_shapes(model_cfg: dict) -> Counter:
    """(channels, *spatial) of every GroupNorm input in one forward, with how often each occurs."""
    shapes = Counter()
    with torch.device("meta"):
        unet = UNetModel(**model_cfg)
        hooks = [m.register_forward_pre_hook(lambda _, args: shapes.update([tuple(args[0].shape[1:])]))
                 for m in unet.modules() if isinstance(m, torch.nn.GroupNorm)]
        size = model_cfg["image_size"]
        y = torch.zeros(1, dtype=torch.long) if model_cfg.get("num_classes") else None
        with torch.no_grad():
            unet(torch.zeros(1, model_cfg["in_channels"], size, size), torch.zeros(1, dtype=torch.long), y)
    for h in hooks:
        h.remove()
    return shapes


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn, args, device, repeats: int) -> float:
    """Seconds per call, after one warm-up call (which compiles)."""
    fn(*args)
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn(*args)
    _sync(device)
    return (time.perf_counter() - start) / repeats


def inputs(shape, batch, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    c = shape[0]
    x = torch.randn((batch,) + shape, generator=gen).to(device, dtype)
    if x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    cond = (batch, c) + (1,) * (len(shape) - 1)
    weight, bias = (torch.randn(c, generator=gen).to(device, dtype) for _ in range(2))
    scale, shift = (0.1 * torch.randn(cond, generator=gen).to(device, dtype) for _ in range(2))
    return x, weight, bias, scale, shift


def run(args) -> dict:
    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    cfg = yaml.safe_load(Path(args.config).read_text())["model"]
    shapes = sorted(norm_shapes(cfg).items(), key=lambda kv: -kv[1] * torch.Size(kv[0]).numel())
    total_bytes = sum(n * torch.Size(s).numel() for s, n in shapes)
    raise_compile_limits()  # one static-shape compile per GroupNorm shape
    compiled = {name: torch.compile(fn, dynamic=False) for name, fn in VARIANTS.items()}
    start, rows = time.perf_counter(), []
    for shape, count in shapes:
        if time.perf_counter() - start > args.time_budget:
            break
        tensors = inputs(shape, args.batch, dtype, device)
        ref = native(*tensors).float()
        row = dict(shape=list(shape), count=count)
        for name, fn in compiled.items():
            with torch.no_grad():
                out = fn(*tensors)
                sec = time_call(fn, tensors, device, args.repeats)
            nbytes = tensors[0].numel() * tensors[0].element_size()
            row[name] = dict(ms=sec * 1e3, gbps_3_passes=3 * nbytes / sec / 1e9,
                             rel_err=((out.float() - ref).norm() / ref.norm()).item())
        rows.append(row)
        print(f"{str(shape):>18} ×{count}: " + ", ".join(
            f"{k} {row[k]['ms']:.3f} ms ({row[k]['gbps_3_passes']:.0f} GB/s)" for k in VARIANTS), flush=True)
    covered = sum(r["count"] * torch.Size(r["shape"]).numel() for r in rows) / total_bytes
    per_forward = {k: sum(r["count"] * r[k]["ms"] for r in rows) for k in VARIANTS}
    return dict(config=args.config, batch=args.batch, dtype=args.dtype, device=str(device),
                device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
                torch=torch.__version__, rows=rows, share_of_norm_traffic_timed=covered,
                ms_per_forward_timed_shapes=per_forward)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cuda = torch.cuda.is_available()
    p.add_argument("--config", default="configs/256x256_diffusion.yaml" if cuda else "configs/digits.yaml")
    p.add_argument("--batch", type=int, default=32 if cuda else 4)
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    p.add_argument("--repeats", type=int, default=20 if cuda else 3)
    p.add_argument("--time_budget", type=float, default=90.0, help="seconds; larger shapes go first")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    result = run(args)
    print(f"shapes timed cover {100 * result['share_of_norm_traffic_timed']:.0f} % of the GroupNorm traffic; "
          "ms per forward over them: " + ", ".join(f"{k} {v:.2f}" for k, v in
                                                  result["ms_per_forward_timed_shapes"].items()))
    if result["rows"]:
        print("max relative error of channel_stats vs native: "
              f"{max(r['channel_stats']['rel_err'] for r in result['rows']):.2e}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
