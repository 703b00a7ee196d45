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
import yaml
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from diffusions import alphas_cumprod, generate, invert, respace  # noqa: E402
from models import EncoderUNetModel, UNetModel  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-c", "--config", default="configs/digits.yaml")
    p.add_argument("--weights", default="assets/digits_unet.pt")
    p.add_argument("--classifier_weights", default=None)
    p.add_argument("--classifier_scale", type=float, default=0.0)
    p.add_argument("--input_dir", default="assets/digits", help="folders named by class holding PNGs")
    p.add_argument("--per_class", type=int, default=1, help="sources taken from each class folder")
    p.add_argument("--respace_type", default="uniform")
    p.add_argument("--respace_steps", type=int, default=100)
    p.add_argument("--clip_x0", action=argparse.BooleanOptionalAction, default=False,
                   help="clip the x0 prediction while generating (off: the exact ODE, see docs/digits.md)")
    p.add_argument("--zoom", type=int, default=4, help="nearest-neighbour magnification of each cell")
    p.add_argument("--out", default="assets/digits_grid.png")
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def read_sources(input_dir: str, per_class: int):
    """[(class, image (3,H,W) in [-1, 1])] from ``input_dir/<class>/*.png``, sorted by class and name."""
    sources = []
    for name in sorted(os.listdir(input_dir), key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else s)):
        folder = os.path.join(input_dir, name)
        if not (name.isdigit() and os.path.isdir(folder)):
            continue
        for fname in sorted(f for f in os.listdir(folder) if f.endswith(".png"))[:per_class]:
            pixels = np.asarray(Image.open(os.path.join(folder, fname)).convert("RGB"), dtype=np.float32)
            sources.append((int(name), torch.from_numpy(pixels).permute(2, 0, 1) / 127.5 - 1))
    return sources


def translate_row(model, clf, x, class_A, num_classes, ac, ts, args) -> torch.Tensor:
    """(1 + num_classes, 3, H, W): the source, then its translations to every class."""
    latent = invert(model, x[None], class_A, ac, ts)
    outs = [generate(model, latent, b, ac, ts, clip_x0=args.clip_x0, classifier=clf,
                     classifier_scale=args.classifier_scale) for b in range(num_classes)]
    return torch.cat([x[None]] + outs)


def compose(rows, zoom: int, gap: int = 2) -> Image.Image:
    """Tile rows of images into one picture, each cell magnified ``zoom`` times, on a grey canvas."""
    n_rows, n_cols = len(rows), len(rows[0])
    h, w = rows[0].shape[-2:]
    cell_h, cell_w = h * zoom + gap, w * zoom + gap
    canvas = np.full((n_rows * cell_h + gap, n_cols * cell_w + gap, 3), 96, dtype=np.uint8)
    for r, row in enumerate(rows):
        pixels = ((row.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        for c, im in enumerate(pixels):
            big = im.repeat(zoom, axis=0).repeat(zoom, axis=1)
            canvas[gap + r * cell_h: gap + r * cell_h + h * zoom, gap + c * cell_w: gap + c * cell_w + w * zoom] = big
    return Image.fromarray(canvas)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = yaml.safe_load(open(args.config))
    model = UNetModel(**cfg["model"])
    model.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    model.eval()
    clf = None
    if args.classifier_weights and args.classifier_scale:
        clf = EncoderUNetModel(**cfg["classifier"])
        clf.load_state_dict(torch.load(args.classifier_weights, map_location="cpu", weights_only=True))
        clf.eval()
    ac = alphas_cumprod(cfg["diffusion"]["beta_schedule"], cfg["diffusion"]["total_steps"])
    ts = respace(args.respace_type, cfg["diffusion"]["total_steps"], args.respace_steps)
    with torch.no_grad():
        rows = [translate_row(model, clf, x, a, cfg["model"]["num_classes"], ac, ts, args)
                for a, x in read_sources(args.input_dir, args.per_class)]
    compose(rows, args.zoom).save(args.out)
    print(f"wrote {args.out}: {len(rows)} sources x {cfg['model']['num_classes']} classes")


if __name__ == "__main__":
    main()
