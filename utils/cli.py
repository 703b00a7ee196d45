"""Command-line arguments of sample_ddib.py and the checks that need no model."""

import argparse
import math
from pathlib import Path

from diffusions import RESPACE_TYPES, SOLVERS

from .argparser import ArgumentParser, positive_int
from .errors import UserError, printable

DEFAULT_RESPACE_STEPS = 100


def _micro_batch(value: str):
    return value if value == "auto" else positive_int(value)


def build_parser() -> argparse.ArgumentParser:
    """The flags; ``--save-pairs`` works as ``--save_pairs``, abbreviations are refused, and an unknown
    flag is one error line with the closest known one."""
    p = ArgumentParser(
        prog="sample_ddib.py",
        description="Translate a folder of class-A images to class B with a Dual Diffusion Implicit Bridge: "
                    "DDIM inversion conditioned on class A, then DDIM generation conditioned on class B.",
        epilog="Multi-GPU: accelerate launch --multi_gpu --num_processes N sample_ddib.py ...; "
               "mixed precision: accelerate launch --mixed_precision bf16 sample_ddib.py ...")
    p.add_argument("-c", "--config", help="model YAML (configs/*.yaml), matching --weights (required for a checkpoint "
                                          "file; a diffusers model needs none, or its scheduler_config.json)")
    p.add_argument("--weights", help="UNet checkpoint (.pt state_dict, or a wrapper holding one), or a diffusers "
                                     "model: a pipeline or model folder, or a hub id such as google/ddpm-cat-256 "
                                     "(required)")
    p.add_argument("--input_dir", help="folder of class-A images, scanned recursively (required)")
    p.add_argument("--save_dir", help="where translations go: SAVE_DIR/<path relative to input_dir>.png; with "
                                      "several target classes SAVE_DIR/<class_B>/<path>.png (required)")
    p.add_argument("--class_A", help="source class for the inversion: an integer label, an ImageNet WordNet id "
                                     "(n02129604) or name ('tiger'), or 'folder' to read each image's class "
                                     "from its first folder under input_dir; omit for an unconditional model")
    p.add_argument("--class_B", help="target class(es) for the generation, same forms; several separated by "
                                     "commas (281,282,283) translate each image to every one while inverting "
                                     "it once; omit for an unconditional model")
    p.add_argument("--manifest", help="CSV with columns path,class_A,class_B (path relative to input_dir; "
                                      "several rows or ';'-separated class_B for several targets): translate "
                                      "just these files with these classes")
    p.add_argument("--config_B", help="config of a second, independently trained model for the generation "
                                      "half (default: the -c model); both must share image size and schedule")
    p.add_argument("--weights_B", help="checkpoint of the --config_B model, or a diffusers folder or hub id "
                                       "(then without --config_B)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed for the generation noise when --eta > 0 (default: 0); with eta 0 the run is "
                        "deterministic")
    p.add_argument("--respace_type", default="uniform", choices=RESPACE_TYPES,
                   help="which timesteps of the schedule to visit: uniform (= uniform-leading: 0, s, 2s, … "
                        "with s = total_steps // respace_steps, guided-diffusion's ddimN), uniform-linspace, "
                        "uniform-trailing, quad (dense near t=0), logsnr (uniform in log-SNR: for the higher-order "
                        "solvers), none (all total_steps). Default: uniform")
    p.add_argument("--t_end", type=positive_int, help="last timestep, where the inversion stops (default: what "
                                                       "--respace_type gives, e.g. 990 at 100 uniform steps)")
    p.add_argument("--respace_steps", type=positive_int, default=DEFAULT_RESPACE_STEPS,
                   help=f"number of timesteps for each half of the bridge (default: {DEFAULT_RESPACE_STEPS})")
    p.add_argument("--solver", default="ddim", choices=sorted(SOLVERS),
                   help="the ODE solver of both halves (inversion runs it forward in time) (default: ddim)")
    p.add_argument("--micro_batch", type=_micro_batch, default=8,
                   help="images per forward pass in each process, or 'auto': the largest that fits the GPU "
                        "(8 on the CPU) (default: 8)")
    p.add_argument("--classifier_weights", help="noisy-classifier checkpoint for guidance on the target side; "
                                                "the config needs a 'classifier' section")
    p.add_argument("--classifier_scale", type=float,
                   help="classifier guidance scale S: eps -= sqrt(1-alpha_bar_t) * S * grad log p(class_B|x_t) "
                        "(default 1.0 when --classifier_weights is given)")
    p.add_argument("--cfg_scale", type=float,
                   help="classifier-free guidance scale S of the generation: eps = eps(x, null) + S * (eps(x, "
                        "class_B) - eps(x, null)); for models trained with a null class (DiT); default: none")
    p.add_argument("--eta", type=float, default=0.0,
                   help="DDIM eta for the generation half (default 0: deterministic); inversion is always the "
                        "deterministic ODE")
    p.add_argument("--clip_x0", action=argparse.BooleanOptionalAction, default=None,
                   help="clip the x0 prediction to [-1, 1] during generation (default: on; a diffusers model as its "
                        "scheduler's clip_sample says; off for latent models; inversion never clips)")
    p.add_argument("--save_pairs", action="store_true",
                   help="also write source|translation side by side under SAVE_DIR/_pairs/")
    p.add_argument("--overwrite", action="store_true",
                   help="translate every input again, even those whose output already exists")
    p.add_argument("--save_grid", action="store_true",
                   help="also write, per input, the source then every translation in a row under SAVE_DIR/_grids/")
    p.add_argument("--cycle", action="store_true",
                   help="also translate every result back to class A and report the cycle PSNR per image "
                        "(SAVE_DIR/cycle.csv) and on average")
    p.add_argument("--save_latents", action="store_true",
                   help="keep each image's DDIM latent as SAVE_DIR/_latents/<path>.pt, for --from_latents")
    p.add_argument("--from_latents", metavar="DIR",
                   help="generate from the latents a --save_latents run left in DIR instead of inverting again")
    p.add_argument("--list_classes", metavar="QUERY",
                   help="print the ImageNet classes matching QUERY (a name, a WordNet id or an index) and exit")
    p.add_argument("--mixed_precision", choices=("auto", "no", "fp16", "bf16"), default="auto",
                   help="the networks' precision, weights cast once. auto (default): fp16/bf16 if accelerate "
                        "launch was given one, else bf16 on a GPU (fp16 where bf16 is unsupported) and float32 "
                        "on the CPU; no: float32 everywhere; fp16 needs a GPU")
    p.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                   help="torch.compile the networks (minutes of compiling, then about 2x faster on a GPU); "
                        "auto: on a GPU when a process has at least 256 images (default: auto)")
    p.add_argument("--deterministic", action="store_true",
                   help="on the CPU, outputs bit-identical for any --micro_batch and process count: each image "
                        "goes through the networks alone on one thread (slower; see the README)")
    return p


def _inside(child: Path, parent: Path) -> bool:
    child, parent = child.resolve(), parent.resolve()
    return child == parent or parent in child.parents


PATH_FLAGS = ("config", "weights", "input_dir", "save_dir", "config_B", "weights_B", "classifier_weights",
              "manifest", "from_latents")


def check_given(args, paths=PATH_FLAGS, classes=("class_A", "class_B")) -> None:
    """An empty or blank value (an unset shell variable: ``--save_dir "$OUT"``) is no path and no
    class: refused like a missing one, never read as the current folder. Both scripts check their own
    ``paths`` (argument names) this way."""
    for dest in tuple(paths) + tuple(classes):
        value = getattr(args, dest, None)
        if value is not None and not value.strip():
            flag = "--" + dest if dest != "config" else "-c/--config"
            raise UserError(f"{flag} is empty{' (an unset variable?)' if value == '' else ''}; give "
                            + ("a path" if dest in paths else "a class"))


def check_folders(in_flag: str, inp, out, why: str) -> None:
    """The folder read (``in_flag``) is a folder, the save folder is one or not there yet, and neither
    holds the other: ``why`` says what would go wrong if one did."""
    inp, out = Path(inp), Path(out)
    if not inp.is_dir():
        raise UserError(f"{in_flag}: not a folder: {printable(str(inp))}")
    if _inside(inp, out):
        raise UserError(f"{in_flag} must not be --save_dir or inside it: {why}")
    if _inside(out, inp):
        raise UserError(f"--save_dir must not be inside {in_flag}: {why}")
    if out.exists() and not out.is_dir():
        raise UserError(f"--save_dir exists and is not a folder: {printable(str(out))}")


def check_paths(args) -> None:
    """Every path check that can fail before a model is built. A diffusers model (a folder or hub id
    as --weights) needs no -c; given, -c is its scheduler config (a file, or a folder holding one)."""
    from .diffusers_loading import is_diffusers_source

    check_given(args)
    for flag, value in (("--weights", args.weights), ("--input_dir", args.input_dir), ("--save_dir", args.save_dir)):
        if value is None:
            raise UserError(f"{flag} is required")
    diffusers_A, diffusers_B = is_diffusers_source(args.weights), is_diffusers_source(args.weights_B)
    if args.weights_B is None and args.config_B is not None:
        raise UserError("--config_B and --weights_B go together")
    if args.weights_B is not None and args.config_B is None and not diffusers_B:
        raise UserError("--config_B and --weights_B go together (a diffusers folder or hub id as --weights_B "
                        "needs no --config_B)")
    for flag, value, folder_ok in (("--config", args.config, diffusers_A), ("--weights", args.weights, diffusers_A),
                                   ("--config_B", args.config_B, diffusers_B),
                                   ("--weights_B", args.weights_B, diffusers_B),
                                   ("--classifier_weights", args.classifier_weights, False),
                                   ("--manifest", args.manifest, False)):
        if value is not None and not Path(value).is_file() and not (folder_ok and (
                flag.startswith("--weights") or Path(value).is_dir())):
            raise UserError(f"{flag}: file not found: {value}")
    if args.config is None and not diffusers_A:
        raise UserError("--config is required for a checkpoint file (a diffusers folder or hub id needs none)")
    check_folders("--input_dir", args.input_dir, args.save_dir, "outputs would be read back as inputs")
    if args.from_latents is not None and not Path(args.from_latents).is_dir():
        raise UserError(f"--from_latents: not a folder: {args.from_latents}")


def check_finite(args) -> None:
    """η is a fraction of the DDPM noise (above 1 the update takes the root of a negative number);
    scales must be finite numbers."""
    if not 0 <= args.eta <= 1:  # also refuses nan
        raise UserError(f"--eta must be between 0 and 1, got {args.eta}")
    for flag, value in (("--classifier_scale", args.classifier_scale), ("--cfg_scale", args.cfg_scale)):
        if value is not None and not math.isfinite(value):
            raise UserError(f"{flag} must be a finite number, got {value}")


FLAG_OF = {"steps": "--respace_steps", "respace_type": "--respace_type", "solver": "--solver", "eta": "--eta",
           "clip_x0": "--clip_x0", "classifier_scale": "--classifier_scale", "seed": "--seed", "t_end": "--t_end",
           "cfg_scale": "--cfg_scale"}


def sampling_of(args):
    """The flags' sampling settings (``utils.bridge.Sampling``)."""
    from .bridge import Sampling

    scale = args.classifier_scale if args.classifier_scale is not None else (
        1.0 if args.classifier_weights is not None else 0.0)
    return Sampling(steps=args.respace_steps, respace_type=args.respace_type, solver=args.solver, eta=args.eta,
                    clip_x0=args.clip_x0, classifier_scale=scale, seed=args.seed, t_end=args.t_end,
                    cfg_scale=args.cfg_scale)


def check_numbers(args, cfg_A, cfg_B) -> None:
    """Checks of steps, guidance and eta against the configs (class labels: see utils.jobs)."""
    from diffusions import schedule_alphas

    from .bridge import SettingError

    total = cfg_A["diffusion"]["total_steps"]
    if args.respace_type != "none" and args.respace_steps > total:
        raise UserError(f"--respace_steps {args.respace_steps} is above the schedule's total_steps {total}")
    if args.classifier_scale is not None and args.classifier_weights is None:
        raise UserError("--classifier_scale needs --classifier_weights")
    if args.classifier_weights is not None:
        if cfg_B["classifier"] is None:
            raise UserError("--classifier_weights given but the target model's config has no 'classifier' section")
        if cfg_B["model"].get("num_classes") is None and args.class_B is None:
            raise UserError("classifier guidance needs --class_B")
    check_finite(args)
    from .pipeline import check_sampling_for
    try:
        check_sampling_for(cfg_B, {"cfg_scale": args.cfg_scale, "clip_x0": args.clip_x0})
    except UserError as e:
        raise UserError("--" + str(e)) from None
    if args.eta > 0 and not SOLVERS[args.solver].stochastic:
        raise UserError(f"--eta > 0 needs --solver ddim; the {args.solver} solver is deterministic")
    if args.from_latents is not None and args.save_latents:
        raise UserError("--from_latents and --save_latents together would copy latents; use one")
    try:  # everything the library checks too, here before any model loads
        sampling_of(args).check(schedule_alphas(cfg_A["diffusion"]))
    except SettingError as e:
        raise UserError(f"{FLAG_OF.get(e.field, e.field)} {e.problem}") from None
    except ValueError as e:
        raise UserError(str(e)) from None
