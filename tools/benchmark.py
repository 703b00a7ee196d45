"""Benchmark DDIB translation speed: eager fp32, eager fp16 (guided-diffusion style), eager bf16
autocast, bf16 prepared eager, and the fast path (16-bit weights + channels_last + torch.compile).

For each batch size and path it times DDIM inversion and generation with a few steps on random
weights (with and without classifier guidance), then extrapolates per-forward times to a full
100+100-step translation (99 inversion + 100 generation UNet forwards, + 100 classifier gradients when
guided). FLOPs are counted once per config with FlopCounterMode on the meta device (2 × MACs).
All paths run in the same process, so the speed-ups are measured against baselines of the same run.

    python tools/benchmark.py --config configs/256x256_diffusion.yaml --batch_sizes 16,64 --out results/
    python tools/benchmark.py            # CPU: the digits-size model, in a few minutes
"""

import argparse
import copy
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusions import alphas_cumprod, eps_from_model, generate, invert, respace  # noqa: E402
from models.fast import default_dtype, pick_micro_batch, prepare_for_inference  # noqa: E402
from tools.baselines import (COMPILE_PRESETS, autocast_context, compile_options,  # noqa: E402
                             convert_like_guided_diffusion_fp16)
from models.unet import EncoderUNetModel, UNetModel  # noqa: E402
from utils import config as utils_config  # noqa: E402
from utils.images import psnr  # noqa: E402

TINY = "tiny"  # --config tiny: the digits model's config (configs/digits.yaml), random weights
DIGITS_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "digits.yaml"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
# Dense bf16 tensor-core throughput of the card (H100/H200): ~790 TFLOP/s.
PEAK_TFLOPS = {"H100": 790.0, "H200": 790.0}
ALL_PATHS = ("eager_fp32", "eager_fp16_gd", "fast", "eager_bf16_autocast", "bf16_eager")
# fast_<preset>: the fast path compiled with another of models.fast.COMPILE_PRESETS (opt-in).
FAST_VARIANTS = tuple(f"fast_{name}" for name in COMPILE_PRESETS if name != "default")
BASELINES = ("eager_fp32", "eager_fp16_gd")
TOTAL_INV, TOTAL_GEN = 99, 100  # UNet forwards of a 100+100-step DDIB translation with our samplers


def load_config(name: str) -> dict:
    """A config through the library's validating loader; ``tiny`` is the digits model's."""
    return utils_config.load_config(DIGITS_CONFIG if name == TINY else name)


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _unzero(model: torch.nn.Module) -> torch.nn.Module:
    """guided-diffusion zero-initialises output convs; give them default random weights so that
    ε, attention and residual branches are not trivially zero (keeps the accuracy columns honest)."""
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d)) and not m.weight.any():
            m.reset_parameters()
    return model


def build_models(cfg: dict, device, seed: int):
    """Random-weight float32 UNet and classifier on ``device`` (initialised there: fast on a GPU)."""
    torch.manual_seed(seed)
    with torch.device(device):
        unet = _unzero(UNetModel(**cfg["model"]))
        clf = _unzero(EncoderUNetModel(**cfg["classifier"])) if cfg.get("classifier") else None
    for m in (unet, clf):
        if m is not None:
            m.eval().requires_grad_(False)
    return unet, clf


def one_image_inputs(model_cfg: dict):
    """(x, t, y) for one image of a UNet config, on the current default device (meta for counting)."""
    size = model_cfg["image_size"]
    y = torch.zeros(1, dtype=torch.long) if model_cfg.get("num_classes") else None
    return torch.zeros(1, model_cfg["in_channels"], size, size), torch.zeros(1, dtype=torch.long), y


def count_flops(cfg: dict) -> dict:
    """FLOPs (2 × MACs) per image: one UNet forward, one classifier forward + input-gradient."""
    with torch.device("meta"):
        unet = UNetModel(**cfg["model"]).requires_grad_(False)
        x, t, y = one_image_inputs(cfg["model"])
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            unet(x, t, y)
        out = {"unet_forward": fc.get_total_flops(), "classifier_grad": 0}
        if cfg.get("classifier"):
            clf = EncoderUNetModel(**cfg["classifier"]).requires_grad_(False)
            x = x.clone().requires_grad_(True)
            with FlopCounterMode(display=False) as fc:
                torch.log_softmax(clf(x, t), dim=-1)[:, 0].sum().backward()
            out["classifier_grad"] = fc.get_total_flops()
    return out


def is_fast(path: str) -> bool:
    """The fast path and its compile-preset variants (fast_tuned, fast_autotune, ...)."""
    return path == "fast" or path in FAST_VARIANTS


def prepare_path(path: str, unet, clf, fast_dtype):
    """Copies of the base models converted for ``path``; returns (unet, clf, autocast dtype)."""
    unet, clf = copy.deepcopy(unet), copy.deepcopy(clf)
    models = [m for m in (unet, clf) if m is not None]
    autocast = None
    if path == "eager_fp16_gd":
        for m in models:
            convert_like_guided_diffusion_fp16(m)
    elif path == "eager_bf16_autocast":
        autocast = torch.bfloat16
    elif path == "bf16_eager":
        for m in models:
            prepare_for_inference(m, dtype=torch.bfloat16, channels_last=False, compile=False)
    elif is_fast(path):
        torch._dynamo.reset()
        preset = path[len("fast_"):] or "default"
        for m in models:
            prepare_for_inference(m, dtype=fast_dtype, channels_last=True, compile=True,
                                  compile_options=compile_options(preset))
    elif path != "eager_fp32":
        raise ValueError(f"unknown path {path!r}; choose from {', '.join(ALL_PATHS + FAST_VARIANTS)}")
    return unet, clf, autocast


def _stage(fn, device):
    """(result, seconds) of ``fn()``, synchronised."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def run_ddib(unet, clf, x0, labels, ac, timesteps, device, scale: float):
    """Time inversion, plain generation and guided generation; returns outputs and seconds."""
    y_a, y_b = labels
    latent, t_inv = _stage(lambda: invert(unet, x0, y_a, ac, timesteps), device)
    plain, t_gen = _stage(lambda: generate(unet, latent, y_b, ac, timesteps, clip_x0=True), device)
    guided, t_guided = None, None
    if clf is not None:
        guided, t_guided = _stage(lambda: generate(unet, latent, y_b, ac, timesteps, clip_x0=True, classifier=clf,
                                                   classifier_scale=scale), device)
    return dict(plain=plain, guided=guided, t_inv=t_inv, t_gen=t_gen, t_guided=t_guided)


def _compiled_graphs() -> int:
    """Graphs Dynamo has compiled so far: must not grow during timing (a recompile would be timed)."""
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def eps_once(unet, x, labels, autocast, device) -> torch.Tensor:
    """ε at t = 500 for a fixed input: the per-forward accuracy probe."""
    with torch.no_grad(), autocast_context(device, autocast):
        return eps_from_model(unet, labels[1])(x, 500).float().cpu()


# Kernel (GPU) or operator (CPU) names → the families of the notes' breakdown; first match wins.
KERNEL_FAMILIES = (
    ("attention", ("flash", "fmha", "attention", "sdpa", "efficient_attention")),
    ("convolution / matmul", ("conv", "gemm", "cutlass", "xmma", "sm90", "sm80", "implicit", "mm", "dgrad",
                              "wgrad", "linear", "mkldnn", "cudnn")),
    ("generated (fused norm, SiLU, adds)", ("triton", "cpp_fused", "compiled")),
    ("norm", ("norm",)),
    ("copies / casts", ("copy", "cast", "to_copy", "contiguous", "transpose", "nchw", "nhwc")),
)


def kernel_family(name: str) -> str:
    low = name.lower()
    return next((family for family, keys in KERNEL_FAMILIES if any(k in low for k in keys)), "other")


def profile_forward(unet, x, labels, autocast, device, top: int = 12) -> dict:
    """Where one UNet forward spends its time: self time by kernel family (GPU kernels on CUDA,
    operators on the CPU) and the ``top`` most expensive names. Run after warm-up (compiled)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.device(device).type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    t = torch.full((x.shape[0],), 500, device=x.device, dtype=torch.long)
    with torch.no_grad(), autocast_context(device, autocast), profile(activities=activities) as prof:
        unet(x, t, labels[1])
        sync(device)
    times = {}
    for e in prof.key_averages():
        us = e.self_device_time_total if cuda else e.self_cpu_time_total
        if us > 0 and (not cuda or e.device_type == torch.autograd.DeviceType.CUDA):
            times[e.key] = times.get(e.key, 0.0) + us / 1e3
    total = sum(times.values()) or 1.0
    families = {}
    for name, ms in times.items():
        family = kernel_family(name)
        families[family] = families.get(family, 0.0) + ms
    ranked = sorted(times.items(), key=lambda kv: -kv[1])[:top]
    return dict(total_ms=total, families={k: v / total for k, v in sorted(families.items(), key=lambda kv: -kv[1])},
                top=[(name[:90], ms / total) for name, ms in ranked])


def time_job(path, base_unet, base_clf, batch, args, ac, flops, device) -> dict:
    """One (path, batch) measurement: warm-up (compiles), timed run, throughput, memory."""
    unet, clf, autocast = prepare_path(path, base_unet, base_clf, DTYPES[args.fast_dtype])
    gen = torch.Generator().manual_seed(args.seed + batch)
    size, ch = unet.image_size, unet.in_channels
    x0 = (torch.rand(batch, ch, size, size, generator=gen) * 2 - 1).to(device)
    n_cls = unet.num_classes or 1
    labels = [torch.randint(0, n_cls, (batch,), generator=gen).to(device) for _ in range(2)]
    if not unet.num_classes:
        labels = [None, None]
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    with torch.no_grad(), autocast_context(device, autocast):
        warm = time.perf_counter()
        run_ddib(unet, clf, x0, labels, ac, respace("uniform", ac.numel(), 2), device, args.classifier_scale)
        warm = time.perf_counter() - warm
        graphs = _compiled_graphs()
        runs = [run_ddib(unet, clf, x0, labels, ac, respace("uniform", ac.numel(), args.steps), device,
                         args.classifier_scale) for _ in range(args.repeats)]
    r = {k: min(run[k] for run in runs) if k.startswith("t_") and runs[0][k] is not None else runs[-1][k]
         for k in runs[0]}
    res = dict(path=path, batch=batch, warmup_s=round(warm, 2), recompiled_while_timing=_compiled_graphs() - graphs)
    fwd = (r["t_inv"] + r["t_gen"]) / (2 * args.steps - 1)
    res.update(forward_s=fwd, forwards_per_s=batch / fwd, tflops=flops["unet_forward"] * batch / fwd / 1e12,
               translations_per_s=batch / ((TOTAL_INV + TOTAL_GEN) * fwd))
    if r["t_guided"] is not None:
        step = r["t_guided"] / args.steps
        res.update(guided_step_s=step,
                   guided_tflops=(flops["unet_forward"] + flops["classifier_grad"]) * batch / step / 1e12,
                   guided_translations_per_s=batch / (TOTAL_INV * fwd + TOTAL_GEN * step))
    if torch.device(device).type == "cuda":  # the job's own: its model copies and activations
        res["peak_mem_gib"] = (torch.cuda.max_memory_allocated(device) - args.base_mem) / 2 ** 30
    res["finite"] = bool(torch.isfinite(r["plain"]).all())
    res["_outputs"] = dict(plain=r["plain"].cpu(), guided=None if r["guided"] is None else r["guided"].cpu(),
                           eps=eps_once(unet, x0, labels, autocast, device))
    if args.profile and path in args.profile.split(","):
        res["profile"] = profile_forward(unet, x0, labels, autocast, device)
    if path == "fast" and args.probe_micro_batch:
        res["auto_micro_batch"] = pick_micro_batch(unet, clf, device)
    return res


def add_comparisons(results: list) -> None:
    """Speed ratios to the baselines and accuracy vs eager fp32, at the same batch size."""
    by_key = {(r["path"], r["batch"]): r for r in results if "error" not in r and "skipped" not in r}
    for r in by_key.values():
        for base in BASELINES:
            b = by_key.get((base, r["batch"]))
            if b is None:
                continue
            r[f"x_{base}"] = b["forward_s"] / r["forward_s"]
            if "guided_step_s" in r and "guided_step_s" in b:
                r[f"x_{base}_guided"] = r["guided_translations_per_s"] / b["guided_translations_per_s"]
        ref = by_key.get(("eager_fp32", r["batch"]))
        if ref is not None:
            o, ro = r["_outputs"], ref["_outputs"]
            r["eps_rel_err"] = ((o["eps"] - ro["eps"]).norm() / ro["eps"].norm().clamp_min(1e-12)).item()
            r["psnr_plain_db"] = psnr(o["plain"], ro["plain"])
            if o["guided"] is not None and ro["guided"] is not None:
                r["psnr_guided_db"] = psnr(o["guided"], ro["guided"])


def _f(v, digits=2):
    if v is None:
        return "–"
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.{digits}f}"
    return str(v)


def markdown(meta: dict, results: list) -> str:
    """The report: setup, speed table, accuracy table, and the speed targets."""
    peak = meta.get("peak_tflops")
    lines = [f"## DDIB benchmark: {meta['config']} on {meta['device_name']}", "",
             f"torch {meta['torch']}; timed with {meta['steps']}+{meta['steps']} steps (best of {meta['repeats']}), per-forward time "
             f"extrapolated to a 100+100-step translation ({TOTAL_INV}+{TOTAL_GEN} UNet forwards"
             f"{', +100 classifier gradients when guided' if meta['classifier'] else ''}). "
             f"UNet forward {meta['flops']['unet_forward'] / 1e12:.4f} TFLOP/image, classifier gradient "
             f"{meta['flops']['classifier_grad'] / 1e12:.4f} TFLOP/image (FlopCounterMode, 2 × MACs). "
             f"fast = {meta['fast_dtype']} weights + channels_last + torch.compile; fast_<preset> = the same "
             f"compiled with tools.baselines.COMPILE_PRESETS[preset]. "
             f"cudnn.benchmark={meta['cudnn_benchmark']}. Peak GiB is each job's own (its model copies and "
             f"activations; the float32 originals, {meta['base_models_gib']:.1f} GiB, excluded). "
             + (f"% peak is of {peak:.0f} TFLOP/s (dense bf16 measured on H100/H200)." if peak else
                "No known peak for this device."), "",
             "| batch | path | transl/s | transl/s guided | UNet fwd/s | TFLOP/s | % peak | guided TFLOP/s "
             "| peak GiB | warm-up s | × fp32 | × fp16 gd | × fp32 guided | × fp16 gd guided |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if "skipped" in r or "error" in r:
            lines.append(f"| {r['batch']} | {r['path']} | {r.get('skipped') or r.get('error')} |"
                         + " |" * 12)
            continue
        pct = 100 * r["tflops"] / peak if peak else None
        lines.append("| " + " | ".join([
            str(r["batch"]), r["path"], _f(r["translations_per_s"], 3), _f(r.get("guided_translations_per_s"), 3),
            _f(r["forwards_per_s"], 1), _f(r["tflops"], 1 if peak else 4), _f(pct, 1),
            _f(r.get("guided_tflops"), 1 if peak else 4), _f(r.get("peak_mem_gib")), _f(r["warmup_s"], 1),
            _f(r.get("x_eager_fp32")), _f(r.get("x_eager_fp16_gd")), _f(r.get("x_eager_fp32_guided")),
            _f(r.get("x_eager_fp16_gd_guided"))]) + " |")
    lines += ["", "Accuracy against eager fp32 on the same random weights and inputs (random weights make "
              "DDIM chaotic: end-to-end PSNR is a loose measure, ε error the tight one):", "",
              "| batch | path | ε rel. error | PSNR plain dB | PSNR guided dB | finite | recompiles while timing |",
              "|---:|---|---:|---:|---:|---|---:|"]
    for r in results:
        if "forward_s" in r and r["path"] != "eager_fp32":
            lines.append(f"| {r['batch']} | {r['path']} | {_f(r.get('eps_rel_err'), 4)} | "
                         f"{_f(r.get('psnr_plain_db'), 1)} | {_f(r.get('psnr_guided_db'), 1)} | {r['finite']} | "
                         f"{r['recompiled_while_timing']} |")
    for r in results:
        if "profile" in r:
            prof = r["profile"]
            lines += ["", f"Profile of one UNet forward, {r['path']}, batch {r['batch']} "
                          f"({prof['total_ms']:.1f} ms of self time): "
                      + ", ".join(f"{k} {100 * v:.0f} %" for k, v in prof["families"].items()), "",
                      "| kernel / operator | share |", "|---|---:|"]
            lines += [f"| `{name}` | {100 * share:.1f} % |" for name, share in prof["top"]]
    auto = [r["auto_micro_batch"] for r in results if "auto_micro_batch" in r]
    if auto:
        lines += ["", f"`pick_micro_batch` (fast path, with guidance) chose: {auto[0]}"]
    lines += ["", targets(results, meta)]
    return "\n".join(lines) + "\n"


def targets(results: list, meta: dict) -> str:
    """The speed targets, checked on the best batch size measured."""
    if not meta["device"].startswith("cuda"):
        return "Speed targets are for one H100/H200; not judged on the CPU."
    fast = [r for r in results if is_fast(r["path"]) and "forward_s" in r]
    if not fast:
        return "Targets: fast path not measured."
    def best(key):
        r = max(fast, key=lambda r: r.get(key) or 0)
        return (r.get(key), f"{r['path']}, batch {r['batch']}")

    checks = [("fast ≥ 2.5× eager fp16", *best("x_eager_fp16_gd"), 2.5),
              ("≥ 1.1 translations/s (100+100)", *best("translations_per_s"), 1.1),
              ("guided fast ≥ 2× eager fp16 guided", *best("x_eager_fp16_gd_guided"), 2.0)]
    out = ["Speed targets (meant for one H100/H200), best fast path and batch measured:"]
    for name, value, where, bound in checks:
        verdict = "n/a" if value is None else ("PASS" if value >= bound else "FAIL")
        out.append(f"- {name}: {_f(value)} ({where}) → {verdict}")
    return "\n".join(out)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cuda = torch.cuda.is_available()
    p.add_argument("--config", default="configs/256x256_diffusion.yaml" if cuda else "tiny",
                   help="a YAML config (model/classifier sections) or 'tiny' (digits-size, CPU default)")
    p.add_argument("--device", default="cuda" if cuda else "cpu", help="device to time on (default: cuda when available)")
    p.add_argument("--batch_sizes", default="16,64" if cuda else "8", help="comma list of batch sizes to time")
    p.add_argument("--paths", default=",".join(ALL_PATHS) if cuda else
                   "eager_fp32,eager_bf16_autocast,bf16_eager,fast",
                   help=f"comma list of {', '.join(ALL_PATHS)} (fp16 is skipped by default on the CPU: "
                        "CPU fp16 convolutions are ~30× slower than float32), or the fast path with another "
                        f"compile preset: {', '.join(FAST_VARIANTS)}")
    p.add_argument("--fast_dtype", choices=list(DTYPES), default=None,
                   help="weights of the fast path (default bf16 on a GPU, fp32 on the CPU)")
    p.add_argument("--steps", type=int, default=10, help="timed DDIM steps per direction")
    p.add_argument("--repeats", type=int, default=1 if cuda else 3,
                   help="timed runs per job; the fastest counts (shared CPUs are noisy)")
    p.add_argument("--threads", type=int, default=None if cuda else 1,
                   help="torch CPU threads (default 1 on the CPU: on a shared 2-core box more threads "
                        "oversubscribe and the timings swing 10x)")
    p.add_argument("--classifier_scale", type=float, default=1.0, help="guidance scale of the guided runs")
    p.add_argument("--time_budget", type=float, default=300.0,
                   help="seconds; jobs that would start after this are skipped (and reported)")
    p.add_argument("--compile_reserve", type=float, default=150.0 if cuda else 200.0,
                   help="seconds the first compiled job needs (later ones: 1.2 × the measured compile); "
                        "it is skipped if less budget is left")
    p.add_argument("--no_cudnn_benchmark", action="store_true", help="leave cudnn.benchmark off (the tool turns it on)")
    p.add_argument("--probe_micro_batch", action="store_true", help="also run pick_micro_batch")
    p.add_argument("--profile", default="",
                   help="comma list of paths whose UNet forward is also profiled (time by kernel family)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs")
    p.add_argument("--out", help="directory for benchmark.json and benchmark.md")
    args = p.parse_args(argv)
    if args.fast_dtype is None:
        args.fast_dtype = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[default_dtype(args.device)]
    return args


def meta_info(args, cfg, flops) -> dict:
    device = torch.device(args.device)
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"CPU ({torch.get_num_threads()} of {os.cpu_count()} cores)")
    peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    return dict(config=args.config, device=str(device), device_name=name, peak_tflops=peak, torch=torch.__version__,
                steps=args.steps, repeats=args.repeats, fast_dtype=args.fast_dtype, flops=flops, classifier=bool(cfg.get("classifier")),
                cudnn_benchmark=torch.backends.cudnn.benchmark, batch_sizes=args.batch_sizes, paths=args.paths)


def run_all(args) -> tuple:
    """Every (batch, path) job in order, within the time budget; failures are recorded, not fatal."""
    start = time.perf_counter()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = device.type == "cuda" and not args.no_cudnn_benchmark
    cfg = load_config(args.config)
    flops = count_flops(cfg)
    meta = meta_info(args, cfg, flops)
    base_unet, base_clf = build_models(cfg, device, args.seed)
    args.base_mem = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    meta["base_models_gib"] = args.base_mem / 2 ** 30
    d = cfg["diffusion"]
    ac = alphas_cumprod(d["beta_schedule"], d["total_steps"])
    results, reserve = [], args.compile_reserve
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        for path in args.paths.split(","):
            elapsed = time.perf_counter() - start
            need = reserve * (3 if path == "fast_autotune" else 1) if is_fast(path) else 0.0
            if elapsed + need > args.time_budget:
                results.append(dict(path=path, batch=batch, skipped=f"skipped: {elapsed:.0f}s of "
                                                                   f"{args.time_budget:.0f}s budget used"))
                print(f"[{elapsed:6.1f}s] batch {batch} {path}: skipped (budget)", flush=True)
                continue
            print(f"[{elapsed:6.1f}s] batch {batch} {path} ...", flush=True)
            try:
                r = time_job(path, base_unet, base_clf, batch, args, ac, flops, device)
                print(f"          {r['forwards_per_s']:.2f} UNet fwd/s, {r['translations_per_s']:.3f} transl/s, "
                      f"guided {r.get('guided_translations_per_s') or 0:.3f}/s, warm-up {r['warmup_s']:.1f}s",
                      flush=True)
            except Exception as e:  # noqa: BLE001 - one failing path (OOM, compiler) must not lose the rest
                r = dict(path=path, batch=batch, error=f"{type(e).__name__}: {str(e)[:200]}")
                print(f"          FAILED {r['error']}", flush=True)
            if path == "fast" and "warmup_s" in r:
                reserve = 1.2 * r["warmup_s"]  # the next compile should take about as long as this one
            results.append(r)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            meta["total_s"] = round(time.perf_counter() - start, 1)
            if args.out:  # after every job, so a run killed by a wall-clock limit still leaves results
                write_outputs(args.out, meta, results)
    return meta, results


def write_outputs(out_dir, meta: dict, results: list) -> str:
    """Comparisons, then benchmark.md and benchmark.json in ``out_dir``; returns the markdown."""
    add_comparisons(results)
    text = markdown(meta, results)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmark.md").write_text(text)
    clean = [{k: v for k, v in r.items() if k != "_outputs"} for r in results]
    (out / "benchmark.json").write_text(json.dumps(dict(meta=meta, results=clean), indent=2) + "\n")
    return text


def main(argv=None):
    args = parse_args(argv)
    meta, results = run_all(args)
    if args.out:
        print(write_outputs(args.out, meta, results))
        print(f"wrote {Path(args.out) / 'benchmark.md'} and {Path(args.out) / 'benchmark.json'}")
    else:
        add_comparisons(results)
        print(markdown(meta, results))


if __name__ == "__main__":
    main()
