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


def build_bridge(args, cfg, accelerator, warn):
    """Networks on the device with their weights, the schedule and the sampler settings."""
    from diffusions import alphas_cumprod, respace
    from models import EncoderUNetModel, PerSample, UNetModel
    from utils.checkpoints import load_weights
    from utils.config import build_network
    from utils.runner import Bridge

    diffusion = cfg["diffusion"]
    try:
        timesteps = respace(args.respace_type, diffusion["total_steps"], args.respace_steps)
    except ValueError as e:
        raise UserError(str(e)) from None
    model = build_network(UNetModel, cfg["model"], "model")
    load_weights(model, args.weights, "model")
    model.to(accelerator.device).eval().requires_grad_(False)
    classifier = None
    if args.classifier_weights:
        classifier = build_network(EncoderUNetModel, cfg["classifier"], "classifier")
        load_weights(classifier, args.classifier_weights, "classifier")
        classifier.to(accelerator.device).eval().requires_grad_(False)
    if accelerator.device.type == "cpu":  # bit-identical outputs for any --micro_batch and process count
        import torch

        workers = torch.get_num_threads()
        torch.set_num_threads(1)
        model = PerSample(model, workers)
        classifier = PerSample(classifier, workers) if classifier is not None else None
    scale = 1.0 if args.classifier_scale is None else args.classifier_scale
    return Bridge(model=model, alphas_cumprod=alphas_cumprod(diffusion["beta_schedule"], diffusion["total_steps"]),
                  timesteps=timesteps, class_A=args.class_A, class_B=args.class_B, device=accelerator.device,
                  classifier=classifier, classifier_scale=scale, eta=args.eta, clip_x0=args.clip_x0,
                  seed=args.seed, autocast=accelerator.autocast if accelerator.mixed_precision != "no" else None,
                  warn=warn)


def run(args) -> int:
    from utils.cli import check_numbers, check_paths
    from utils.config import load_config
    from utils.images import IMAGE_EXTENSIONS, output_names, remove_temporaries, scan_images

    check_paths(args)
    cfg = load_config(args.config)
    check_numbers(args, cfg)
    rel_paths = scan_images(args.input_dir)
    if not rel_paths:
        raise UserError(f"--input_dir: no image files found under {args.input_dir} "
                        f"(looked for {' '.join(sorted(IMAGE_EXTENSIONS))})")
    save_dir = Path(args.save_dir)
    names = output_names(rel_paths)
    todo = rel_paths if args.overwrite else [p for p in rel_paths if not (save_dir / names[p]).is_file()]

    import torch
    from accelerate import Accelerator
    from accelerate.utils import gather_object
    from tqdm import tqdm

    from utils.runner import translate_folder, write_problems

    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    rank, world = accelerator.process_index, accelerator.num_processes
    prefix = f"[process {rank}] " if world > 1 else ""

    def warn(msg):
        tqdm.write(f"{prefix}warning: {msg}", file=sys.stderr)

    if accelerator.is_main_process and save_dir.is_dir():
        remove_temporaries(save_dir)
    accelerator.wait_for_everyone()  # the start barrier: no process writes before the clean-up
    if len(todo) < len(rel_paths) and accelerator.is_main_process:
        print(f"skipping {len(rel_paths) - len(todo)} input(s) whose output already exists "
              "(--overwrite redoes them)", flush=True)
    bridge = build_bridge(args, cfg, accelerator, warn)
    mine = todo[rank::world]
    micro_batch = 8 if args.micro_batch == "auto" else args.micro_batch
    start = time.time()
    with tqdm(total=len(mine), unit="img", dynamic_ncols=True, disable=not accelerator.is_main_process,
              desc="translating" + (f" (process 0 of {world})" if world > 1 else "")) as bar:
        result = translate_folder(bridge, mine, Path(args.input_dir), save_dir, names,
                                  cfg["model"]["image_size"], micro_batch, args.save_pairs, progress=bar)
    counts = [result.translated, result.skipped, result.failed]
    problems = result.problems
    if world > 1 and not result.interrupted:
        accelerator.wait_for_everyone()
        counts = accelerator.reduce(torch.tensor(counts, device=accelerator.device), reduction="sum").tolist()
        problems = gather_object(problems)
    elapsed = time.time() - start
    if problems and (accelerator.is_main_process or result.interrupted):
        name = "failures.csv" if world == 1 or not result.interrupted else f"failures-process{rank}.csv"
        where = write_problems(problems, save_dir / name)
        print(f"{len(problems)} problem(s) listed in {where}", file=sys.stderr)
    if accelerator.is_main_process:
        translated, skipped, failed = (int(v) for v in counts)
        print(f"translated {translated}, skipped {skipped}, failed {failed}, elapsed {elapsed:.1f}s, "
              f"{translated / max(elapsed, 1e-9):.2f} images/s", flush=True)
    if result.interrupted:
        raise KeyboardInterrupt
    return 1 if counts[2] else 0


def main(argv=None) -> int:
    from utils.cli import build_parser

    args = build_parser().parse_args(argv)
    _interrupt_on_sigterm()
    try:
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
