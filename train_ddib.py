"""Train the models a DDIB bridge needs on your own image folders.

    accelerate launch -q train_ddib.py -c configs/64x64_diffusion.yaml --data_dir DATA --save_dir RUN
    python sample_ddib.py -c RUN/config.yaml --weights RUN/ema.pt --input_dir IN --save_dir OUT \\
        --class_A cat --class_B dog

Class subfolders of DATA give a class-conditional model whose class names are the folder names; one
folder of images gives an unconditional model of one domain. Rerunning the same command continues from
the latest checkpoint. The work is done by the library: ``utils.train_data`` (the images and each
step's samples), ``utils.training`` (the loop) and ``utils.train_run`` (the run folder's files); this
script parses arguments and wires them together.
"""

import os
import sys

from utils.launch import Wording

WORDING = Wording(written="the latest checkpoint is kept", kept="checkpoints are kept",
                  rerun="rerun the same command to continue from the latest checkpoint")
LIBRARIES = ("utils.train_cli", "utils.training", "utils.train_data", "utils.train_run")


def _precision(flag: str, device) -> str:
    """accelerate's mixed_precision for ``--mixed_precision`` on ``device`` (auto: 16 bits on a GPU)."""
    import torch

    from utils.pipeline import launch_precision, network_dtype

    dtype = network_dtype(launch_precision(flag, os.environ.get("ACCELERATE_MIXED_PRECISION", "no")), device)
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "no")


def _accelerator(args):
    """The Accelerator: its device decides the precision and compiling, which it takes at construction.
    The launcher's CPU flag is read as AcceleratorState reads it, or several CPU processes would each
    run alone."""
    from accelerate import Accelerator, PartialState
    from accelerate.utils import parse_flag_from_env

    device = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU")).device
    precision = _precision(args.mixed_precision, device)
    compiled = args.compile == "on" or (args.compile == "auto" and device.type == "cuda")
    return Accelerator(mixed_precision=precision, dynamo_backend="inductor" if compiled else "no"), compiled


def run(args) -> int:
    from utils.train_cli import check_args

    check_args(args)
    import torch
    from tqdm import tqdm

    from diffusions import alphas_cumprod
    from utils.config import load_config
    from utils.errors import UserError, printable
    from utils.launch import claim_folder
    from utils.train_cli import train_settings
    from utils.train_data import TrainingSamples, find_images, identity, plan_split
    from utils.train_run import RunFolder, build_part, run_config
    from utils.training import Cadence, Recipe, train

    cfg = load_config(args.config)
    if args.threads:
        torch.set_num_threads(args.threads)
    accelerator, compiled = _accelerator(args)
    main, world = accelerator.is_main_process, accelerator.num_processes
    say, warn = _printers(main, f"[process {accelerator.process_index}] " if world > 1 else "")

    found = find_images(args.data_dir, args.classes, exclude=args.save_dir)
    cfg_run, notes = run_config(cfg, found[2], args.part)
    split = plan_split(args.batch_size, args.micro_batch, world, accelerator.process_index)
    recipe = Recipe(part=args.part, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                    lr_schedule=args.lr_schedule, warmup=args.warmup, weight_decay=args.weight_decay,
                    grad_clip=args.grad_clip, ema=args.ema, seed=args.seed, flip=args.flip,
                    hue_jitter=args.hue_jitter)
    torch.manual_seed(args.seed)  # the initial weights: the same in every process
    model = build_part(cfg_run, args.part).to(accelerator.device)  # a config that builds no network fails here
    folder = RunFolder(args.save_dir, args.part)
    settings = train_settings(args, cfg_run, identity(args.data_dir, found))

    def check():
        folder.check_settings(settings)
        folder.check_writable()  # first: a config.yaml of the user's is theirs, not "another model"
        folder.check_config(cfg_run)
        if args.resume and not folder.checkpoints():
            raise UserError(f"--resume: no {args.part} checkpoint in {printable(args.save_dir)}/checkpoints to "
                            "continue from")

    claim_folder(args.save_dir, accelerator, check, folder.settings.name)  # the lock is held until main() returns
    data, workers = _read(args, found, cfg["model"]["image_size"], main, warn)
    if main:  # the data is readable: the run is on
        from utils.images import remove_temporaries
        from utils.outputs import write_csv

        remove_temporaries(args.save_dir)  # ours alone: the lock keeps other runs out
        folder.record_settings(settings)
        folder.write_config(cfg_run, f"written by train_ddib.py from {args.config} and the folders of {args.data_dir}")
        if data.skipped:
            where = write_csv([(p.as_posix(), r) for p, r in data.skipped], ("path", "reason"),
                              folder.root / "skipped.csv", folder.root)
            print(f"{len(data.skipped)} unreadable file(s) skipped, listed in {printable(str(where))}", file=sys.stderr)
        say(_data_line(data, cfg["model"]["image_size"], notes))
        say(f"{args.part}: batch {args.batch_size} = {world} process{'es' if world > 1 else ''} × {split.micro_batch} "
            f"images × {split.accumulation} accumulation step{'s' if split.accumulation > 1 else ''}; "
            f"{accelerator.device.type}, "
            f"{'float32' if accelerator.mixed_precision == 'no' else accelerator.mixed_precision}"
            f"{', compiled' if compiled else ''}")

    cadence = Cadence(log_every=args.log_every, save_every=args.save_every, keep=args.keep,
                      sample_every=args.sample_every,
                      sample_steps=min(args.sample_steps, cfg["diffusion"]["total_steps"]), workers=workers)
    samples = TrainingSamples(data, cfg["model"]["image_size"], cfg["diffusion"]["total_steps"], args.flip,
                              args.hue_jitter)
    schedule = alphas_cumprod(cfg["diffusion"]["beta_schedule"], cfg["diffusion"]["total_steps"])
    with tqdm(total=args.steps, unit="step", dynamic_ncols=True, disable=not main,
              desc=f"training {args.part}") as bar:
        outcome = train(accelerator, model, samples, split, recipe, cadence, folder, schedule,
                        conditional=data.class_names is not None, warn=warn, say=say, progress=bar)
    if main:
        _report(args, folder, outcome, recipe, data)
        if outcome.error:
            print(f"error: {outcome.error}", file=sys.stderr)
    if outcome.stopped:
        raise KeyboardInterrupt
    return 1 if outcome.error else 0


def _printers(main: bool, prefix: str):
    """say (stdout) and warn (stderr), from the main process only, above the progress bar."""
    from tqdm import tqdm

    def say(msg):
        if main:
            tqdm.write(msg, file=sys.stdout)

    def warn(msg):
        if main:
            tqdm.write(f"{prefix}warning: {msg}", file=sys.stderr)
    return say, warn


def _read(args, found, size: int, main: bool, warn):
    """The images read once, with a progress bar; and the loader's worker count (none when cached)."""
    from tqdm import tqdm

    from utils.train_data import cpu_count, read_images

    cached = len(found[0]) * size * size * 3 <= args.cache_mb * 2 ** 20
    workers = args.workers if args.workers is not None else (0 if cached else min(4, cpu_count()))
    with tqdm(total=len(found[0]), unit="img", desc="reading images", disable=not main, leave=False) as bar:
        data = read_images(args.data_dir, found, size, workers=max(1, workers), cache_mb=args.cache_mb,
                           progress=bar.update, warn=warn)
    return data, workers


def _data_line(data, size: int, notes) -> str:
    classes = (f"{len(data.class_names)} classes ({', '.join(data.class_names[:6])}"
               f"{', …' if len(data.class_names) > 6 else ''})" if data.class_names else "unconditional")
    enlarged = f", {data.enlarged} smaller than {size}×{size} enlarged" if data.enlarged else ""
    return f"{len(data.files)} images{enlarged}, {classes}" + "".join(f"; {note}" for note in notes)


def _report(args, folder, outcome, recipe, data):
    from utils.errors import printable

    save = printable(args.save_dir)
    if outcome.images == 0:
        print(f"{save} is already trained to step {outcome.step} (--steps {recipe.steps}); nothing to do", flush=True)
        return
    rate = outcome.images / max(outcome.seconds, 1e-9)
    ended = "stopped at" if outcome.stopped or outcome.error else "trained to"
    print(f"{ended} step {outcome.step} of {recipe.steps}: "
          f"{outcome.step - outcome.start_step} steps in {outcome.seconds:.1f}s, {rate:.1f} images/s"
          + (f"; weights {', '.join(printable(str(p)) for p in outcome.weights)}" if outcome.weights else ""),
          flush=True)
    if args.part == "unet" and not (outcome.stopped or outcome.error):
        import shlex

        def word(text):  # one shell word, whatever spaces or quotes a folder or class name holds
            return shlex.quote(printable(str(text)))

        classes = (f" --class_A {word(data.class_names[0])} --class_B {word(data.class_names[-1])}"
                   if data.class_names else "")
        print(f"translate with: python sample_ddib.py -c {word(folder.config)} --weights "
              f"{word(folder.weights_for_sampling(recipe.ema > 0))} --input_dir IN --save_dir OUT{classes}", flush=True)


def main(argv=None) -> int:
    """Parse, then train under the launcher's rules: one error line, exit codes, signals."""
    from utils.launch import main_guarded

    return main_guarded(argv, run, build_parser=_parser, libraries=LIBRARIES, wording=WORDING)


def _parser():
    from utils.train_cli import build_parser  # imported by main_guarded, with signals held back

    return build_parser()


if __name__ == "__main__":
    from utils.launch import exit_quietly

    exit_quietly(main())
