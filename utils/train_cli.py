"""Command-line arguments of train_ddib.py and the checks that need no model."""

import argparse
import math
from pathlib import Path

from .argparser import ArgumentParser, positive_int
from .cli import check_folders, check_given
from .errors import UserError, printable
from .train_data import CLASS_MODES
from .train_run import PARTS
from .training import LR_SCHEDULES

# what a part trains without --ema: guided-diffusion keeps an EMA of the UNet, none of the classifier
DEFAULT_EMA = {"unet": 0.9999, "classifier": 0.0}


def _count(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive integer, got {value!r}")
    return n


def _number(lo: float, hi: float = math.inf, open_hi: bool = False):
    def parse(value: str) -> float:
        try:
            x = float(value)
        except ValueError:
            x = math.nan
        if not (lo <= x < hi if open_hi else lo <= x <= hi):
            span = f"in [{lo}, {hi})" if open_hi else (f"at least {lo}" if hi == math.inf else f"in [{lo}, {hi}]")
            raise argparse.ArgumentTypeError(f"must be a number {span}, got {value!r}")
        return x
    return parse


def build_parser() -> argparse.ArgumentParser:
    """The flags (dash or underscore spellings, no abbreviations, one-line errors, as sample_ddib.py)."""
    p = ArgumentParser(
        prog="train_ddib.py",
        description="Train the diffusion model (guided-diffusion's ADM UNet) or the noisy classifier that a DDIB "
                    "bridge needs, on a folder of images: class subfolders give a class-conditional model with "
                    "the folder names as class names, one folder of images an unconditional one.",
        epilog="Several GPUs: accelerate launch -q --multi_gpu --num_processes N train_ddib.py ...; rerunning the same "
               "command into the same --save_dir continues from its latest checkpoint.")
    p.add_argument("-c", "--config", help="model YAML (configs/*.yaml): the network's sizes and the noise schedule; "
                                          "its class count is taken from the data (required)")
    p.add_argument("--data_dir", help="the training images: class subfolders, or one folder of images (required)")
    p.add_argument("--save_dir", help="the run folder: config.yaml, weights, checkpoints, logs, samples (required)")
    p.add_argument("--part", choices=PARTS, default="unet",
                   help="which network to train: the diffusion UNet (default) or the config's noisy classifier, "
                        "for classifier guidance (needs class folders)")
    p.add_argument("--classes", choices=CLASS_MODES, default="auto",
                   help="folders: each subfolder of --data_dir is a class; none: every image below --data_dir, one "
                        "unconditional domain; auto (default): folders when the images lie in subfolders, none when "
                        "they lie directly in --data_dir")
    p.add_argument("--steps", type=positive_int, default=10000, help="optimizer steps in all (default: 10000)")
    p.add_argument("--batch_size", type=positive_int, default=64,
                   help="images per optimizer step, over all processes together (default: 64)")
    p.add_argument("--micro_batch", type=positive_int,
                   help="images per forward pass in each process; smaller than the process's share of the batch "
                        "means gradient accumulation (default: the whole share)")
    p.add_argument("--lr", type=_number(0.0), default=1e-4, help="peak learning rate of AdamW (default: 1e-4)")
    p.add_argument("--lr_schedule", choices=LR_SCHEDULES, default="constant",
                   help="after warm-up: constant (default, as guided-diffusion; --steps can grow on a rerun) or "
                        "cosine decay to zero at --steps")
    p.add_argument("--warmup", type=_count, default=500, help="learning-rate warm-up steps (default: 500)")
    p.add_argument("--weight_decay", type=_number(0.0), default=0.0, help="AdamW weight decay (default: 0)")
    p.add_argument("--grad_clip", type=_number(0.0), default=1.0,
                   help="clip the gradient's global norm to this (0: no clipping) (default: 1.0)")
    p.add_argument("--ema", type=_number(0.0, 1.0, open_hi=True),
                   help="EMA decay of the weights kept for sampling, 0 for none (default: 0.9999 for the UNet, "
                        "0 for the classifier)")
    p.add_argument("--flip", action="store_true", help="flip half of the images horizontally (not for text, digits, "
                                                       "or anything whose mirror image is another thing)")
    p.add_argument("--hue_jitter", type=_number(0.0, 0.5), default=0.0,
                   help="turn each image's hue by a random fraction of the colour circle up to this (0.5: any "
                        "hue), so colour is learnt as independent of the class; only for data whose colour "
                        "carries no meaning (default: 0, off)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial weights and every random draw (default: 0)")
    p.add_argument("--resume", action="store_true",
                   help="insist on continuing from a checkpoint in --save_dir (a rerun into a run folder does "
                        "anyway; this makes a missing one an error)")
    p.add_argument("--log_every", type=positive_int, default=50, help="steps per loss-log row (default: 50)")
    p.add_argument("--save_every", type=positive_int, default=1000, help="steps per checkpoint (default: 1000)")
    p.add_argument("--keep", type=positive_int, default=3, help="checkpoints kept, the latest (default: 3)")
    p.add_argument("--sample_every", type=_count, default=1000,
                   help="steps per sample grid from the EMA UNet in SAVE_DIR/samples/, 0 for none (default: 1000)")
    p.add_argument("--sample_steps", type=positive_int, default=50,
                   help="DDIM steps of the sample grids (default: 50)")
    p.add_argument("--workers", type=_count,
                   help="data-loading worker processes per training process (default: 0 when the images fit in "
                        "memory, else 4); the first read of the folder uses this many threads")
    p.add_argument("--cache_mb", type=_number(0.0), default=2048,
                   help="keep the decoded images in memory when they take at most this many MB (default: 2048)")
    p.add_argument("--threads", type=positive_int, help="CPU threads per process for torch (default: torch's)")
    p.add_argument("--mixed_precision", choices=("auto", "no", "fp16", "bf16"), default="auto",
                   help="auto (default): bf16 autocast on a GPU that has it (fp16 with loss scaling otherwise), or "
                        "what accelerate launch was given; float32 on the CPU; no: float32 everywhere")
    p.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                   help="torch.compile the network (minutes of compiling first); auto: on a GPU (default)")
    return p


def check_args(args) -> None:
    """Every check that needs no data and no model."""
    check_given(args, paths=("config", "data_dir", "save_dir"), classes=())
    for flag, value in (("--config", args.config), ("--data_dir", args.data_dir), ("--save_dir", args.save_dir)):
        if value is None:
            raise UserError(f"{flag} is required")
    if not Path(args.config).is_file():
        raise UserError(f"--config: file not found: {printable(args.config)}")
    check_folders("--data_dir", args.data_dir, args.save_dir, "samples and weights would become training data")
    if args.part == "classifier" and args.classes == "none":
        raise UserError("--part classifier needs classes: it learns to tell the class folders apart")
    if args.ema is None:
        args.ema = DEFAULT_EMA[args.part]


def train_settings(args, cfg_run: dict, data_identity: str) -> dict:
    """What decides a part's weights, keyed by the flag a user would change: a rerun into the run folder
    must match it. ``--steps`` only matters to a cosine schedule (a constant one can train on)."""
    return {"-c": cfg_run, "--part": args.part, "--data_dir": data_identity, "--batch_size": args.batch_size,
            "--lr": args.lr, "--lr_schedule": args.lr_schedule, "--warmup": args.warmup,
            "--weight_decay": args.weight_decay, "--grad_clip": args.grad_clip, "--ema": args.ema,
            "--seed": args.seed, "--flip": args.flip, **({"--hue_jitter": args.hue_jitter} if args.hue_jitter else {}),
            "--steps": args.steps if args.lr_schedule == "cosine" else None}
