"""Coloured handwritten digits: the one data definition shared by training, evaluation and tests.

scikit-learn's ``load_digits`` (1,797 real 8×8 scans, 10 classes, intensities 0…16) is upsampled
bilinearly to 16×16 and painted in a per-image foreground colour on a black background. The colour
(hue uniform on the circle, saturation in [0.7, 1], value 1) is drawn from a fixed seed per dataset
index, so an image's colour is part of its identity and does not depend on the split. Colour,
stroke, slant and position are content that the class does not decide: a translation should keep
them. The held-out split is a fixed, seeded, per-class 20% that training never sees.

scikit-learn is a development dependency only; nothing at runtime imports this module.
"""

import colorsys

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_SIZE = 16
NUM_CLASSES = 10
SPLIT_SEED = 0
COLOUR_SEED = 1
HELD_OUT_FRACTION = 0.2


def load_raw():
    """(images (N, 8, 8) float32 in [0, 1], labels (N,) int64) in scikit-learn's order."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64)


def split_indices(labels: np.ndarray, seed: int = SPLIT_SEED, fraction: float = HELD_OUT_FRACTION):
    """(train, held_out) dataset indices: a seeded ``fraction`` of every class is held out.

    Per class, so each digit is equally represented in evaluation; numpy's seeded generator keeps it
    independent of the scikit-learn version.
    """
    rng = np.random.default_rng(seed)
    held = []
    for c in range(NUM_CLASSES):
        idx = np.flatnonzero(labels == c)
        held.append(rng.permutation(idx)[: int(round(fraction * len(idx)))])
    held = np.sort(np.concatenate(held))
    train = np.setdiff1d(np.arange(len(labels)), held)
    return train, held


def hsv_colours(hues: np.ndarray, sats: np.ndarray) -> np.ndarray:
    """(N, 3) RGB in [0, 1] for hues in [0, 1) and saturations, at value 1."""
    return np.array([colorsys.hsv_to_rgb(h, s, 1.0) for h, s in zip(hues, sats)], dtype=np.float32)


def random_colours(n: int, rng: np.random.Generator) -> np.ndarray:
    """n foreground colours: uniform hue, saturation in [0.7, 1], value 1."""
    return hsv_colours(rng.uniform(0, 1, n), rng.uniform(0.7, 1.0, n))


def dataset_colours(n: int, seed: int = COLOUR_SEED) -> np.ndarray:
    """The fixed colour of every dataset index."""
    return random_colours(n, np.random.default_rng(seed))


def upsample(gray: np.ndarray) -> torch.Tensor:
    """(N, 8, 8) intensities in [0, 1] → (N, 1, 16, 16), bilinear, so strokes stay smooth."""
    x = torch.from_numpy(np.asarray(gray, dtype=np.float32))[:, None]
    return F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False).clamp(0, 1)


def paint(intensity: torch.Tensor, colours) -> torch.Tensor:
    """Intensity maps (N, 1, H, W) in [0, 1] × RGB colours (N, 3) → images in [-1, 1], black background."""
    rgb = torch.as_tensor(np.asarray(colours, dtype=np.float32))[:, :, None, None]
    return intensity * rgb * 2 - 1


def load(seed: int = SPLIT_SEED):
    """The whole coloured dataset as a dict of tensors plus the split indices.

    Keys: ``intensity`` (N,1,16,16) in [0, 1], ``colours`` (N,3), ``images`` (N,3,16,16) in [-1, 1],
    ``labels`` (N,), ``train`` and ``held_out`` (index arrays).
    """
    gray, labels = load_raw()
    intensity = upsample(gray)
    colours = dataset_colours(len(labels))
    train, held = split_indices(labels, seed)
    return {"intensity": intensity, "colours": torch.from_numpy(colours), "images": paint(intensity, colours),
            "labels": torch.from_numpy(labels), "train": train, "held_out": held}


def to_gray8(images: torch.Tensor) -> np.ndarray:
    """Images in [-1, 1] (N,3,16,16) → flat 8×8 grey features on scikit-learn's 0…16 scale.

    Grey is the brightest channel (colour-blind, since the background is black); 2×2 averaging
    undoes the upsampling. This is what the independent evaluation classifier sees.
    """
    value = ((images.float().clamp(-1, 1) + 1) / 2).amax(dim=1, keepdim=True)
    return (F.avg_pool2d(value, 2) * 16).flatten(1).numpy()


def foreground_hue(images: torch.Tensor, threshold: float = 0.25) -> np.ndarray:
    """Hue in degrees of each image's mean foreground colour (pixels whose brightest channel > threshold).

    Averaging RGB before taking the hue weights the bright stroke centres most; an image with no
    foreground pixel gets NaN.
    """
    rgb = ((images.float().clamp(-1, 1) + 1) / 2).numpy()
    hues = np.full(len(rgb), np.nan)
    for i, im in enumerate(rgb):
        mask = im.max(axis=0) > threshold
        if mask.any():
            h, _, _ = colorsys.rgb_to_hsv(*im[:, mask].mean(axis=1))
            hues[i] = h * 360.0
    return hues


def hue_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Absolute circular difference of hues in degrees (0…180)."""
    d = np.abs(a - b) % 360.0
    return np.minimum(d, 360.0 - d)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Images in [-1, 1] (N,3,H,W) → (N,H,W,3) uint8, rounding as a PNG writer would."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def demo_indices(data: dict, per_class: int = 3, seed: int = 2):
    """A seeded few held-out indices per class: the demo inputs shipped in assets/digits."""
    rng = np.random.default_rng(seed)
    held, labels = data["held_out"], data["labels"].numpy()
    return {c: np.sort(rng.choice(held[labels[held] == c], per_class, replace=False))
            for c in range(NUM_CLASSES)}


def export_demo(out_dir: str, per_class: int = 3):
    """Write ``out_dir/<class>/<dataset index>.png`` for the demo indices (8-bit RGB, 16×16)."""
    import os

    from PIL import Image

    data = load()
    for c, idx in demo_indices(data, per_class).items():
        os.makedirs(os.path.join(out_dir, str(c)), exist_ok=True)
        for i, pixels in zip(idx, to_uint8(data["images"][idx])):
            Image.fromarray(pixels).save(os.path.join(out_dir, str(c), f"{i:04d}.png"))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Export held-out demo digits as PNG files.")
    parser.add_argument("--export", default="assets/digits", help="output folder")
    parser.add_argument("--per_class", type=int, default=3, help="held-out digits exported per class")
    args = parser.parse_args()
    export_demo(args.export, args.per_class)
