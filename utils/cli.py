"""Command-line arguments of sample_ddib.py and the checks that need no model."""

import argparse
from pathlib import Path

from diffusions.schedules import RESPACE_TYPES

from .errors import UserError

DEFAULT_RESPACE_STEPS = 100


def _micro_batch(value: str):
    if value == "auto":
        return value
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'auto', got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'auto', got {value}")
    return n


def _positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return n


def _class_label(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer class label, got {value!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sample_ddib.py",
        description="Translate a folder of class-A images to class B with a Dual Diffusion Implicit Bridge: "
                    "DDIM inversion conditioned on class A, then DDIM generation conditioned on class B.",
        epilog="Multi-GPU: accelerate launch --multi_gpu --num_processes N sample_ddib.py ...; "
               "mixed precision: accelerate launch --mixed_precision bf16 sample_ddib.py ...")
    p.add_argument("-c", "--config", required=True, help="model YAML (configs/*.yaml), matching --weights")
    p.add_argument("--weights", required=True, help="UNet checkpoint (.pt state_dict, or a wrapper holding one)")
    p.add_argument("--input_dir", required=True, help="folder of class-A images, scanned recursively")
    p.add_argument("--save_dir", required=True,
                   help="where translations go: SAVE_DIR/<path relative to input_dir>.png")
    p.add_argument("--class_A", type=_class_label, help="source class label (integer) for the inversion")
    p.add_argument("--class_B", type=_class_label, help="target class label (integer) for the generation")
    p.add_argument("--seed", type=int, default=0,
                   help="seed for the generation noise when --eta > 0 (default: 0); with eta 0 the run is "
                        "deterministic")
    p.add_argument("--respace_type", default="uniform", choices=RESPACE_TYPES,
                   help="which timesteps of the schedule to visit: uniform (= uniform-leading: 0, s, 2s, … "
                        "with s = total_steps // respace_steps, guided-diffusion's ddimN), uniform-linspace, "
                        "uniform-trailing, quad (dense near t=0), none (all total_steps). Default: uniform")
    p.add_argument("--respace_steps", type=_positive_int, default=DEFAULT_RESPACE_STEPS,
                   help=f"number of timesteps for each half of the bridge (default: {DEFAULT_RESPACE_STEPS})")
    p.add_argument("--micro_batch", type=_micro_batch, default=8,
                   help="images per forward pass in each process, or 'auto' (default: 8)")
    p.add_argument("--classifier_weights", help="noisy-classifier checkpoint for guidance on the target side; "
                                                "the config needs a 'classifier' section")
    p.add_argument("--classifier_scale", type=float,
                   help="classifier guidance scale S: eps -= sqrt(1-alpha_bar_t) * S * grad log p(class_B|x_t) "
                        "(default 1.0 when --classifier_weights is given)")
    p.add_argument("--eta", type=float, default=0.0,
                   help="DDIM eta for the generation half (default 0: deterministic); inversion is always the "
                        "deterministic ODE")
    p.add_argument("--clip_x0", action=argparse.BooleanOptionalAction, default=True,
                   help="clip the x0 prediction to [-1, 1] during generation (default: on; inversion never clips)")
    p.add_argument("--save_pairs", action="store_true",
                   help="also write source|translation side by side under SAVE_DIR/_pairs/")
    p.add_argument("--overwrite", action="store_true",
                   help="translate every input again, even those whose output already exists")
    p.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"),
                   help="run the networks in this precision (default: what accelerate launch was given, else no)")
    return p


def _inside(child: Path, parent: Path) -> bool:
    child, parent = child.resolve(), parent.resolve()
    return child == parent or parent in child.parents


def check_paths(args) -> None:
    """Every path check that can fail before a model is built."""
    for flag, value in (("--config", args.config), ("--weights", args.weights),
                        ("--classifier_weights", args.classifier_weights)):
        if value is not None and not Path(value).is_file():
            raise UserError(f"{flag}: file not found: {value}")
    inp, out = Path(args.input_dir), Path(args.save_dir)
    if not inp.is_dir():
        raise UserError(f"--input_dir: not a folder: {inp}")
    if _inside(inp, out):
        raise UserError("--input_dir must not be --save_dir or inside it: outputs would be read back as inputs")
    if _inside(out, inp):
        raise UserError("--save_dir must not be inside --input_dir: outputs would be read back as inputs")
    if out.exists() and not out.is_dir():
        raise UserError(f"--save_dir exists and is not a folder: {out}")


def check_numbers(args, cfg) -> None:
    """Checks of class labels, steps and guidance against the config."""
    total = cfg["diffusion"]["total_steps"]
    if args.respace_type != "none" and args.respace_steps > total:
        raise UserError(f"--respace_steps {args.respace_steps} is above the schedule's total_steps {total}")
    num_classes = cfg["model"].get("num_classes")
    for flag, label in (("--class_A", args.class_A), ("--class_B", args.class_B)):
        if num_classes is None and label is not None:
            raise UserError(f"{flag}: the model is unconditional (no num_classes in the config); drop {flag}")
        if num_classes is not None and label is None:
            raise UserError(f"{flag} is required: the model is class-conditional ({num_classes} classes)")
        if num_classes is not None and not 0 <= label < num_classes:
            raise UserError(f"{flag} {label} is out of range: the model has classes 0..{num_classes - 1}")
    if args.classifier_scale is not None and args.classifier_weights is None:
        raise UserError("--classifier_scale needs --classifier_weights")
    if args.classifier_weights is not None:
        if cfg["classifier"] is None:
            raise UserError("--classifier_weights given but the config has no 'classifier' section")
        if args.class_B is None:
            raise UserError("classifier guidance needs --class_B")
        if not 0 <= args.class_B < cfg["classifier"].get("out_channels", 1000):
            raise UserError(f"--class_B {args.class_B} is out of the classifier's range")
    if args.eta < 0:
        raise UserError(f"--eta must be 0 or more, got {args.eta}")
