"""Translate a folder of class-A images to class B with a Dual Diffusion Implicit Bridge (DDIB).

    accelerate launch sample_ddib.py -c configs/256x256_diffusion.yaml --weights 256x256_diffusion.pt \
        --input_dir IN --save_dir OUT --class_A 292 --class_B 291

Each process takes its own share of the files and writes its own outputs; run ``-h`` for every option.
"""

import signal
import sys
import time
from pathlib import Path

from utils.errors import UserError


def _interrupt_on_sigterm():
    """SIGTERM stops the run like Ctrl-C: what is finished is already written."""
    def handler(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, handler)


COMPILE_MIN_IMAGES = 256  # per process; below this --compile auto stays eager


def _load_network(cls, cfg_section, weights, what, device):
    from utils.checkpoints import load_weights
    from utils.config import build_network

    net = build_network(cls, cfg_section, what)
    load_weights(net, weights, what)
    return net.to(device).eval().requires_grad_(False)


def _load_networks(args, cfg_A, cfg_B, device):
    """(model_A, model_B, classifier) in float32 with their weights; model_B is model_A for one model."""
    from models import EncoderUNetModel, UNetModel

    model_A = _load_network(UNetModel, cfg_A["model"], args.weights, "model", device)
    model_B = model_A if args.weights_B is None else \
        _load_network(UNetModel, cfg_B["model"], args.weights_B, "target model (--weights_B)", device)
    classifier = None if args.classifier_weights is None else \
        _load_network(EncoderUNetModel, cfg_B["classifier"], args.classifier_weights, "classifier", device)
    return model_A, model_B, classifier


def _prepare(nets, dtype, compile, per_sample_workers):
    """Apply the fast path to each distinct network: upsampling fused into its convolutions always;
    16-bit weights cast once, channels_last and torch.compile where asked (float32 and uncompiled,
    the rest of preparation changes no number); on the CPU, one-sample-at-a-time evaluation
    (bit-identical results)."""
    from models import PerSample
    from models.fast import prepare_for_inference

    done = {}
    for net in nets:
        if net is not None and id(net) not in done:
            prepared = prepare_for_inference(net, dtype=dtype, compile=compile)
            done[id(net)] = PerSample(prepared, per_sample_workers) if per_sample_workers else prepared
    return tuple(None if net is None else done[id(net)] for net in nets)


def choose_compile(args, device, images: int) -> bool:
    """torch.compile pays back its minutes of compiling only over many images on a GPU."""
    if args.compile == "auto":
        return device.type == "cuda" and images >= COMPILE_MIN_IMAGES
    return args.compile == "on"


def network_dtype(requested: str, launched: str, device):
    """The networks' precision. ``auto`` takes a 16-bit setting given to ``accelerate launch``, else
    16 bits on a GPU (bf16 where supported: the fast path, faithful within the bounds tests/test_fast.py
    states) and float32 on the CPU (where bf16 one image at a time is slower and less exact)."""
    import torch

    from models.fast import default_dtype

    if requested == "auto":
        if launched not in ("fp16", "bf16"):
            return default_dtype(device)
        requested = launched
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(requested)


def build_bridge(args, cfg_A, cfg_B, accelerator, warn, images: int):
    """Networks on the device with their weights, the schedule and the sampler settings."""
    import torch

    from diffusions import alphas_cumprod, respace
    from models.fast import pick_micro_batch
    from utils.runner import Bridge

    diffusion = cfg_A["diffusion"]
    try:
        timesteps = respace(args.respace_type, diffusion["total_steps"], args.respace_steps)
    except ValueError as e:
        raise UserError(str(e)) from None
    device = accelerator.device
    dtype = network_dtype(args.mixed_precision, accelerator.mixed_precision, device)
    if dtype == torch.float16 and device.type == "cpu":
        raise UserError("--mixed_precision fp16 needs a GPU; use bf16 on the CPU")
    compile = choose_compile(args, device, images)
    if device.type == "cuda":  # static shapes: let cuDNN time its algorithms once per shape, as benchmarked
        torch.backends.cudnn.benchmark = True
    nets = _load_networks(args, cfg_A, cfg_B, device)
    workers = 0
    if device.type == "cpu":  # bit-identical outputs for any --micro_batch and process count
        workers = torch.get_num_threads()
        torch.set_num_threads(1)
    model_A, model_B, classifier = _prepare(nets, dtype, compile, workers)
    micro_batch = args.micro_batch
    if micro_batch == "auto":  # probed on the prepared networks: their dtype decides the memory
        micro_batch = pick_micro_batch(model_A, classifier, device, cpu_batch=8) if device.type == "cuda" else 8

    def float32_networks():
        return _prepare(_load_networks(args, cfg_A, cfg_B, device), None, False, workers)

    scale = 1.0 if args.classifier_scale is None else args.classifier_scale
    bridge = Bridge(model_A=model_A, model_B=model_B,
                    alphas_cumprod=alphas_cumprod(diffusion["beta_schedule"], diffusion["total_steps"]),
                    timesteps=timesteps, device=device, classifier=classifier, classifier_scale=scale,
                    eta=args.eta, clip_x0=args.clip_x0, seed=args.seed, low_precision=dtype is not None,
                    fallback=float32_networks, pad_to=micro_batch if compile and not workers else None, warn=warn)
    return bridge, micro_batch, compile, dtype


def list_classes(query: str) -> int:
    from utils.classes import describe, search

    hits = search(query, limit=50)
    for index in hits:
        print(describe(index))
    if not hits:
        print(f"no ImageNet class matches {query!r}", file=sys.stderr)
    return 0 if hits else 1


def run(args) -> int:
    from utils.cli import check_models, check_numbers, check_paths
    from utils.config import load_config
    from utils.images import IMAGE_EXTENSIONS, output_names, remove_temporaries, scan_images
    from utils.jobs import all_targets, plan_jobs
    from utils.runner import Layout, Options

    check_paths(args)
    cfg_A = load_config(args.config)
    cfg_B = cfg_A if args.config_B is None else load_config(args.config_B)
    check_models(cfg_A, cfg_B)
    check_numbers(args, cfg_A, cfg_B)
    rel_paths = scan_images(args.input_dir)
    if not rel_paths:
        raise UserError(f"--input_dir: no image files found under {args.input_dir} "
                        f"(looked for {' '.join(sorted(IMAGE_EXTENSIONS))})")
    jobs, unplanned = plan_jobs(rel_paths, args, cfg_A["model"].get("num_classes"),
                                cfg_B["model"].get("num_classes"),
                                cfg_B["classifier"].get("out_channels", 1000) if args.classifier_weights else None)
    save_dir = Path(args.save_dir)
    layout = Layout(save_dir, output_names([job.rel for job in jobs]), grouped=len(all_targets(jobs)) > 1,
                    overwrite=args.overwrite)
    todo = [job for job in jobs if layout.pending(job)]

    import torch
    from accelerate import Accelerator
    from accelerate.utils import gather_object
    from tqdm import tqdm

    from utils.runner import translate_folder

    accelerator = Accelerator(mixed_precision=None if args.mixed_precision == "auto" else args.mixed_precision)
    rank, world = accelerator.process_index, accelerator.num_processes
    prefix = f"[process {rank}] " if world > 1 else ""

    def warn(msg):
        tqdm.write(f"{prefix}warning: {msg}", file=sys.stderr)

    if accelerator.is_main_process:
        if save_dir.is_dir():
            remove_temporaries(save_dir)
        for rel, reason in unplanned:
            warn(f"skipping {rel.as_posix()}: {reason}")
        if len(todo) < len(jobs):
            print(f"skipping {len(jobs) - len(todo)} input(s) whose output already exists "
                  "(--overwrite redoes them)", flush=True)
    accelerator.wait_for_everyone()  # the start barrier: no process writes before the clean-up
    mine = todo[rank::world]
    bridge, micro_batch, compiled, dtype = build_bridge(args, cfg_A, cfg_B, accelerator, warn, len(mine))
    if accelerator.is_main_process and (compiled or args.micro_batch == "auto" or dtype is not None):
        precision = {None: "float32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
        print(f"networks in {precision}" + (" (--mixed_precision no for float32)" if dtype is not None else "")
              + f", micro-batch {micro_batch}" + (", torch.compile on: the first batch includes compiling "
                                                  "(minutes; --compile off skips it)" if compiled else ""),
              flush=True)
    opts = Options(micro_batch=micro_batch,
                   image_size=cfg_A["model"]["image_size"], save_pairs=args.save_pairs, save_grid=args.save_grid,
                   save_latents=args.save_latents, cycle=args.cycle,
                   from_latents=Path(args.from_latents) if args.from_latents else None)
    start = time.time()
    with tqdm(total=len(mine), unit="img", dynamic_ncols=True, disable=not accelerator.is_main_process,
              desc="translating" + (f" (process 0 of {world})" if world > 1 else "")) as bar:
        result = translate_folder(bridge, mine, Path(args.input_dir), layout, opts, progress=bar)
    counts = [result.translated, result.skipped, result.failed]
    problems, cycle_rows = result.problems, result.cycle_rows
    if world > 1 and not result.interrupted:
        accelerator.wait_for_everyone()
        counts = accelerator.reduce(torch.tensor(counts, device=accelerator.device), reduction="sum").tolist()
        problems, cycle_rows = gather_object(problems), gather_object(cycle_rows)
    if accelerator.is_main_process:
        counts[1] += len(unplanned)
        problems = problems + [(rel.as_posix(), f"skipped: {reason}") for rel, reason in unplanned]
    elapsed = time.time() - start
    _report(accelerator, result, world, rank, save_dir, counts, problems, cycle_rows, elapsed)
    if compiled and accelerator.is_main_process:
        print(f"the first batch took {result.first_batch_s:.1f}s (compiling included)", flush=True)
    if result.interrupted:
        raise KeyboardInterrupt
    return 1 if counts[2] else 0


def _report(accelerator, result, world, rank, save_dir, counts, problems, cycle_rows, elapsed):
    """failures.csv, cycle.csv and the summary line."""
    import math

    from utils.runner import write_csv

    own = world == 1 or not result.interrupted
    if problems and (accelerator.is_main_process or result.interrupted):
        where = write_csv(problems, ["path", "reason"],
                          save_dir / ("failures.csv" if own else f"failures-process{rank}.csv"))
        print(f"{len(problems)} problem(s) listed in {where}", file=sys.stderr)
    cycle = ""
    if cycle_rows and (accelerator.is_main_process or result.interrupted):
        write_csv(cycle_rows, ["path", "class_A", "class_B", "cycle_psnr_db"],
                  save_dir / ("cycle.csv" if own else f"cycle-process{rank}.csv"))
        finite = [min(r[3], 100.0) for r in cycle_rows if not math.isnan(r[3])]
        if finite:
            cycle = f", cycle PSNR {sum(finite) / len(finite):.2f} dB (mean of {len(finite)})"
    if accelerator.is_main_process:
        translated, skipped, failed = (int(v) for v in counts)
        print(f"translated {translated}, skipped {skipped}, failed {failed}, elapsed {elapsed:.1f}s, "
              f"{translated / max(elapsed, 1e-9):.2f} images/s{cycle}", flush=True)


def main(argv=None) -> int:
    from utils.cli import build_parser

    args = build_parser().parse_args(argv)
    _interrupt_on_sigterm()
    try:
        if args.list_classes is not None:
            return list_classes(args.list_classes)
        return run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished outputs are written; rerun the same command to finish the rest",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
