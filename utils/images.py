"""Finding, reading, resizing and writing images.

Reading follows guided-diffusion's data pipeline (box-downsample by halves, bicubic resize of the
short side, centre crop) so inputs look like what the checkpoints were trained on. Writing is atomic:
a PNG appears under its final name only once it is complete.
"""

import contextlib
import errno
import hashlib
import math
import os
import stat
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from .errors import file_kind

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
TEMP_SUFFIX = ".ddib-tmp"  # partial outputs; never a valid image name, removed by the next run
MAX_PIXELS = 178_956_970  # refuse larger images (decompression bombs): about 13,000 × 13,000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # PIL's own check then agrees with ours
BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white


_UMASK = os.umask(0)
os.umask(_UMASK)


class ImageReadError(Exception):
    """An input file that cannot be used; the message is the reason."""


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def scan_images(root, exclude=None, unreadable=None) -> list:
    """Relative paths of all image files under ``root``, sorted, following symlinks but not loops, and
    not links into ``exclude`` (the save folder: earlier outputs are no inputs). Folders that cannot be
    read are appended to ``unreadable`` as (relative path, reason) when a list is given."""
    root = Path(root)
    exclude = os.path.realpath(exclude) if exclude is not None else None
    found, seen_dirs = [], set()

    def failed(err: OSError):
        if unreadable is not None:
            where = Path(err.filename or root)
            rel = where.relative_to(root) if where != root and root in where.parents else where
            unreadable.append((rel, f"folder not readable ({err.strerror or type(err).__name__})"))

    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=failed):
        real = os.path.realpath(dirpath)
        if real in seen_dirs or (exclude is not None and _inside(real, exclude)):
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames.sort()
        for name in filenames:
            path = Path(dirpath) / name
            if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
                if exclude is not None and _inside(os.path.realpath(path), exclude):
                    continue
                found.append(path.relative_to(root))
    return sorted(found, key=lambda p: p.as_posix())


STRIP_PIXELS = 1 << 20  # pixels per strip when a whole image is converted: temporaries stay a few MB


def _by_strips(img: Image.Image, mode: str, convert) -> Image.Image:
    """``img`` converted to ``mode`` a band of rows at a time (``convert(strip) -> Image``), so the only
    full-size image made is the result: no full-size float or wide-integer temporaries."""
    out = Image.new(mode, img.size)
    rows = max(1, STRIP_PIXELS // max(1, img.width))
    for top in range(0, img.height, rows):
        out.paste(convert(img.crop((0, top, img.width, min(img.height, top + rows)))), (0, top))
    return out


def _levels(values: np.ndarray, peak: int) -> np.ndarray:
    """Integers in 0..peak to 8-bit levels, rounded to the nearest (65535 → 255, 257·g → g)."""
    return ((values.astype(np.uint32) * 255 + peak // 2) // peak).astype(np.uint8)


FLOAT_SLACK = 1e-3  # float pixels this far outside [0, 1] are rounding, clipped; farther is another scale


def float_levels(values: np.ndarray) -> np.ndarray:
    """Float pixels in [0, 1] to 8-bit levels; anything else (NaN, [-1, 1], 0..255) is refused: a float
    image does not say its scale, and guessing wrong gives a black or washed-out image without a word."""
    values = np.asarray(values, dtype=np.float32)
    if not np.isfinite(values).all():
        raise ImageReadError("float pixels hold NaN or inf")
    low, high = float(values.min()), float(values.max())
    if low < -FLOAT_SLACK or high > 1 + FLOAT_SLACK:
        raise ImageReadError(f"float pixels must lie in [0, 1]; these span {low:g}..{high:g}")
    return (np.clip(values, 0, 1) * 255 + 0.5).astype(np.uint8)


def _eight_bit(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float grey images as 8-bit L, scaled (not clipped, as PIL's own
    conversion does): 16 bits by 65535, 32-bit integers by 255 or 65535 (whichever holds them), floats
    must lie in [0, 1]."""
    if img.mode.startswith("I;16") and not img.mode.endswith("S"):
        return _by_strips(img, "L", lambda strip: Image.fromarray(_levels(np.asarray(strip), 65535), "L"))
    if img.mode in ("I", "I;16S", "I;32", "I;32S"):
        low, high = img.getextrema()
        if low < 0 or high > 65535:
            raise ImageReadError(f"integer pixels must lie in 0..65535; these span {low}..{high}")
        peak = 255 if high <= 255 else 65535
        return _by_strips(img, "L", lambda strip: Image.fromarray(_levels(np.asarray(strip), peak), "L"))
    if img.mode == "F":
        return _by_strips(img, "L", lambda strip: Image.fromarray(float_levels(np.asarray(strip)), "L"))
    return img


def _on_white(img: Image.Image) -> Image.Image:
    """Transparent pixels (an alpha channel, or a palette's or colour key's transparency) composited on
    white, a strip at a time; RGB or L out (grey stays grey)."""
    grey = img.mode in ("LA", "La", "L", "I", "1")
    mode = "L" if grey else "RGB"

    def flatten(strip):
        rgba = strip.convert("LA" if grey else "RGBA")
        return Image.composite(rgba.convert(mode), Image.new(mode, strip.size, 255 if grey else BACKGROUND),
                               rgba.getchannel("A"))
    return _by_strips(img, mode, flatten)


def _flat(img: Image.Image) -> Image.Image:
    """RGB or L, 8 bits, opaque (transparency on white); an image already so is returned as it is, any
    other is converted a strip at a time (peak: the decoded image and the result)."""
    img = _eight_bit(img)
    transparent = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if img.mode in ("RGB", "L") and not transparent:
        return img
    if transparent:
        return _on_white(img)
    mode = "L" if img.mode == "1" else "RGB"  # palette, CMYK, YCbCr, LAB, HSV
    return _by_strips(img, mode, lambda strip: strip.convert(mode))


def _upright(img: Image.Image) -> Image.Image:
    """Rotated as EXIF says; the image itself (no copy) where it says nothing."""
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # a damaged EXIF block is no reason to refuse the pixels
        return img
    return (ImageOps.exif_transpose(img) or img) if orientation in range(2, 9) else img


RESIZED_LIMIT = 4  # the bicubic resize makes at most this many times size² pixels; beyond, only the crop


def center_crop(img: Image.Image, size: int) -> np.ndarray:
    """Short side to ``size`` and a centred square crop, as guided-diffusion's ``center_crop_arr``.
    An image so elongated that the resized whole would exceed ``RESIZED_LIMIT`` × size² pixels (a
    1×1,000,000 strip would become gigabytes) is resized only where the crop falls: the same
    sampling positions, so memory stays bounded by the decoded image plus size² pixels."""
    while min(img.size) >= 2 * size:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
    scale = size / min(img.size)
    full = tuple(round(x * scale) for x in img.size)
    if full[0] * full[1] <= RESIZED_LIMIT * size * size:
        img = img.resize(full, resample=Image.BICUBIC)
        arr = np.asarray(img)
        top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
        return arr[top:top + size, left:left + size]
    sx, sy = img.size[0] / full[0], img.size[1] / full[1]  # source pixels per output pixel, as resize uses
    top, left = (full[1] - size) // 2, (full[0] - size) // 2
    box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
    return np.asarray(img.resize((size, size), resample=Image.BICUBIC, box=box))


def load_image(path, size: int) -> np.ndarray:
    """Read one image as (size, size, 3) uint8 RGB, upright (EXIF), first frame if animated. Memory:
    the decoded image, at most one converted copy (8-bit, opaque) and a quarter of it while halving."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise ImageReadError(f"{img.width}x{img.height} pixels is above the limit of {MAX_PIXELS:,}")
                img.seek(0)
                img.load()
                ready = _flat(_upright(img))
                if ready is not img:
                    img.close()  # the decoded pixels go before any resizing
        return _rgb(center_crop(ready, size))
    except ImageReadError:
        raise
    except Image.DecompressionBombError:
        raise ImageReadError(f"the image is above the limit of {MAX_PIXELS:,} pixels") from None
    except FileNotFoundError:
        raise ImageReadError("file vanished before it could be read") from None
    except PermissionError:
        raise ImageReadError("permission denied") from None
    except Exception as e:  # PIL raises many types for corrupt files (OSError, SyntaxError, ValueError, …)
        reason = " ".join(str(e).split()) or type(e).__name__
        raise ImageReadError(f"not a readable image ({reason})") from None


def to_tensor(arrays) -> torch.Tensor:
    """uint8 HWC arrays → float32 NCHW batch in [-1, 1]."""
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().contiguous()  # NCHW memory: the same
    return x / 127.5 - 1.0  # kernels then run as on latents read back from disk


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] CHW (or NCHW) tensor → HWC (NHWC) uint8, rounded to the nearest level, as a PNG stores it."""
    return ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).movedim(-3, -1).numpy()


def psnr(a, b, data_range: float = 2.0) -> float:
    """Peak signal-to-noise ratio in dB of two images (arrays or tensors of one shape), inf when equal.
    ``data_range`` is the span of values: 2 for images in [-1, 1], 255 for uint8."""
    a, b = (x.detach().double().cpu().numpy() if torch.is_tensor(x) else np.asarray(x, dtype=np.float64)
            for x in (a, b))
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(data_range ** 2 / mse)


def array_to_image(arr: np.ndarray) -> Image.Image:
    """A numpy image, HW or HWC with 1 to 4 channels (grey, grey + alpha, RGB, RGBA), read by its dtype:
    uint8 as it is, bool as black and white, uint16 as 16 bits, other integers when within 0..255,
    floats when within [0, 1]. Anything else is refused with the reason, never guessed."""
    arr = np.asarray(arr)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 2, 3, 4)):
        raise ImageReadError(f"an image array is HW or HWC with 1 to 4 channels; got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageReadError(f"the image is empty (shape {arr.shape})")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype == np.uint16:
        arr = _levels(arr, 65535)
    elif arr.dtype.kind in "iu" and arr.dtype != np.uint8:
        low, high = int(arr.min()), int(arr.max())
        if low < 0 or high > 255:
            raise ImageReadError(f"integer pixels must lie in 0..255 (uint16 is read as 16 bits); these span "
                                 f"{low}..{high}")
        arr = arr.astype(np.uint8)
    elif arr.dtype.kind == "f":
        arr = float_levels(arr)
    elif arr.dtype != np.uint8:
        raise ImageReadError(f"pixels of type {arr.dtype} are no image: give uint8, uint16, bool or floats in [0, 1]")
    return Image.fromarray(np.ascontiguousarray(arr))


def _rgb(arr: np.ndarray) -> np.ndarray:
    return arr if arr.ndim == 3 else np.repeat(arr[:, :, None], 3, axis=2)


def pil_to_array(img: Image.Image, size: int) -> np.ndarray:
    """A PIL image as the networks see it: (size, size, 3) uint8 RGB, upright, centre-cropped. Grey
    stays one channel until the crop; 16-bit and float images are scaled (floats must lie in [0, 1])."""
    return _rgb(center_crop(_flat(_upright(img)), size))


class NotOurs(OSError):
    """Something in the way of a write that the tool did not make (a symlink, a folder, a FIFO): it is
    never written through, replaced or removed."""


def in_the_way(path) -> str:
    """Why ``path`` cannot be written as a regular file: '' when it can (absent, or a regular file)."""
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return ""
    if stat.S_ISREG(mode):
        return ""
    return "is " + file_kind(mode)


def real_folders(folder: Path, root: Path) -> None:
    """Make ``folder`` (``root`` or under it) exist as real folders: each level below ``root`` is made,
    or must already be a folder that is no symlink, so nothing written there lands outside ``root``."""
    root.mkdir(parents=True, exist_ok=True)  # the save folder itself may be a link: the user's choice
    current = root
    for part in folder.relative_to(root).parts:
        current = current / part
        try:
            os.mkdir(current)
        except FileExistsError:
            pass
        mode = os.lstat(current).st_mode
        if not stat.S_ISDIR(mode):
            raise NotOurs(errno.ELOOP if stat.S_ISLNK(mode) else errno.ENOTDIR,
                          f"is {file_kind(mode)} where the save folder needs a folder of its own", str(current))


@contextlib.contextmanager
def atomic_path(path, root=None):
    """Yield a temporary path in ``path``'s folder to write; on success it is synced and renamed to
    ``path``, so a file appears under its final name only once complete. On failure it is removed.

    Writes never go through what the tool did not make: ``path`` must be absent or a regular file (a
    symlink, folder or FIFO there raises ``NotOurs``), and with ``root`` (the save folder) every folder
    from ``root`` down to ``path`` must be a real folder, not a symlink leading elsewhere."""
    path = Path(path)
    if root is not None:
        real_folders(path.parent, Path(root))
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    _refuse_in_the_way(path)
    # a short name of its own: the final name may already be at the file system's length limit
    fd, tmp = tempfile.mkstemp(prefix=".ddib-", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes files private; outputs get the usual mode
        _refuse_in_the_way(path)  # or one that appeared while writing
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _refuse_in_the_way(path: Path) -> None:
    why = in_the_way(path)
    if why:
        raise NotOurs(errno.EEXIST, f"{why}; the tool writes only regular files of its own", str(path))


def save_png(array: np.ndarray, path, root=None) -> None:
    """Write an HWC uint8 array as PNG atomically (inside ``root``, when given: see ``atomic_path``)."""
    with atomic_path(path, root) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def remove_temporaries(save_dir) -> int:
    """Delete partial outputs a killed run left behind: only our own ``*.ddib-tmp`` regular files, and
    never through a symlinked folder (what it leads to is not the save folder)."""
    removed = 0
    for dirpath, _, filenames in os.walk(save_dir, followlinks=False):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if name.endswith(TEMP_SUFFIX) and stat.S_ISREG(os.lstat(path).st_mode):
                try:
                    os.unlink(path)
                    removed += 1
                except FileNotFoundError:
                    pass
    return removed


def side_by_side(*arrays: np.ndarray) -> np.ndarray:
    """Images of equal height in one row, for quick viewing."""
    return np.concatenate(arrays, axis=1)


def image_seed(seed: int, rel_path) -> int:
    """A 63-bit seed from the run's seed and an image's relative path: its noise then does not depend
    on batching, ordering or the number of processes."""
    # surrogateescape: a file name that is not UTF-8 seeds from its bytes (UTF-8 names are unchanged)
    digest = hashlib.sha256(f"{seed}:{Path(rel_path).as_posix()}".encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
