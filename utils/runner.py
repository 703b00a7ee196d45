"""Translating a folder: per-image jobs, micro-batches, and the guards that keep a long run going.

A job is one input image with its source class and its target classes: it is inverted once and
generated once per target. The guards split a batch that runs out of memory, redo in float32 what
came out non-finite under mixed precision, and never write a non-finite image.
"""

import csv
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch

from diffusions import generate, invert

from .images import (ImageReadError, atomic_path, image_seed, load_image, save_png, side_by_side, to_tensor,
                     to_uint8)

PAIRS_DIR = "_pairs"  # side-by-side previews live here, apart from the one-to-one outputs
GRIDS_DIR = "_grids"


@dataclass
class Job:
    """One input image: where it is, its source class and the classes to translate it to."""
    rel: Path
    class_A: Optional[int]
    targets: List[Optional[int]]


def _labels(values: Sequence[Optional[int]], device) -> Optional[torch.Tensor]:
    if values[0] is None:
        return None
    return torch.tensor(values, dtype=torch.long, device=device)


@dataclass
class Bridge:
    """The networks of both sides, the schedule and the sampler settings, with guarded batch calls."""
    model_A: torch.nn.Module
    model_B: torch.nn.Module
    alphas_cumprod: torch.Tensor
    timesteps: Sequence[int]
    device: torch.device
    classifier: Optional[torch.nn.Module] = None
    classifier_scale: float = 0.0
    eta: float = 0.0
    clip_x0: bool = True
    seed: int = 0
    low_precision: bool = False  # the networks hold 16-bit weights
    fallback: Optional[Callable[[], tuple]] = None  # builds float32 (model_A, model_B, classifier) on demand
    pad_to: Optional[int] = None  # compiled networks: pad every batch to this size (one static shape)
    warn: Callable[[str], None] = print
    _split_warned: bool = field(default=False, repr=False)
    _float32: Optional[tuple] = field(default=None, repr=False)

    def _networks(self, low: bool) -> dict:
        if low or not self.low_precision:
            nets = (self.model_A, self.model_B, self.classifier)
        else:
            if self._float32 is None:
                self._float32 = self.fallback()
            nets = self._float32
        return dict(zip(("A", "B", "classifier"), nets))

    def _split_on_oom(self, fn, idx: list, low: bool) -> torch.Tensor:
        padded = idx + [idx[-1]] * (self.pad_to - len(idx)) if self.pad_to and len(idx) < self.pad_to else idx
        try:
            with torch.no_grad():
                return fn(padded, self._networks(low))[:len(idx)]
        except torch.OutOfMemoryError:
            if len(idx) == 1:
                raise
            if not self._split_warned:
                self.warn(f"out of memory at {len(idx)} images per batch; retrying with smaller batches "
                          "(pass a smaller --micro_batch to avoid this)")
                self._split_warned = True
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            self.pad_to = None  # smaller batches from here on
            half = len(idx) // 2
            return torch.cat([self._split_on_oom(fn, idx[:half], low), self._split_on_oom(fn, idx[half:], low)])

    def _guarded(self, fn, n: int):
        """Run ``fn(indices, networks)`` over a batch of n; returns (output, finite mask)."""
        out = self._split_on_oom(fn, list(range(n)), low=True)
        bad = ~torch.isfinite(out).flatten(1).all(dim=1)
        if bad.any() and self.low_precision and self.fallback is not None:
            redo = bad.nonzero().flatten().tolist()
            self.warn(f"{len(redo)} image(s) came out non-finite in 16-bit precision; redoing them in float32")
            out[bad] = self._split_on_oom(fn, redo, low=False)
            bad = ~torch.isfinite(out).flatten(1).all(dim=1)
        return out, ~bad

    def invert(self, x0: torch.Tensor, classes: Sequence[Optional[int]], side: str = "A"):
        """Images → latents with the source model (or the target's, ``side="B"``); returns (latents, ok)."""
        x0, y = x0.to(self.device), _labels(classes, self.device)
        return self._guarded(lambda idx, nets: invert(nets[side], x0[idx], None if y is None else y[idx],
                                                      self.alphas_cumprod, self.timesteps), len(x0))

    def generate(self, latents: torch.Tensor, classes: Sequence[Optional[int]], keys: Sequence[str],
                 side: str = "B", guided: bool = True):
        """Latents → images with the target model (or the source's, ``side="A"``); ``keys`` name each
        image's noise."""
        latents, y = latents.to(self.device), _labels(classes, self.device)

        def fn(idx, nets):
            return generate(nets[side], latents[idx], None if y is None else y[idx], self.alphas_cumprod,
                            self.timesteps, eta=self.eta, clip_x0=self.clip_x0,
                            classifier=nets["classifier"] if guided else None,
                            classifier_scale=self.classifier_scale,
                            noise_sampler=self._noise_sampler([keys[i] for i in idx], latents.shape[1:]))
        return self._guarded(fn, len(latents))

    def _noise_sampler(self, keys, shape):
        """Each image draws its noise from its own generator, seeded by the run's seed and the image's
        key, so results do not depend on which other images share its batch or process."""
        if self.eta == 0:
            return None
        gens = [torch.Generator().manual_seed(image_seed(self.seed, k)) for k in keys]
        return lambda i: torch.stack([torch.randn(tuple(shape), generator=g) for g in gens]).to(self.device)

    def translate(self, x0: torch.Tensor, keys: Sequence[str], class_A=None, class_B=None):
        """One bridge for a batch with one source and one target class; returns (images, ok)."""
        latents, ok_a = self.invert(x0, [class_A] * len(x0))
        out, ok_b = self.generate(latents, [class_B] * len(x0), keys)
        return out, ok_a & ok_b


@dataclass
class Layout:
    """Where each output goes. With several target classes in a run, outputs are grouped in
    SAVE_DIR/<class_B>/; otherwise SAVE_DIR/<relative path>.png, one-to-one with the inputs."""
    save_dir: Path
    names: dict  # input relative path → output relative path (.png)
    grouped: bool
    overwrite: bool = False

    def output(self, rel: Path, target: Optional[int], under: str = "") -> Path:
        """The translation's path; ``under`` a preview folder (pairs) mirrors the same layout."""
        return self.save_dir / under / (str(target) if self.grouped else "") / self.names[rel]

    def grid(self, rel: Path) -> Path:
        return self.save_dir / GRIDS_DIR / self.names[rel]

    def latent(self, rel: Path) -> Path:
        return self.save_dir / self.names[rel].with_suffix(".pt")

    def pending(self, job: Job) -> List[Optional[int]]:
        """The targets still to do: those without a (complete) output, or all with --overwrite."""
        return [t for t in job.targets if self.overwrite or not self.output(job.rel, t).is_file()]


@dataclass
class Options:
    micro_batch: int
    image_size: int
    save_pairs: bool = False
    save_grid: bool = False
    save_latents: bool = False
    from_latents: Optional[Path] = None  # a previous run's SAVE_DIR holding <relative path>.pt latents
    cycle: bool = False


@dataclass
class FolderResult:
    """What one process did: counts, problems as (path, reason), and cycle rows."""
    translated: int = 0
    skipped: int = 0
    failed: int = 0
    problems: list = field(default_factory=list)
    cycle_rows: list = field(default_factory=list)
    interrupted: bool = False
    first_batch_s: float = 0.0  # includes warm-up and any compiling

    def problem(self, bridge, rel, kind: str, reason: str):
        bridge.warn(f"{'skipping' if kind == 'skipped' else 'failed'} {rel.as_posix()}: {reason}")
        setattr(self, kind, getattr(self, kind) + 1)
        self.problems.append((rel.as_posix(), f"{kind}: {reason}"))


def translate_folder(bridge: Bridge, jobs: List[Job], input_dir: Path, layout: Layout, opts: Options,
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
    if opts.from_latents is None:
        x0 = to_tensor([arr for _, arr in batch])
        latents, ok = bridge.invert(x0, [job.class_A for job, _ in batch])
    else:
        shape = (bridge.model_A.in_channels, opts.image_size, opts.image_size)
        loaded = [_load_latent(opts.from_latents / layout.names[job.rel].with_suffix(".pt"), bridge, shape)
                  for job, _ in batch]
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
            _save_latent(latents[i], job, bridge, layout.latent(job.rel))
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
            images[(job.rel, target)] = arr
            if opts.save_pairs:
                save_png(side_by_side(src, arr), layout.output(job.rel, target, under=PAIRS_DIR))
            save_png(arr, layout.output(job.rel, target))  # last: an existing output is a complete one
    for _, job, src in kept:
        done = [t for t in job.targets if (job.rel, t) in images]
        if pending[job.rel] and all((job.rel, t) in images for t in pending[job.rel]):
            result.translated += 1
        if opts.save_grid and done:
            save_png(side_by_side(src, *(images[(job.rel, t)] for t in done)), layout.grid(job.rel))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 images, in dB (inf when identical)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


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
        value = psnr(to_uint8(image), src) if fine else float("nan")
        result.cycle_rows.append((job.rel.as_posix(), job.class_A, target, value))


def _save_latent(latent, job, bridge, path: Path):
    """Keep an image's latent with what it was made with, so a later run can generate from it."""
    with atomic_path(path) as tmp:
        torch.save({"latent": latent.detach().float().cpu(), "class_A": job.class_A,
                    "timesteps": list(bridge.timesteps),
                    "alphas_cumprod_last": float(bridge.alphas_cumprod[bridge.timesteps[-1]])}, tmp)


def _load_latent(path: Path, bridge, shape):
    """A saved latent as a tensor, or the reason it cannot be used."""
    if not path.is_file():
        return f"no saved latent at {path}"
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        latent = data["latent"]
    except Exception as e:  # corrupt or foreign file
        return f"cannot read latent {path}: {' '.join(str(e).split())[:120]}"
    if list(data.get("timesteps", [])) != list(bridge.timesteps):
        return (f"latent {path} was made with other timesteps ({len(data.get('timesteps', []))} steps); "
                "use the same --respace_type and --respace_steps")
    if abs(data.get("alphas_cumprod_last", -1.0) - float(bridge.alphas_cumprod[bridge.timesteps[-1]])) > 1e-12:
        return f"latent {path} was made with another noise schedule"
    if tuple(latent.shape) != tuple(shape):
        return f"latent {path} has shape {tuple(latent.shape)}, the model needs {tuple(shape)}"
    return latent.float()


def write_csv(rows, header, path: Path) -> Path:
    """Write rows as CSV, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(sorted(rows, key=lambda r: tuple(str(v) for v in r)))
    return path
