"""Translate a folder of class-A images to class B with a Dual Diffusion Implicit Bridge (DDIB).

    accelerate launch sample_ddib.py -c configs/256x256_diffusion.yaml --weights 256x256_diffusion.pt \
        --input_dir IN --save_dir OUT --class_A 292 --class_B 291

Each process takes its own share of the files and writes its own outputs; run ``-h`` for every option.
The work is done by the library: ``utils.pipeline.DDIB`` (models, precision, batching) and
``utils.folder`` (the folder loop); this script parses arguments and wires them together.
"""

import sys
import time
from pathlib import Path

from utils.errors import printable


def list_classes(query: str) -> int:
    from utils.classes import describe, search
    from utils.errors import UserError

    if not query.strip():
        raise UserError("--list_classes is empty; give a name, a WordNet id or an index")
    hits = search(query, limit=50)
    for index in hits:
        print(describe(index))
    if not hits:
        print(f"no ImageNet class matches {query!r}", file=sys.stderr)
    return 0 if hits else 1


def run(args) -> int:
    from utils.cli import check_numbers, check_paths
    from utils.config import model_config
    from utils.folder import plan_folder
    from utils.pipeline import check_bridgeable, default_clip_x0

    check_paths(args)
    cfg_A = model_config(args.config, args.weights)
    cfg_B = (cfg_A if args.weights_B is None and args.config_B is None
             else model_config(args.config_B, args.weights_B, "--config_B"))
    check_bridgeable(cfg_A, cfg_B)
    if args.clip_x0 is None:
        args.clip_x0 = default_clip_x0(cfg_B)
    check_numbers(args, cfg_A, cfg_B)
    plan = plan_folder(args.input_dir, args.save_dir, args.class_A, args.class_B, args.manifest, cfg_A, cfg_B,
                       guided=args.classifier_weights is not None, overwrite=args.overwrite, pairs=args.save_pairs,
                       grid=args.save_grid, latents=args.save_latents, cycle=args.cycle)

    import torch
    from accelerate import Accelerator
    from accelerate.utils import gather_object
    from tqdm import tqdm

    from utils.folder import Options, translate_folder
    from utils.launch import claim_save_dir, signals_held, with_peers
    from utils.pipeline import DDIB, launch_precision, network_dtype
    from utils.settings import redo_since

    accelerator = Accelerator(mixed_precision=None if args.mixed_precision == "auto" else args.mixed_precision)
    rank, world = accelerator.process_index, accelerator.num_processes
    prefix = f"[process {rank}] " if world > 1 else ""

    def warn(msg):
        tqdm.write(f"{prefix}warning: {msg}", file=sys.stderr)

    network_dtype(launch_precision(args.mixed_precision, accelerator.mixed_precision), accelerator.device)
    settings = claim_save_dir(args, cfg_A, cfg_B, plan, accelerator)  # before any model loads; held to the end
    mine = plan.todo[rank::world]
    ddib = DDIB.from_files(
        cfg_A, args.weights, args.classifier_weights, config_B=cfg_B if cfg_B is not cfg_A else None,
        weights_B=args.weights_B, device=accelerator.device,
        precision=launch_precision(args.mixed_precision, accelerator.mixed_precision), compile=args.compile,
        micro_batch=args.micro_batch, deterministic=args.deterministic, workload=len(mine), warn=warn,
        steps=args.respace_steps, respace_type=args.respace_type, t_end=args.t_end, solver=args.solver, eta=args.eta,
        clip_x0=args.clip_x0, seed=args.seed, cfg_scale=args.cfg_scale,
        **({} if args.classifier_scale is None else {"classifier_scale": args.classifier_scale}))
    if accelerator.is_main_process:
        _begin(args, ddib, settings, plan, warn)
    with with_peers():
        accelerator.wait_for_everyone()  # the start barrier: no process writes before the record
    if args.overwrite and not accelerator.is_main_process:
        plan.layout.redo_since = redo_since(args.save_dir)
    if accelerator.is_main_process and (ddib.compiled or args.micro_batch == "auto" or ddib.precision != "float32"):
        print(f"networks in {ddib.precision}" + (" (--mixed_precision no for float32)" if ddib.precision != "float32"
                                                 else "") + f", micro-batch {ddib.micro_batch}"
              + (", torch.compile on: the first batch includes compiling (minutes; --compile off skips it)"
                 if ddib.compiled else ""), flush=True)
    opts = Options(micro_batch=ddib.micro_batch, image_size=ddib.image_size, save_pairs=args.save_pairs,
                   save_grid=args.save_grid, save_latents=args.save_latents, cycle=args.cycle,
                   from_latents=Path(args.from_latents) if args.from_latents else None)
    start = time.time()
    with tqdm(total=len(mine), unit="img", dynamic_ncols=True, disable=not accelerator.is_main_process,
              desc="translating" + (f" (process 0 of {world})" if world > 1 else "")) as bar:
        result = translate_folder(ddib.bridge, mine, Path(args.input_dir), plan.layout, opts, progress=bar)
    plan.layout.overwrite = False  # from here on, what is done is what is fresh (newer than a redo's start)
    counts = [result.translated, result.skipped, result.failed, result.files_written]
    problems, cycle_rows = result.problems, result.cycle_rows
    complete = not (result.interrupted or result.stopped)
    if world > 1 and not result.interrupted:
        with with_peers():
            accelerator.wait_for_everyone()
            counts = accelerator.reduce(torch.tensor(counts + [not complete], device=accelerator.device),
                                        reduction="sum").tolist()
            complete = not counts.pop()
            problems, cycle_rows = gather_object(problems), gather_object(cycle_rows)
    if accelerator.is_main_process:
        counts[1] += len(plan.unplanned)
        problems = problems + [(rel.as_posix(), f"skipped: {reason}") for rel, reason in plan.unplanned]
    with signals_held():
        reported = _report(args, ddib, plan, accelerator.is_main_process, result, world, rank, counts, problems,
                           cycle_rows, time.time() - start, complete)
    if result.interrupted:
        raise KeyboardInterrupt
    if result.stopped:
        print(f"error: stopped early: {result.stopped}; free space and rerun the same command to finish the rest",
              file=sys.stderr)
        return 1
    return 1 if counts[2] or not reported else 0


def _begin(args, ddib, settings, plan, warn):
    """The models load and fit, and there is something to translate: clean up and record the run (main
    process, before the start barrier)."""
    from utils.errors import UserError
    from utils.folder import check_from_latents
    from utils.images import remove_temporaries
    from utils.reports import remove_reports
    from utils.settings import record_settings

    if args.from_latents is not None:
        check_from_latents(ddib.bridge, plan, Path(args.from_latents))
    remove_temporaries(args.save_dir)  # ours alone: the lock keeps other runs out of this folder
    if args.overwrite:
        remove_reports(args.save_dir)  # they describe outputs about to be made again
    try:
        plan.layout.redo_since = record_settings(args.save_dir, settings, args.overwrite) or plan.layout.redo_since
    except OSError as e:
        raise UserError(f"cannot record the run's settings in {args.save_dir}: {e.strerror or e}") from None
    for rel, reason in plan.unplanned:
        warn(f"skipping {printable(rel.as_posix())}: {reason}")
    if len(plan.todo) < len(plan.jobs):
        print(f"skipping {len(plan.jobs) - len(plan.todo)} input(s) whose output already exists "
              "(--overwrite redoes them)", flush=True)
    if plan.layout.redo_since is not None and not args.overwrite:
        print("finishing an interrupted --overwrite run: outputs made before it are made again", flush=True)


def _report(args, ddib, plan, main_process, result, world, rank, counts, problems, cycle_rows, elapsed,
            complete) -> bool:
    """failures.csv, cycle.csv, the gallery and the summary (one process's own files when interrupted);
    they describe the folder after this run. Returns whether every report was written: a full disk or
    a file in the way is one error line, and the summary follows all the same."""
    from utils.classes import Labels
    from utils.folder import display_settings, folder_counts, folder_rows, gallery_rows, write_reports
    from utils.gallery import write_gallery
    from utils.settings import finish_redo

    save_dir, cycle, written = Path(args.save_dir), "", True
    own = world == 1 or not result.interrupted  # else each process writes its own share
    if own and main_process:
        problems, cycle_rows = folder_rows(plan, problems, cycle_rows)
    if main_process or result.interrupted:
        try:
            where, cycle = write_reports(save_dir, problems, cycle_rows, "" if own else f"-process{rank}",
                                         whole=own and main_process)
        except OSError as e:  # a full disk, or something in the way: the summary below still tells the counts
            where, written = None, False
            print(f"error: cannot write the reports in {printable(str(save_dir))}: "
                  f"{printable(e.strerror or str(e))}", file=sys.stderr)
        if where:
            print(f"{len(problems)} problem(s) listed in {printable(str(where))}", file=sys.stderr)
    if not main_process:
        return written
    if complete and not any(plan.layout.work(job).targets for job in plan.jobs):
        finish_redo(save_dir)  # nothing made before an --overwrite is left
    translated, skipped, failed, files = (int(v) for v in counts)
    name_A, name_B = (Labels.of(net).display for net in (ddib.bridge.model_A, ddib.bridge.model_B))
    settings = display_settings(plan, ddib.bridge.sampling, ddib.precision, name_A, name_B,
                                models=args.weights + (f" → {args.weights_B}" if args.weights_B else ""),
                                guided=args.classifier_weights is not None)
    counts_shown = {**folder_counts(plan, problems),
                    "last run": f"translated {translated}, skipped {skipped}, failed {failed} in "
                                f"{elapsed:.1f} s" + (" (interrupted)" if result.interrupted else "")}
    try:
        gallery = printable(str(write_gallery(save_dir, settings,
                                              gallery_rows(plan, Path(args.input_dir), cycle_rows, name_B),
                                              problems, counts_shown, None)))
    except OSError as e:
        gallery, written = "not written", False
        print(f"error: cannot write the gallery in {printable(str(save_dir))}: {printable(e.strerror or str(e))}"
              + (f" ({printable(e.filename)})" if getattr(e, "filename", None) else ""), file=sys.stderr)
    print(f"translated {translated}, skipped {skipped}, failed {failed}, already done {len(plan.jobs) - len(plan.todo)};"
          f" {files} files written in {elapsed:.1f}s, {translated / max(elapsed, 1e-9):.2f} images/s{cycle}\n"
          f"outputs in {printable(str(save_dir))}/, gallery {gallery}", flush=True)
    if ddib.compiled:
        print(f"the first batch took {result.first_batch_s:.1f}s (compiling included)", flush=True)
    return written


def main(argv=None) -> int:
    """Parse, then run (or list classes) under the launcher's rules: one error line, exit codes, signals."""
    from utils.launch import main_guarded

    return main_guarded(argv, lambda args: list_classes(args.list_classes) if args.list_classes is not None
                        else run(args))


if __name__ == "__main__":
    from utils.launch import exit_quietly

    exit_quietly(main())
