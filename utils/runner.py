"""Translating micro-batches robustly: per-image noise, memory-error splitting, non-finite fallback."""

import contextlib
import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from diffusions import generate, invert

from .images import ImageReadError, image_seed, load_image, save_png, side_by_side, to_tensor, to_uint8

PAIRS_DIR = "_pairs"  # side-by-side previews live here, apart from the one-to-one outputs


@dataclass
class Bridge:
    """Everything fixed for a run: the networks, the schedule and the sampler settings."""
    model: torch.nn.Module
    alphas_cumprod: torch.Tensor
    timesteps: Sequence[int]
    class_A: Optional[int]
    class_B: Optional[int]
    device: torch.device
    classifier: Optional[torch.nn.Module] = None
    classifier_scale: float = 0.0
    eta: float = 0.0
    clip_x0: bool = True
    seed: int = 0
    autocast: Optional[Callable] = None  # a context manager factory for mixed precision, or None
    warn: Callable[[str], None] = print
    _split_warned: bool = field(default=False, repr=False)

    def _noise_sampler(self, rel_paths, shape):
        """Each image draws its generation noise from its own generator, so results do not depend on
        which other images share its batch or process."""
        if self.eta == 0:
            return None
        gens = [torch.Generator().manual_seed(image_seed(self.seed, p)) for p in rel_paths]
        return lambda i: torch.stack([torch.randn(shape, generator=g) for g in gens]).to(self.device)

    def _run(self, x0: torch.Tensor, rel_paths, autocast: bool) -> torch.Tensor:
        ctx = self.autocast() if autocast and self.autocast is not None else contextlib.nullcontext()
        with torch.no_grad(), ctx:
            latent = invert(self.model, x0, self.class_A, self.alphas_cumprod, self.timesteps)
            return generate(self.model, latent, self.class_B, self.alphas_cumprod, self.timesteps, eta=self.eta,
                            clip_x0=self.clip_x0, classifier=self.classifier,
                            classifier_scale=self.classifier_scale,
                            noise_sampler=self._noise_sampler(rel_paths, x0.shape[1:]))

    def _run_splitting(self, x0, rel_paths, autocast: bool) -> torch.Tensor:
        try:
            return self._run(x0, rel_paths, autocast)
        except torch.OutOfMemoryError:
            if len(x0) == 1:
                raise
            if not self._split_warned:
                self.warn(f"out of memory at {len(x0)} images per batch; retrying with smaller batches "
                          "(pass a smaller --micro_batch to avoid this)")
                self._split_warned = True
            if x0.is_cuda:
                torch.cuda.empty_cache()
            half = len(x0) // 2
            return torch.cat([self._run_splitting(x0[:half], rel_paths[:half], autocast),
                              self._run_splitting(x0[half:], rel_paths[half:], autocast)])

    def translate(self, x0: torch.Tensor, rel_paths) -> tuple:
        """Translate a batch; returns (images, ok mask). Images that come out non-finite under mixed
        precision are redone in float32; any still non-finite are marked not ok, never returned as
        valid."""
        x0 = x0.to(self.device)
        out = self._run_splitting(x0, rel_paths, autocast=True)
        bad = ~torch.isfinite(out).flatten(1).all(dim=1)
        if bad.any() and self.autocast is not None:
            idx = bad.nonzero().flatten().tolist()
            self.warn(f"{len(idx)} image(s) came out non-finite in mixed precision; redoing them in float32")
            out[bad] = self._run_splitting(x0[bad], [rel_paths[i] for i in idx], autocast=False)
            bad = ~torch.isfinite(out).flatten(1).all(dim=1)
        return out, ~bad


@dataclass
class FolderResult:
    """What one process did: counts, and (path, reason) for each input it could not translate."""
    translated: int = 0
    skipped: int = 0
    failed: int = 0
    problems: list = field(default_factory=list)
    interrupted: bool = False


def translate_folder(bridge: Bridge, rel_paths, input_dir: Path, save_dir: Path, names: dict, image_size: int,
                     micro_batch: int, save_pairs: bool, progress=None) -> FolderResult:
    """Read, translate and write ``rel_paths`` in micro-batches; unreadable files are skipped with one
    warning each. Ctrl-C (or SIGTERM) stops at once: what was written stays, the batch in hand is
    dropped, and ``interrupted`` is set."""
    result = FolderResult()
    try:
        for start in range(0, len(rel_paths), micro_batch):
            batch = []
            for rel in rel_paths[start:start + micro_batch]:
                try:
                    batch.append((rel, load_image(input_dir / rel, image_size)))
                except ImageReadError as e:
                    bridge.warn(f"skipping {rel.as_posix()}: {e}")
                    result.skipped += 1
                    result.problems.append((rel.as_posix(), f"skipped: {e}"))
            if batch:
                _translate_and_save(bridge, batch, save_dir, names, save_pairs, result)
            if progress is not None:
                progress.update(len(rel_paths[start:start + micro_batch]))
    except KeyboardInterrupt:
        result.interrupted = True
    return result


def _translate_and_save(bridge, batch, save_dir, names, save_pairs, result):
    rels = [rel for rel, _ in batch]
    try:
        out, ok = bridge.translate(to_tensor([arr for _, arr in batch]), rels)
    except torch.OutOfMemoryError:
        for rel in rels:
            bridge.warn(f"failed {rel.as_posix()}: out of memory even at one image per batch")
            result.failed += 1
            result.problems.append((rel.as_posix(), "failed: out of memory"))
        return
    for (rel, src), image, good in zip(batch, out, ok.tolist()):
        if not good:
            bridge.warn(f"failed {rel.as_posix()}: the translation is not finite (NaN or inf)")
            result.failed += 1
            result.problems.append((rel.as_posix(), "failed: non-finite translation"))
            continue
        arr = to_uint8(image)
        if save_pairs:
            save_png(side_by_side(src, arr), save_dir / PAIRS_DIR / names[rel])
        save_png(arr, save_dir / names[rel])  # last, so an existing output means a complete one
        result.translated += 1


def write_problems(problems, path: Path) -> Path:
    """Write (path, reason) rows as CSV, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "reason"])
        writer.writerows(sorted(problems))
    os.replace(tmp, path)
    return path
