"""A user's image folder as training data: its classes, its readable images, and each step's samples.

A folder of class subfolders gives a class-conditional model (the folder names are the class names);
one folder of images gives an unconditional model. Every image is read once before training, as the
sampling side reads inputs (resized and centre-cropped to the model's size): unreadable files are
skipped and listed, and when the decoded images fit in ``cache_mb`` they stay in memory.

Every random draw is a function of the seed, the optimizer step and the sample's place in the step's
global batch, never of loader timing or of how many processes share the batch: which image (a seeded
permutation per epoch), its flip, its timestep t and its noise. So a resumed run draws what the
uninterrupted one would have, and one process draws what two would together.
"""

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from .errors import UserError, printable
from .images import IMAGE_EXTENSIONS, ImageReadError, image_seed, load_image, scan_images, to_tensor

CLASS_MODES = ("auto", "folders", "none")


@dataclass
class ImageFolder:
    """The usable images of a data folder: paths relative to ``root``, a label per image (None for an
    unconditional set), the class names, what was skipped and why, and the decoded pixels when cached."""
    root: Path
    files: list
    labels: Optional[list]
    class_names: Optional[list]
    skipped: list = field(default_factory=list)  # (relative path, reason)
    enlarged: int = 0  # images smaller than the model's size, enlarged to it
    pixels: Optional[np.ndarray] = None  # (N, size, size, 3) uint8, when cached


def identity(data_dir, found) -> str:
    """The image files and their classes (``find_images``'s result) in a few words that change when the
    data does: a resumed run must see the data the first one saw. Names and sizes, not pixels: a
    folder of a million images is summed up in seconds."""
    files, labels, _ = found
    digest = hashlib.sha256()
    for i, rel in enumerate(files):
        try:
            size = (Path(data_dir) / rel).stat().st_size
        except OSError:
            size = -1
        label = labels[i] if labels is not None else -1
        digest.update(f"{rel.as_posix()}\0{size}\0{label}\n".encode("utf-8", "surrogateescape"))
    return f"{len(files)} files {digest.hexdigest()[:12]}"


def _numeric(name: str) -> bool:
    return name.strip().lstrip("-").isdigit()


def class_order(names: list) -> list:
    """Folder names in label order: numbers first by value (folder "3" gets label 3), then the rest by
    name. Numbered folders must therefore be 0, 1, 2, …: a folder "1" with no "0" is refused, since
    ``--class_B 1`` would then mean two different classes."""
    numbers = sorted((n for n in names if _numeric(n)), key=lambda n: int(n))
    words = sorted((n for n in names if not _numeric(n)), key=lambda n: (n.casefold(), n))
    for label, name in enumerate(numbers):
        if int(name) != label:
            found = ", ".join(numbers[:8]) + (", …" if len(numbers) > 8 else "")
            raise UserError(f"class folders named by numbers must be 0, 1, 2, … without gaps (found {found}): folder "
                            f"{name!r} would get label {label}; rename the folders, or name them by words")
    return numbers + words


def _visible_subfolders(root: Path) -> list:
    try:
        return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    except OSError as e:
        raise UserError(f"--data_dir {printable(str(root))} cannot be read: {e.strerror or type(e).__name__}") from None


def _no_images(shown: str) -> str:
    return f"--data_dir {shown} holds no images (looked for {' '.join(sorted(IMAGE_EXTENSIONS))})"


def find_images(data_dir, classes: str = "auto", exclude=None):
    """(relative paths, labels or None, class names or None) of a data folder.

    ``classes``: ``folders`` (each subfolder is a class, scanned recursively), ``none`` (every image in
    the folder and below, one unconditional domain) or ``auto`` (folders when the images lie in two or
    more subfolders and none directly in the folder; none when they all lie directly in it).
    Folders starting with '.' or '_' are no classes."""
    root = Path(data_dir)
    if not root.is_dir():
        raise UserError(f"--data_dir: not a folder: {printable(str(root))}")
    shown = printable(str(root))
    if classes == "none":
        files = scan_images(root, exclude=exclude)
        if not files:
            raise UserError(_no_images(shown))
        return files, None, None
    top = [p for p in scan_images(root, exclude=exclude) if len(p.parts) == 1]
    per_class = {}
    for name in _visible_subfolders(root):
        found = scan_images(root / name, exclude=exclude)
        if found:
            per_class[name] = [Path(name) / rel for rel in found]
    if classes == "auto":
        if top and not per_class:
            return top, None, None
        if top and per_class:
            raise UserError(f"--data_dir {shown} has images both directly in it ({len(top)}) and in subfolders "
                            f"({', '.join(map(repr, list(per_class)[:4]))}): pass --classes folders (each subfolder "
                            "a class; move the loose images into one) or --classes none (one domain, every image)")
    elif top:
        raise UserError(f"--data_dir {shown} has {len(top)} image(s) directly in it, outside any class folder "
                        f"(such as {printable(top[0].as_posix())}): move them into a class folder, or pass "
                        "--classes none for one unconditional domain")
    if not per_class:
        raise UserError(_no_images(shown))
    if len(per_class) == 1:
        only = next(iter(per_class))
        raise UserError(f"--data_dir {shown} has one class folder only ({printable(only)!r}); a class-conditional "
                        f"model needs two or more: for one domain pass --data_dir {printable(str(root / only))} "
                        "(an unconditional model) or --classes none")
    for name in per_class:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise UserError(f"class folder {printable(name)!r} has a name that is not UTF-8 text: rename it (class "
                            "names go into the model's config)") from None
    names = class_order(list(per_class))
    from .config import check_class_names
    try:
        check_class_names(names, len(names))
    except UserError as e:  # names alike but for case: --class_B could not tell them apart
        raise UserError(f"--data_dir {shown}: the class folders cannot all be class names: {e}") from None
    files, labels = [], []
    for label, name in enumerate(names):
        files += per_class[name]
        labels += [label] * len(per_class[name])
    return files, labels, names


def _read(path: Path, size: int):
    """(pixels or None, reason or None, whether the image was smaller than ``size``)."""
    try:
        with Image.open(path) as img:
            small = min(img.size) < size
    except Exception:  # load_image says why
        small = False
    try:
        return load_image(path, size), None, small
    except ImageReadError as e:
        return None, str(e), False


def read_images(data_dir, found, image_size: int, workers: int = 1, cache_mb: float = 2048, progress=None,
                warn=None) -> ImageFolder:
    """Read each image ``find_images`` found once (``workers`` threads; the decoders release the GIL) and
    keep the readable ones; cached in memory when they fit in ``cache_mb``. ``progress(1)`` counts each
    image read; ``warn(message)`` hears each skip."""
    files, labels, names = found
    root = Path(data_dir)
    cache = len(files) * image_size * image_size * 3 <= cache_mb * 2 ** 20
    pixels, keep, skipped, enlarged = [], [], [], 0
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for i, (arr, reason, small) in enumerate(pool.map(lambda rel: _read(root / rel, image_size), files)):
            if progress is not None:
                progress(1)
            if arr is None:
                skipped.append((files[i], reason))
                if warn is not None:
                    warn(f"skipping {printable(files[i].as_posix())}: {reason}")
                continue
            keep.append(i)
            enlarged += small
            if cache:
                pixels.append(arr)
    if not keep:
        raise UserError(f"--data_dir {printable(str(root))}: none of its {len(files)} image file(s) can be read "
                        f"(first: {printable(files[0].as_posix())}: {skipped[0][1]})")
    data = ImageFolder(root, [files[i] for i in keep], [labels[i] for i in keep] if labels is not None else None,
                       names, skipped, enlarged, np.stack(pixels) if cache else None)
    if names is not None:
        empty = [n for label, n in enumerate(names) if label not in set(data.labels)]
        if empty:
            raise UserError(f"class folder(s) {', '.join(map(repr, empty))} hold no readable image")
    return data


def sample_seed(seed: int, step: int, position: int) -> int:
    """The seed of the sample at ``position`` in optimizer step ``step``'s global batch."""
    return image_seed(seed, f"train/{step}/{position}")


class EpochOrder:
    """Global sample number → image index: a fresh seeded permutation of the images every epoch."""

    def __init__(self, count: int, seed: int):
        self.count, self.seed, self._epoch, self._order = count, seed, None, None

    def __getitem__(self, number: int) -> int:
        epoch = number // self.count
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(image_seed(self.seed, f"epoch/{epoch}"))
            self._epoch, self._order = epoch, torch.randperm(self.count, generator=gen)
        return int(self._order[number % self.count])


@dataclass(frozen=True)
class Split:
    """How one optimizer step's global batch is shared: ``processes`` × ``accumulation`` micro-batches of
    ``micro_batch`` images; this process is ``rank``."""
    batch_size: int
    micro_batch: int
    accumulation: int
    processes: int = 1
    rank: int = 0

    def positions(self, micro_step: int) -> range:
        """Places in the global batch of this process's micro-batch ``micro_step``."""
        start = (micro_step * self.processes + self.rank) * self.micro_batch
        return range(start, start + self.micro_batch)


def plan_split(batch_size: int, micro_batch: Optional[int], processes: int, rank: int) -> Split:
    """The split of ``batch_size`` images per step over processes and accumulation; micro_batch None:
    the whole of each process's share at once."""
    if batch_size % processes:
        raise UserError(f"--batch_size {batch_size} does not split evenly over {processes} processes")
    share = batch_size // processes
    micro = micro_batch or share
    if micro > share or share % micro:
        raise UserError(f"--micro_batch {micro} must divide each process's share of the batch, {share} images "
                        f"(--batch_size {batch_size} over {processes} process{'es' if processes > 1 else ''})")
    return Split(batch_size, micro, share // micro, processes, rank)


class StepBatches:
    """The batch sampler: for each step from ``start`` to ``steps``, this process's micro-batches as lists
    of (image index, sample seed)."""

    def __init__(self, count: int, seed: int, split: Split, start: int, steps: int):
        self.order, self.seed, self.split, self.start, self.steps = EpochOrder(count, seed), seed, split, start, steps

    def __len__(self):
        return (self.steps - self.start) * self.split.accumulation

    def __iter__(self):
        batch = self.split.batch_size
        for step in range(self.start, self.steps):
            for micro in range(self.split.accumulation):
                yield [(self.order[step * batch + k], sample_seed(self.seed, step, k))
                       for k in self.split.positions(micro)]


def rotate_hue(x: torch.Tensor, turn: float) -> torch.Tensor:
    """An RGB image in [-1, 1] (3, H, W) with every pixel's hue turned by ``turn`` of the circle, its
    saturation and value kept (exactly, through HSV)."""
    rgb = (x + 1) / 2
    value, argmax = rgb.max(dim=0)
    low = rgb.min(dim=0).values
    chroma = value - low
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    r, g, b = rgb
    hue = torch.where(argmax == 0, ((g - b) / safe) % 6, torch.where(argmax == 1, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = (hue / 6 + turn) % 1.0
    k = (torch.tensor([5.0, 3.0, 1.0], device=x.device)[:, None, None] + hue * 6) % 6  # HSV → RGB, per channel
    out = value - chroma * (torch.minimum(k, 4 - k).clamp(0, 1))
    return out * 2 - 1


class TrainingSamples(torch.utils.data.Dataset):
    """Item (image index, sample seed) → (x₀ in [-1, 1], label, t, noise): the image (flipped, and its hue
    turned, when the seed says so and those are on), a uniform timestep and Gaussian noise, all from the
    sample's seed."""

    def __init__(self, data: ImageFolder, image_size: int, total_steps: int, flip: bool, hue_jitter: float = 0.0):
        self.data, self.image_size, self.total_steps, self.flip = data, image_size, total_steps, flip
        self.hue_jitter = hue_jitter

    def __len__(self):
        return len(self.data.files)

    def pixels(self, index: int) -> np.ndarray:
        if self.data.pixels is not None:
            return self.data.pixels[index]
        rel = self.data.files[index]
        try:
            return load_image(self.data.root / rel, self.image_size)
        except ImageReadError as e:
            raise UserError(f"{printable(rel.as_posix())} became unreadable during training ({e}); restore it "
                            "and rerun the same command to continue from the last checkpoint") from None

    def __getitem__(self, key):
        index, seed = key
        gen = torch.Generator().manual_seed(seed)
        x0 = to_tensor([self.pixels(index)])[0]
        flip = bool(torch.rand((), generator=gen) < 0.5)  # drawn always: the other draws stay the same
        if self.flip and flip:
            x0 = x0.flip(-1)
        t = int(torch.randint(0, self.total_steps, (), generator=gen))
        noise = torch.randn(x0.shape, generator=gen)
        if self.hue_jitter:  # drawn last: runs without it draw as before
            turn = (float(torch.rand((), generator=gen)) * 2 - 1) * self.hue_jitter
            x0 = rotate_hue(x0, turn) if x0.shape[0] == 3 else x0
        label = self.data.labels[index] if self.data.labels is not None else -1
        return x0.contiguous(), label, t, noise


def loader(samples: TrainingSamples, batches: StepBatches, workers: int):
    """A DataLoader over ``batches`` (order kept with any number of workers)."""
    return torch.utils.data.DataLoader(samples, batch_sampler=batches, num_workers=workers,
                                       persistent_workers=False, pin_memory=False)


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
