"""Where a run writes: output names, the save folder's layout, the latent file format and CSV reports."""

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import torch

from .images import atomic_path

PAIRS_DIR = "_pairs"  # side-by-side previews live here, apart from the one-to-one outputs
GRIDS_DIR = "_grids"


def output_names(rel_paths) -> dict:
    """Map each input's relative path to its output's (suffix .png).

    Inputs that would collide (``a.jpg`` and ``a.png``) keep their own suffix in the name
    (``a.jpg.png``, ``a.png.png``) so that neither overwrites the other.
    """
    plain = {rel: rel.with_suffix(".png") for rel in rel_paths}
    counts = {}
    for out in plain.values():
        key = out.as_posix().lower()
        counts[key] = counts.get(key, 0) + 1
    return {rel: (out if counts[out.as_posix().lower()] == 1 else rel.with_name(rel.name + ".png"))
            for rel, out in plain.items()}


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

    def latent(self, rel: Path, save_dir: Optional[Path] = None) -> Path:
        """The latent file of ``rel`` in this run's save folder, or in ``save_dir`` (an earlier run's)."""
        return (save_dir or self.save_dir) / self.names[rel].with_suffix(".pt")

    def pending(self, job) -> List[Optional[int]]:
        """The targets still to do: those without a (complete) output, or all with --overwrite."""
        return [t for t in job.targets if self.overwrite or not self.output(job.rel, t).is_file()]


def save_latent(path: Path, latent: torch.Tensor, class_A, timesteps, alphas_cumprod, solver: str) -> None:
    """Keep an image's latent with what it was made with, so a later run can generate from it."""
    with atomic_path(path) as tmp:
        torch.save({"latent": latent.detach().float().cpu(), "class_A": class_A, "timesteps": list(timesteps),
                    "solver": solver, "alphas_cumprod_last": float(alphas_cumprod[timesteps[-1]])}, tmp)


def load_latent(path: Path, timesteps, alphas_cumprod, solver: str, shape):
    """A saved latent as a tensor, or the reason (a str) it cannot be used with these settings."""
    if not path.is_file():
        return f"no saved latent at {path}"
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        latent = data["latent"]
    except Exception as e:  # corrupt or foreign file
        return f"cannot read latent {path}: {' '.join(str(e).split())[:120]}"
    if list(data.get("timesteps", [])) != list(timesteps):
        return (f"latent {path} was made with other timesteps ({len(data.get('timesteps', []))} steps); "
                "use the same --respace_type and --respace_steps")
    if data.get("solver", "ddim") != solver:
        return f"latent {path} was made with the {data.get('solver')!r} solver; use the same --solver"
    if abs(data.get("alphas_cumprod_last", -1.0) - float(alphas_cumprod[timesteps[-1]])) > 1e-12:
        return f"latent {path} was made with another noise schedule"
    if tuple(latent.shape) != tuple(shape):
        return f"latent {path} has shape {tuple(latent.shape)}, the model needs {tuple(shape)}"
    return latent.float()


def write_csv(rows, header, path: Path) -> Path:
    """Write rows (tuples, or dataclasses in header order) as CSV, atomically, sorted."""
    rows = [tuple(r) for r in rows]
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(sorted(rows, key=lambda r: tuple(str(v) for v in r)))
    return path
