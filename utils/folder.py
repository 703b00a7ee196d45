"""Translating a folder: micro-batches of jobs, every output written atomically, every input counted.

A job (``utils.jobs.Job``) is one input image with its source class and its target classes: it is
inverted once and generated once per target. Inputs that cannot be read or come out non-finite are
listed with a reason; the run goes on.
"""

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, NamedTuple, Optional

import torch

from .bridge import Bridge
from .errors import printable
from .writes import RunStopped, write_or_fail
from .images import ImageReadError, load_image, psnr, save_png, side_by_side, to_tensor, to_uint8
from .outputs import PAIRS_DIR, Layout, load_latent, save_latent, write_csv


@dataclass
class Options:
    micro_batch: int
    image_size: int
    save_pairs: bool = False
    save_grid: bool = False
    save_latents: bool = False
    from_latents: Optional[Path] = None  # a previous run's SAVE_DIR holding <relative path>.pt latents
    cycle: bool = False


class Problem(NamedTuple):
    path: str
    reason: str


class CycleRow(NamedTuple):
    path: str
    class_A: Optional[int]
    class_B: Optional[int]
    cycle_psnr_db: float


@dataclass
class FolderResult:
    """What one process did: counts, problems and cycle rows."""
    translated: int = 0
    skipped: int = 0
    failed: int = 0
    problems: List[Problem] = field(default_factory=list)
    cycle_rows: List[CycleRow] = field(default_factory=list)
    files_written: int = 0  # translations, previews, grids and latents
    interrupted: bool = False
    stopped: str = ""  # why the run stopped early (a full disk): the summary and reports still follow
    first_batch_s: float = 0.0  # includes warm-up and any compiling

    def problem(self, bridge, rel, kind: str, reason: str):
        bridge.warn(f"{'skipping' if kind == 'skipped' else 'failed'} {printable(rel.as_posix())}: {reason}")
        setattr(self, kind, getattr(self, kind) + 1)
        self.problems.append(Problem(rel.as_posix(), f"{kind}: {reason}"))


def translate_folder(bridge: Bridge, jobs: list, input_dir: Path, layout: Layout, opts: Options,
                     progress=None) -> FolderResult:
    """Process ``jobs`` in micro-batches. Ctrl-C (or SIGTERM) stops at once: what was written stays,
    the batch in hand is dropped, and ``interrupted`` is set."""
    result = FolderResult()
    try:
        for start in range(0, len(jobs), opts.micro_batch):
            chunk = jobs[start:start + opts.micro_batch]
            began = time.perf_counter()
            _process_batch(bridge, chunk, input_dir, layout, opts, result)
            if start == 0:
                result.first_batch_s = time.perf_counter() - began
            if progress is not None:
                progress.update(len(chunk))
    except KeyboardInterrupt:
        result.interrupted = True
    except RunStopped as e:
        result.stopped = str(e)
    return result


def _read_sources(bridge, chunk, input_dir, opts, result):
    batch = []
    for job in chunk:
        try:
            batch.append((job, load_image(input_dir / job.rel, opts.image_size)))
        except ImageReadError as e:
            result.problem(bridge, job.rel, "skipped", str(e))
    return batch


def _latents(bridge, batch, layout, opts, result):
    """Invert the batch (or load earlier latents); returns the jobs kept and their latents."""
    ts = bridge.timesteps()
    if opts.from_latents is None:
        latents, ok = bridge.invert(to_tensor([arr for _, arr in batch]), [job.class_A for job, _ in batch])
    else:
        shape = bridge.state_shape
        loaded = [load_latent(layout.latent(job.rel, opts.from_latents), ts, bridge.alphas_cumprod,
                              bridge.sampling.solver, shape, **bridge.latent_space) for job, _ in batch]
        ok = torch.tensor([torch.is_tensor(x) for x in loaded])
        latents = torch.stack([x if torch.is_tensor(x) else torch.zeros(shape) for x in loaded])
    kept = []
    for i, ((job, src), good) in enumerate(zip(batch, ok.tolist())):
        if good:
            kept.append((i, job, src))
        elif opts.from_latents is not None:
            result.problem(bridge, job.rel, "skipped", loaded[i])
        else:
            result.problem(bridge, job.rel, "failed", "the inversion is not finite (NaN or inf)")
    if opts.save_latents and opts.from_latents is None:
        for i, job, _ in kept:
            path = layout.latent(job.rel)
            write_or_fail(result, bridge, job.rel, path, save_latent, path, latents[i], job.class_A, ts,
                          bridge.alphas_cumprod, bridge.sampling.solver, *bridge.latent_space.values())
    return kept, latents


def _process_batch(bridge, chunk, input_dir, layout, opts, result):
    batch = _read_sources(bridge, chunk, input_dir, opts, result)
    if not batch:
        return
    kept, latents = _latents(bridge, batch, layout, opts, result)
    pending = {job.rel: layout.pending(job) for _, job, _ in kept}
    pairs = [(i, job, src, target) for i, job, src in kept for target in pending[job.rel]]
    images = {}
    for start in range(0, len(pairs), opts.micro_batch):
        part = pairs[start:start + opts.micro_batch]
        idx = [i for i, *_ in part]
        keys = [f"{job.rel.as_posix()}#{target}" for _, job, _, target in part]
        out, ok = bridge.generate(latents[idx], [t for *_, t in part], keys)
        if opts.cycle:
            _cycle(bridge, part, out, ok, result)
        for (i, job, src, target), image, good in zip(part, out, ok.tolist()):
            if not good:
                result.problem(bridge, job.rel, "failed", f"the translation to class {target} is not finite")
                continue
            arr = to_uint8(image)
            pair, path = layout.output(job.rel, target, under=PAIRS_DIR), layout.output(job.rel, target)
            if opts.save_pairs and not write_or_fail(result, bridge, job.rel, pair, save_png, side_by_side(src, arr),
                                                     pair):
                continue
            if write_or_fail(result, bridge, job.rel, path, save_png, arr, path):  # last: an existing output
                images[(job.rel, target)] = arr                                      # is a complete one
    for _, job, src in kept:
        done = [t for t in job.targets if (job.rel, t) in images]
        if pending[job.rel] and all((job.rel, t) in images for t in pending[job.rel]):
            result.translated += 1
        if opts.save_grid and done:
            write_or_fail(result, bridge, job.rel, layout.grid(job.rel), save_png,
                          side_by_side(src, *(images[(job.rel, t)] for t in done)), layout.grid(job.rel))


def _cycle(bridge, part, out, ok, result):
    """Translate each result back to its source class: A → B → A, the bridge's cycle consistency."""
    good = [k for k, g in enumerate(ok.tolist()) if g]
    if not good:
        return
    back_latents, ok_b = bridge.invert(out[good], [part[k][3] for k in good], side="B")
    back, ok_a = bridge.generate(back_latents, [part[k][1].class_A for k in good],
                                 [f"{part[k][1].rel.as_posix()}#cycle" for k in good], side="A", guided=False)
    for k, image, fine in zip(good, back, (ok_b & ok_a).tolist()):
        _, job, src, target = part[k]
        value = psnr(to_uint8(image), src, data_range=255.0) if fine else float("nan")
        result.cycle_rows.append(CycleRow(job.rel.as_posix(), job.class_A, target, value))


def write_reports(save_dir: Path, problems, cycle_rows, suffix: str = "") -> tuple:
    """failures.csv and cycle.csv (``suffix`` names one process's share); returns (failures path or
    None, the mean cycle PSNR text or '')."""
    where, cycle = None, ""
    if problems:
        where = write_csv(problems, Problem._fields, save_dir / f"failures{suffix}.csv")
    if cycle_rows:
        write_csv(cycle_rows, CycleRow._fields, save_dir / f"cycle{suffix}.csv")
        finite = [min(r[3], 100.0) for r in cycle_rows if not math.isnan(r[3])]
        if finite:
            cycle = f", cycle PSNR {sum(finite) / len(finite):.2f} dB (mean of {len(finite)})"
    return where, cycle


@dataclass
class Plan:
    """A folder run before any model loads: the jobs, inputs that cannot be planned, the layout and
    the jobs still to do (a rerun skips finished outputs)."""
    jobs: list
    unplanned: list  # (relative path, reason)
    layout: Layout
    todo: list


def plan_folder(input_dir, save_dir, class_A, class_B, manifest, cfg_A: dict, cfg_B: dict,
                guided: bool, overwrite: bool) -> Plan:
    """Scan ``input_dir``, read every input's classes (flags, folders or manifest) and lay out outputs."""
    from .classes import Labels
    from .errors import UserError
    from .images import IMAGE_EXTENSIONS, scan_images
    from .jobs import all_targets, plan_jobs
    from .outputs import output_names

    unreadable = []
    rel_paths = scan_images(input_dir, exclude=save_dir, unreadable=unreadable)
    if not rel_paths:
        raise UserError(f"--input_dir: no image files found under {input_dir} "
                        f"(looked for {' '.join(sorted(IMAGE_EXTENSIONS))})")
    jobs, unplanned = plan_jobs(rel_paths, class_A, class_B, manifest, Labels.of(cfg_A), Labels.of(cfg_B),
                                cfg_B["classifier"].get("out_channels", 1000) if guided else None)
    unplanned = unreadable + unplanned
    layout = Layout(Path(save_dir), output_names([job.rel for job in jobs]), grouped=len(all_targets(jobs)) > 1,
                    overwrite=overwrite)
    return Plan(jobs, unplanned, layout, [job for job in jobs if layout.pending(job)])


def gallery_rows(plan: Plan, input_dir: Path, cycle_rows, class_name) -> list:
    """One gallery row per input with at least one finished translation (this run's or an earlier
    one's), captioned with ``class_name(label)`` and this run's cycle PSNR where there is one."""
    from .gallery import GalleryRow, Translation

    psnrs = {(r.path, r.class_B): r.cycle_psnr_db for r in map(CycleRow._make, cycle_rows)}
    rows = []
    for job in plan.jobs:
        paths = {t: plan.layout.output(job.rel, t) for t in job.targets}
        outputs = [Translation(path.relative_to(plan.layout.save_dir).as_posix(), class_name(t),
                               psnrs.get((job.rel.as_posix(), t)))
                   for t, path in paths.items() if path.is_file()]
        if outputs:
            rows.append(GalleryRow(str(Path(input_dir) / job.rel), job.rel.as_posix(), class_name(job.class_A),
                                   outputs))
    return rows


def display_settings(plan: Plan, sampling, precision: str, name_A, name_B, models: str, guided: bool) -> dict:
    """A run's settings as a person reads them (the gallery's header): classes by name."""
    pairs = sorted({f"{name_A(j.class_A) or '-'} → " + ", ".join(name_B(t) or "-" for t in j.targets)
                    for j in plan.jobs})
    classes = "; ".join(pairs[:5]) + (f"; … ({len(pairs)} in all)" if len(pairs) > 5 else "")
    return {"model": models, "classes": classes,
            "steps": f"{sampling.steps} per half ({sampling.respace_type}, {sampling.solver}"
                     + (f", up to t = {sampling.t_end})" if sampling.t_end else ")"),
            "clip x0": "on" if sampling.clip_x0 else "off",
            "guidance": "; ".join(([f"classifier, scale {sampling.classifier_scale:g}"] if guided else [])
                                  + ([f"classifier-free, scale {sampling.cfg_scale:g}"]
                                     if sampling.cfg_scale is not None else [])) or "none",
            "eta": f"{sampling.eta:g}" + (f" (seed {sampling.seed})" if sampling.eta else ""),
            "precision": precision}
