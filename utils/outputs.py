"""Where a run writes: output names, the save folder's layout, the latent file format and CSV reports."""

import csv
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import List, Optional

import torch

from .images import atomic_path

PAIRS_DIR = "_pairs"  # side-by-side previews live here, apart from the one-to-one outputs
GRIDS_DIR = "_grids"
LATENTS_DIR = "_latents"  # latents apart from the images: no output folder can share a latent's name


RESERVED_TOP = re.compile(r"_.*|(failures|cycle)(-process[0-9]+)?\.csv|index(-[0-9]+)?\.html", re.IGNORECASE | re.DOTALL)
NAME_MAX = 255  # bytes per path component on the usual file systems


def _escape_top(rel: PurePath) -> PurePath:
    """Input folders named like something the tool writes at the top of the save folder (``_pairs``,
    ``failures.csv``, any name starting with ``_``) get one more leading ``_``. This is injective and
    its results never equal a tool-written name: escaped names start with ``_`` but are never
    ``_pairs``, ``_grids``, ``_latents``, ``_sources`` or ``_ddib`` (those would come from unescaped
    ``pairs`` etc.)."""
    first = rel.parts[0]
    if len(rel.parts) > 1 and RESERVED_TOP.fullmatch(first):
        return PurePath("_" + first, *rel.parts[1:])
    if len(rel.parts) == 1 and first.startswith("_"):
        return PurePath("_" + first)
    return rel


def _fit(stem: str, tail: str) -> str:
    """``stem + tail`` cut (in bytes, from the end of ``stem``) to the file system's name limit."""
    room = NAME_MAX - len(os.fsencode(tail))
    raw = os.fsencode(stem)
    return (os.fsdecode(raw[:room]) if len(raw) > room else stem) + tail


def _candidates(rel: PurePath):
    """Names to try for one input, best first: ``a.png``, then ``a.jpg.png``, then ``a.jpg~2.png``, …"""
    name = rel.name
    stem, suffix = (name[:-len(rel.suffix)], rel.suffix) if rel.suffix else (name, "")
    yield rel.with_name(_fit(stem, ".png"))
    yield rel.with_name(_fit(name, ".png"))
    k = 2
    while True:
        yield rel.with_name(_fit(stem, f"{suffix}~{k}.png"))
        k += 1


def latent_name(name: PurePath) -> PurePath:
    """``x.png`` → ``x.pt``: output names all end in ``.png``, so this is injective."""
    return name.with_name(name.name[:-len(".png")] + ".pt")


def _key(path: PurePath) -> str:
    return path.as_posix().lower()  # a case-insensitive save folder must not merge two outputs


def output_names(rel_paths) -> dict:
    """Map each input's relative path to its output's: a relative path ending in ``.png``.

    The map is injective by construction: every name is checked against the names already given,
    the folders the outputs need, and the latent file each name implies (``_latents/<stem>.pt``),
    all compared case-insensitively; a taken name moves on to the next candidate. Inputs whose plain
    name (``a.jpg`` → ``a.png``) no other input wants get it; the others keep their suffix
    (``a.jpg.png``) or, if that too is taken, a counter (``a.jpg~2.png``). Names stay within the
    file system's 255-byte limit. Tool-written names cannot be hit either (see ``_escape_top``).
    """
    rel_paths = list(rel_paths)
    escaped = {rel: _escape_top(PurePath(rel)) for rel in rel_paths}
    dirs = {_key(parent) for e in escaped.values() for parent in e.parents if parent != PurePath(".")}
    taken = set()

    def free(c: PurePath) -> bool:
        return _key(c) not in taken and _key(c) not in dirs and _key(latent_name(c)) not in dirs

    wanted = {}
    for e in escaped.values():
        plain = _key(next(_candidates(e)))
        wanted[plain] = wanted.get(plain, 0) + 1
    names = {}
    for rel in sorted(rel_paths, key=lambda r: PurePath(r).as_posix()):  # sole claimants of a plain name first
        plain = next(_candidates(escaped[rel]))
        if wanted[_key(plain)] == 1 and free(plain):
            names[rel] = plain
            taken.add(_key(plain))
    for rel in sorted(rel_paths, key=lambda r: PurePath(r).as_posix()):
        if rel not in names:
            names[rel] = next(c for c in _candidates(escaped[rel]) if free(c) and _key(c) not in wanted)
            taken.add(_key(names[rel]))
    return {rel: Path(name) for rel, name in names.items()}


SOURCES_DIR = "_sources"  # each source as the networks saw it: the gallery shows it wherever the folder goes


@dataclass
class Work:
    """What a run still has to do for one input: the targets to generate (no output yet, an output made
    before an interrupted --overwrite, or all with --overwrite), and the side files missing beside
    outputs that exist (previews, grid, latent, the source copy, cycle values)."""
    targets: list
    pairs: list = field(default_factory=list)
    grid: bool = False
    latent: bool = False
    source: bool = False
    cycle: list = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.targets or self.pairs or self.grid or self.latent or self.source or self.cycle)


@dataclass
class Layout:
    """Where each output goes. With several target classes in a run, outputs are grouped in
    SAVE_DIR/<class_B>/; otherwise SAVE_DIR/<relative path>.png, one-to-one with the inputs.

    It also says which of them are done: a file counts when it is a regular file and, while an
    ``--overwrite`` run is unfinished, newer than its start (``redo_since``, ns)."""
    save_dir: Path
    names: dict  # input relative path → output relative path (.png)
    grouped: bool
    overwrite: bool = False
    redo_since: Optional[int] = None
    with_pairs: bool = False
    with_grid: bool = False
    with_latents: bool = False
    cycles: Optional[dict] = None  # with --cycle: (relative path, class_B) → cycle PSNR known from earlier runs

    def output(self, rel: Path, target: Optional[int], under: str = "") -> Path:
        """The translation's path; ``under`` a preview folder (pairs) mirrors the same layout."""
        return self.save_dir / under / (str(target) if self.grouped else "") / self.names[rel]

    def grid(self, rel: Path) -> Path:
        return self.save_dir / GRIDS_DIR / self.names[rel]

    def source(self, rel: Path) -> Path:
        """The copy of the source as the networks saw it (size × size), shown by the gallery."""
        return self.save_dir / SOURCES_DIR / self.names[rel]

    def latent(self, rel: Path, save_dir: Optional[Path] = None) -> Path:
        """The latent file of ``rel`` in this run's save folder, or in ``save_dir`` (an earlier run's;
        one written before latents had their own folder keeps them beside the images)."""
        root = save_dir or self.save_dir
        if save_dir is not None and not (save_dir / LATENTS_DIR).is_dir():
            return root / latent_name(self.names[rel])
        return root / LATENTS_DIR / latent_name(self.names[rel])

    def fresh(self, path: Path) -> bool:
        """A regular file made under the recorded settings (newer than an unfinished redo's start)."""
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return False
        return stat.S_ISREG(st.st_mode) and (self.redo_since is None or st.st_mtime_ns >= self.redo_since)

    def pending(self, job) -> List[Optional[int]]:
        """The targets still to generate: those without a (complete, fresh) output, or all with --overwrite."""
        return [t for t in job.targets if self.overwrite or not self.fresh(self.output(job.rel, t))]

    def work(self, job) -> Work:
        """Everything still to do for ``job``."""
        targets = self.pending(job)
        done = [t for t in job.targets if t not in targets]
        return Work(
            targets,
            pairs=[t for t in done if self.with_pairs and not self.fresh(self.output(job.rel, t, PAIRS_DIR))],
            grid=self.with_grid and (bool(targets) or not self.fresh(self.grid(job.rel))),
            latent=self.with_latents and (self.overwrite or not self.fresh(self.latent(job.rel))),
            source=self.overwrite or not self.fresh(self.source(job.rel)),
            cycle=[t for t in done if self.cycles is not None and (job.rel.as_posix(), t) not in self.cycles])

    def files(self, job) -> list:
        """Every file the run writes for ``job``."""
        paths = [self.output(job.rel, t) for t in job.targets] + [self.source(job.rel)]
        paths += [self.output(job.rel, t, PAIRS_DIR) for t in job.targets] if self.with_pairs else []
        paths += [self.grid(job.rel)] if self.with_grid else []
        return paths + ([self.latent(job.rel)] if self.with_latents else [])

    def unsafe(self, jobs, recorded: bool) -> Optional[str]:
        """Why this run must not write its files, or None: a symlink, folder or other non-regular file
        where a file goes, a folder on the way that is a symlink (it would lead outside the save
        folder) or a file; or, in a folder that holds no record of a run (``recorded``), a file already
        there, which is then the user's and never replaced."""
        from .images import in_the_way

        checked = {}

        def folder_problem(folder: Path) -> Optional[str]:
            if folder == self.save_dir:
                return None
            if folder not in checked:
                checked[folder] = folder_problem(folder.parent)
                if checked[folder] is None:
                    try:
                        mode = os.lstat(folder).st_mode
                    except FileNotFoundError:
                        mode = None
                    if mode is not None and stat.S_ISLNK(mode):
                        checked[folder] = f"{folder} is a symlink (it would take outputs outside the save folder)"
                    elif mode is not None and not stat.S_ISDIR(mode):
                        checked[folder] = f"{folder} is a file where a folder of outputs goes"
            return checked[folder]

        for job in jobs:
            for path in self.files(job):
                problem = folder_problem(path.parent)
                if problem:
                    return problem
                why = in_the_way(path)
                if why:
                    return f"{path} {why} where an output goes"
                if not recorded and path.exists():
                    return f"{path} is already there and no run of this tool recorded it"
        return None


def save_latent(path: Path, latent: torch.Tensor, class_A, timesteps, alphas_cumprod, solver: str,
                family: str = "adm", codec: str = "identity", root=None) -> None:
    """Keep an image's latent with what it was made with, so a later run can generate from it. The
    latent is the model's state (a VAE latent's for latent models): the file names the network family
    and the codec (``models.codec``) that made it. Written inside ``root``, when given (see
    ``utils.images.atomic_path``)."""
    with atomic_path(path, root) as tmp:
        torch.save({"latent": latent.detach().float().cpu(), "class_A": class_A, "timesteps": list(timesteps),
                    "solver": solver, "alphas_cumprod_last": float(alphas_cumprod[timesteps[-1]]),
                    "family": family, "codec": codec}, tmp)


def load_latent(path: Path, timesteps, alphas_cumprod, solver: str, shape, family: str = "adm",
                codec: str = "identity"):
    """A saved latent as a tensor, or the reason (a str) it cannot be used with these settings. Any
    file is checked field by field: a foreign or damaged one is a reason, never an exception. Files
    written before latents recorded their family and codec are pixel latents of any family."""
    from .errors import printable

    shown = printable(str(path))
    if not path.is_file():
        return f"no saved latent at {shown}"
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or foreign file
        return f"cannot read latent {shown}: {printable(' '.join(str(e).split()), 120)}"
    if not isinstance(data, dict) or not torch.is_tensor(data.get("latent")):
        return f"{shown} is not a latent file (no 'latent' tensor)"
    latent, steps = data["latent"], data.get("timesteps")
    if not (latent.is_floating_point() and not latent.is_complex()):
        return f"latent {shown} holds {latent.dtype} values, not floating point"
    if not isinstance(steps, (list, tuple)) or not all(isinstance(t, int) for t in steps):
        return f"latent {shown} has no list of timesteps"
    if list(steps) != list(timesteps):
        return (f"latent {shown} was made with other timesteps ({len(steps)} steps); "
                "use the same --respace_type and --respace_steps")
    if data.get("solver", "ddim") != solver:
        return f"latent {shown} was made with the {printable(repr(data.get('solver')), 40)} solver; use the same --solver"
    if data.get("codec", "identity") != codec or data.get("family", family) != family:
        return (f"latent {shown} was made by a {printable(str(data.get('family', 'pixel')), 40)} model with the "
                f"{printable(str(data.get('codec', 'identity')), 80)} codec; this model is {family} with {codec}")
    last = data.get("alphas_cumprod_last")
    if not isinstance(last, float) or abs(last - float(alphas_cumprod[timesteps[-1]])) > 1e-12:
        return f"latent {shown} was made with another noise schedule"
    if tuple(latent.shape) != tuple(shape):
        return f"latent {shown} has shape {tuple(latent.shape)}, the model needs {tuple(shape)}"
    if not torch.isfinite(latent).all():
        return f"latent {shown} holds NaN or inf values"
    return latent.float()


def write_csv(rows, header, path: Path, root=None) -> Path:
    """Write rows (tuples, or dataclasses in header order) as CSV, atomically, sorted. Paths that are
    not UTF-8 keep their bytes (surrogate escapes), so every name can be written and found again."""
    rows = [tuple(r) for r in rows]
    with atomic_path(path, root) as tmp, open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(sorted(rows, key=lambda r: tuple(str(v) for v in r)))
    return path
