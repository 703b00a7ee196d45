"""Translating a folder: micro-batches of jobs, every output written atomically, every input counted.

A job (``utils.jobs.Job``) is one input image with its source class and its target classes: it is
inverted once and generated once per target. Inputs that cannot be read or come out non-finite are
listed with a reason; the run goes on.
"""

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, NamedTuple, Optional

import numpy as np
import torch

from .bridge import Bridge
from .errors import printable
from .images import ImageReadError, load_image, psnr, save_png, side_by_side, to_tensor, to_uint8
from .outputs import PAIRS_DIR, Layout, load_latent, save_latent
from .reports import CYCLE, FAILURES, class_cell, cycle_values, mean_cycle, read_rows, remove_reports, write_report
from .writes import RunStopped, write_or_fail


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
    """What one process did: counts (each input counted once: translated, skipped or failed), problems
    and cycle rows."""
    translated: int = 0
    skipped: int = 0
    failed: int = 0
    problems: List[Problem] = field(default_factory=list)
    cycle_rows: List[CycleRow] = field(default_factory=list)
    files_written: int = 0  # translations, previews, grids, latents and source copies
    interrupted: bool = False
    stopped: str = ""  # why the run stopped early (a full disk): the summary and reports still follow
    first_batch_s: float = 0.0  # includes warm-up and any compiling
    counted: set = field(default_factory=set, repr=False)  # inputs already counted as skipped or failed

    def problem(self, bridge, rel, kind: str, reason: str):
        """List a problem of ``rel``; its input is counted once, however many of its files failed."""
        bridge.warn(f"{'skipping' if kind == 'skipped' else 'failed'} {printable(rel.as_posix())}: {reason}")
        self.problems.append(Problem(rel.as_posix(), f"{kind}: {reason}"))
        if rel not in self.counted:
            self.counted.add(rel)
            setattr(self, kind, getattr(self, kind) + 1)


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
                          bridge.alphas_cumprod, bridge.sampling.solver, *bridge.latent_space.values(),
                          root=layout.save_dir)
    return kept, latents


def _generate(bridge, kept, latents, work, layout, opts, result) -> dict:
    """Generate every pending target of the kept jobs and write it (its preview first: an existing
    output is a complete one); returns the images written, by (relative path, target)."""
    pairs = [(i, job, src, target) for i, job, src in kept for target in work[job.rel].targets]
    images = {}
    for start in range(0, len(pairs), opts.micro_batch):
        part = pairs[start:start + opts.micro_batch]
        idx = [i for i, *_ in part]
        keys = [f"{job.rel.as_posix()}#{target}" for _, job, _, target in part]
        out, ok = bridge.generate(latents[idx], [t for *_, t in part], keys)
        for (i, job, src, target), image, good in zip(part, out, ok.tolist()):
            if not good:
                result.problem(bridge, job.rel, "failed", f"the translation to class {target} is not finite")
                continue
            arr = to_uint8(image)
            pair, path = layout.output(job.rel, target, under=PAIRS_DIR), layout.output(job.rel, target)
            if opts.save_pairs and not write_or_fail(result, bridge, job.rel, pair, save_png, side_by_side(src, arr),
                                                     pair, root=layout.save_dir):
                continue
            if write_or_fail(result, bridge, job.rel, path, save_png, arr, path, root=layout.save_dir):
                images[(job.rel, target)] = arr
    return images


def _earlier_output(bridge, layout, opts, result, job, target, images) -> Optional[np.ndarray]:
    """A translation an earlier run wrote, read back for a preview, a grid or a cycle value."""
    if (job.rel, target) not in images:
        try:
            images[(job.rel, target)] = load_image(layout.output(job.rel, target), opts.image_size)
        except ImageReadError as e:
            result.problem(bridge, job.rel, "failed", f"cannot read its earlier translation to class {target} "
                                                      f"({e}); delete it to have it made again")
            return None
    return images[(job.rel, target)]


def _process_batch(bridge, chunk, input_dir, layout, opts, result):
    work = {job.rel: layout.work(job) for job in chunk}
    batch = _read_sources(bridge, chunk, input_dir, opts, result)
    for job, src in batch:  # first: an input's translations are the last of its files to appear
        if work[job.rel].source:
            path = layout.source(job.rel)
            write_or_fail(result, bridge, job.rel, path, save_png, src, path, root=layout.save_dir)
    needs_latent = [(job, src) for job, src in batch
                    if work[job.rel].targets or (opts.save_latents and work[job.rel].latent)]
    kept, latents = _latents(bridge, needs_latent, layout, opts, result) if needs_latent else ([], None)
    images = _generate(bridge, kept, latents, work, layout, opts, result) if kept else {}
    new = set(images)
    cycles = []
    for job, src in batch:
        todo = work[job.rel]
        for target in todo.pairs if opts.save_pairs else []:
            arr = _earlier_output(bridge, layout, opts, result, job, target, images)
            pair = layout.output(job.rel, target, under=PAIRS_DIR)
            if arr is not None:
                write_or_fail(result, bridge, job.rel, pair, save_png, side_by_side(src, arr), pair,
                              root=layout.save_dir)
        if opts.save_grid and (todo.grid or any((job.rel, t) in new for t in job.targets)):
            made = [t for t in job.targets if (job.rel, t) in new or t not in todo.targets]  # now or earlier
            shown = [_earlier_output(bridge, layout, opts, result, job, t, images) for t in made]
            if shown and all(arr is not None for arr in shown):
                write_or_fail(result, bridge, job.rel, layout.grid(job.rel), save_png, side_by_side(src, *shown),
                              layout.grid(job.rel), root=layout.save_dir)
        if opts.cycle:
            for target in job.targets:
                if (job.rel, target) in new or target in todo.cycle:
                    arr = _earlier_output(bridge, layout, opts, result, job, target, images)
                    if arr is not None:
                        cycles.append((job, src, target, arr))
    _cycle(bridge, cycles, opts.micro_batch, result)
    for job, _ in batch:
        if job.rel not in result.counted and work[job.rel]:
            result.translated += 1  # every file it needed is written


def _cycle(bridge, items, micro_batch: int, result):
    """Translate each written result back to its source class, A → B → A, the bridge's cycle consistency:
    the round trip of the image as written (8 bits), so a value can be measured again from the file."""
    for start in range(0, len(items), micro_batch):
        part = items[start:start + micro_batch]
        back_latents, ok_b = bridge.invert(to_tensor([arr for *_, arr in part]), [t for _, _, t, _ in part], side="B")
        back, ok_a = bridge.generate(back_latents, [job.class_A for job, *_ in part],
                                     [f"{job.rel.as_posix()}#cycle" for job, *_ in part], side="A", guided=False)
        for (job, src, target, _), image, fine in zip(part, back, (ok_b & ok_a).tolist()):
            value = psnr(to_uint8(image), src, data_range=255.0) if fine else float("nan")
            result.cycle_rows.append(CycleRow(job.rel.as_posix(), job.class_A, target, value))


def write_reports(save_dir: Path, problems, cycle_rows, suffix: str = "", whole: bool = False) -> tuple:
    """failures.csv and cycle.csv (``suffix`` names one process's share); returns (failures path or
    None, the mean cycle PSNR text or ''). ``whole``: the rows describe the whole folder (see
    ``folder_rows``), so a report left without rows is removed, as are the shares of an earlier
    interrupted run of several processes."""
    where = write_report(save_dir, FAILURES, problems, suffix)
    if cycle_rows or whole:
        write_report(save_dir, CYCLE, cycle_rows, suffix)
    if whole and not suffix:
        remove_reports(save_dir, shares_only=True)
    return where, mean_cycle(cycle_rows)


def folder_rows(plan, problems, cycle_rows) -> tuple:
    """The folder's problems and cycle values after this run: this run's, and an earlier run's where
    still true (a problem of an input this run did not get to, a value of an output not made again)."""
    layout = plan.layout
    by_rel = {job.rel.as_posix(): job for job in plan.jobs}
    problems = [tuple(p) for p in problems]
    new_paths = {p[0] for p in problems}
    kept = [row for row in read_rows(layout.save_dir, FAILURES)
            if row[0] not in new_paths and row[0] in by_rel and layout.work(by_rel[row[0]])]
    problems = list(dict.fromkeys(problems + kept))
    values = {}
    for path, class_A, class_B, value in read_rows(layout.save_dir, CYCLE) + [tuple(map(_cell, r)) for r in cycle_rows]:
        job = by_rel.get(path)
        target = class_cell(class_B)
        if job is not None and target in job.targets and layout.fresh(layout.output(job.rel, target)):
            values[(path, target)] = (path, class_A, class_B, value)
    return problems, sorted(values.values())


def _cell(value) -> str:
    return "" if value is None else str(value)


@dataclass
class Plan:
    """A folder run before any model loads: the jobs, inputs that cannot be planned, the layout and
    the jobs still to do (a rerun skips finished outputs)."""
    jobs: list
    unplanned: list  # (relative path, reason)
    layout: Layout
    todo: list


def plan_folder(input_dir, save_dir, class_A, class_B, manifest, cfg_A: dict, cfg_B: dict,
                guided: bool, overwrite: bool, *, pairs: bool = False, grid: bool = False, latents: bool = False,
                cycle: bool = False) -> Plan:
    """Scan ``input_dir``, read every input's classes (flags, folders or manifest) and lay out outputs;
    a plan with nothing to translate is an error. ``pairs``, ``grid``, ``latents`` and ``cycle`` are the
    side files the run writes: an input counts as done only with all of them."""
    from .classes import Labels
    from .errors import UserError
    from .images import IMAGE_EXTENSIONS, scan_images
    from .jobs import all_targets, plan_jobs
    from .outputs import output_names
    from .settings import redo_since

    unreadable = []
    rel_paths = scan_images(input_dir, exclude=save_dir, unreadable=unreadable)
    if not rel_paths:
        raise UserError(f"--input_dir: no image files found under {input_dir} "
                        f"(looked for {' '.join(sorted(IMAGE_EXTENSIONS))})")
    jobs, unplanned = plan_jobs(rel_paths, class_A, class_B, manifest, Labels.of(cfg_A), Labels.of(cfg_B),
                                cfg_B["classifier"].get("out_channels", 1000) if guided else None)
    if not jobs:
        reasons = sorted({reason for _, reason in unplanned})
        raise UserError(f"nothing to translate: all {len(rel_paths)} image(s) under --input_dir are left out ("
                        + "; ".join(reasons[:2]) + (" …" if len(reasons) > 2 else "") + ")")
    unplanned = unreadable + unplanned
    layout = Layout(Path(save_dir), output_names([job.rel for job in jobs]), grouped=len(all_targets(jobs)) > 1,
                    overwrite=overwrite, redo_since=None if overwrite else redo_since(save_dir),
                    with_pairs=pairs, with_grid=grid, with_latents=latents)
    if cycle:
        layout.cycles = cycle_values(read_rows(save_dir, CYCLE))
    return Plan(jobs, unplanned, layout, [job for job in jobs if layout.work(job)])


def check_from_latents(bridge: Bridge, plan: Plan, from_latents: Path) -> None:
    """At least one image still to do has a latent in ``from_latents`` that these settings can use;
    else every image would be skipped, so the run is refused before anything is recorded. Stops at
    the first usable latent: a good folder costs one read."""
    from .errors import UserError

    ts, first = bridge.timesteps(), None
    for job in plan.todo:
        path = plan.layout.latent(job.rel, from_latents)
        if not path.is_file():
            continue
        latent = load_latent(path, ts, bridge.alphas_cumprod, bridge.sampling.solver, bridge.state_shape,
                             **bridge.latent_space)
        if torch.is_tensor(latent):
            return
        first = first or latent
    if first is not None:
        raise UserError(f"nothing to translate: no latent in --from_latents {printable(str(from_latents))} can be "
                        f"used with these settings ({first})")
    if plan.todo:
        example = printable(str(plan.layout.latent(plan.todo[0].rel, from_latents)))
        raise UserError(f"nothing to translate: --from_latents {printable(str(from_latents))} holds no latent for "
                        f"the {len(plan.todo)} image(s) to do (looked for {example}, as --save_latents writes it; "
                        "give that run's --save_dir)")


def gallery_rows(plan: Plan, input_dir: Path, cycle_rows, class_name) -> list:
    """One gallery row per input with at least one finished translation (this run's or an earlier
    one's), captioned with ``class_name(label)`` and its cycle PSNR where there is one. The source is
    the copy in the save folder where there is one, so the page survives moving the folder."""
    from .gallery import GalleryRow, Translation

    psnrs = {(r[0], class_cell(r[2])): float(r[3]) for r in cycle_rows}
    rows = []
    for job in plan.jobs:
        paths = {t: plan.layout.output(job.rel, t) for t in job.targets}
        outputs = [Translation(path.relative_to(plan.layout.save_dir).as_posix(), class_name(t),
                               psnrs.get((job.rel.as_posix(), t)))
                   for t, path in paths.items() if plan.layout.fresh(path)]
        if outputs:
            copy = plan.layout.source(job.rel)
            source = copy if plan.layout.fresh(copy) else Path(input_dir) / job.rel
            rows.append(GalleryRow(str(source), job.rel.as_posix(), class_name(job.class_A), outputs))
    return rows


def folder_counts(plan: Plan, problems) -> dict:
    """What the folder holds after the latest run, for the gallery: inputs done, skipped, failed, to do."""
    kinds = {}
    for path, reason in problems:
        kinds.setdefault(path, reason.split(":", 1)[0])
    undone = [job.rel.as_posix() for job in plan.jobs if plan.layout.work(job)]
    return {"inputs": len(plan.jobs) + len(plan.unplanned), "translated": len(plan.jobs) - len(undone),
            "skipped": sum(1 for k in kinds.values() if k == "skipped"),
            "failed": sum(1 for k in kinds.values() if k == "failed"),
            "still to do": sum(1 for rel in undone if rel not in kinds)}


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
