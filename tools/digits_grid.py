"""Draw assets/digits_grid.png: each demo source, then its DDIB translation to each of the ten classes.

One inversion per source (conditioned on its own class, read from the folder name) and ten
generations from that latent, so row r column c+1 shows "source r as a c". Runtime dependencies only.

    python tools/digits_grid.py -c configs/digits.yaml --weights assets/digits_unet.pt
"""

import argparse
import os
import sys

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.images import to_uint8  # noqa: E402
from utils.pipeline import DDIB  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-c", "--config", default="configs/digits.yaml", help="the digits model's config")
    p.add_argument("--weights", default="assets/digits_unet.pt", help="the digits UNet's weights")
    p.add_argument("--classifier_weights", default=None, help="noisy classifier, for guidance")
    p.add_argument("--classifier_scale", type=float, default=0.0, help="guidance scale (with --classifier_weights)")
    p.add_argument("--input_dir", default="assets/digits", help="folders named by class holding PNGs")
    p.add_argument("--per_class", type=int, default=1, help="sources taken from each class folder")
    p.add_argument("--respace_type", default="uniform", help="timestep spacing")
    p.add_argument("--respace_steps", type=int, default=100, help="steps per half")
    p.add_argument("--clip_x0", action=argparse.BooleanOptionalAction, default=False,
                   help="clip the x0 prediction while generating (off: the exact ODE, see docs/digits.md)")
    p.add_argument("--zoom", type=int, default=4, help="nearest-neighbour magnification of each cell")
    p.add_argument("--out", default="assets/digits_grid.png", help="the PNG to write")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for torch")
    return p.parse_args(argv)


def read_sources(input_dir: str, per_class: int):
    """[(class, path)] from ``input_dir/<class>/*.png``, sorted by class and name."""
    sources = []
    for name in sorted(os.listdir(input_dir), key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else s)):
        folder = os.path.join(input_dir, name)
        if name.isdigit() and os.path.isdir(folder):
            sources += [(int(name), os.path.join(folder, f))
                        for f in sorted(f for f in os.listdir(folder) if f.endswith(".png"))[:per_class]]
    return sources


def translate_row(ddib: DDIB, path: str, class_A: int, num_classes: int) -> torch.Tensor:
    """(1 + num_classes, 3, H, W): the source, then its translations to every class (one inversion)."""
    outs = ddib.translate([path], class_A=class_A, class_B=list(range(num_classes)), output="tensor")[0]
    return torch.stack([ddib.images_to_tensor([path])[0]] + outs)


def compose(rows, zoom: int, gap: int = 2) -> Image.Image:
    """Tile rows of images into one picture, each cell magnified ``zoom`` times, on a grey canvas."""
    n_rows, n_cols = len(rows), len(rows[0])
    h, w = rows[0].shape[-2:]
    cell_h, cell_w = h * zoom + gap, w * zoom + gap
    canvas = np.full((n_rows * cell_h + gap, n_cols * cell_w + gap, 3), 96, dtype=np.uint8)
    for r, row in enumerate(rows):
        for c, im in enumerate(to_uint8(row)):
            big = im.repeat(zoom, axis=0).repeat(zoom, axis=1)
            canvas[gap + r * cell_h: gap + r * cell_h + h * zoom, gap + c * cell_w: gap + c * cell_w + w * zoom] = big
    return Image.fromarray(canvas)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    scale = args.classifier_scale if args.classifier_weights else 0.0
    ddib = DDIB.from_files(args.config, args.weights, args.classifier_weights if scale else None, precision="no",
                           compile=False, steps=args.respace_steps, respace_type=args.respace_type,
                           clip_x0=args.clip_x0, classifier_scale=scale)
    num_classes = ddib.bridge.model_B.num_classes
    rows = [translate_row(ddib, path, a, num_classes) for a, path in read_sources(args.input_dir, args.per_class)]
    compose(rows, args.zoom).save(args.out)
    print(f"wrote {args.out}: {len(rows)} sources x {num_classes} classes")


if __name__ == "__main__":
    main()
