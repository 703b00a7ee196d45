"""Export the coloured digits' training split as class folders, the data train_ddib.py trains the demo
model on.

Each training digit is written ``--colourings`` times, each time in its own random colour (hue uniform
on the circle, saturation in [0.7, 1], value 1, drawn from ``--seed``), so that across the folder the
colour is independent of the class: the model learns colour as content a translation keeps. The
held-out split (``tools.digits_data.split_indices``) is never written.

    python tools/digits_folders.py --out_dir out/digits_train --colourings 16
    # → out/digits_train/<class>/<dataset index>-<colouring>.png, 16×16 RGB
"""

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools import digits_data  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out_dir", default="out/digits_train", help="the data folder to create (must not hold files)")
    p.add_argument("--colourings", type=int, default=16, help="random colourings written per training digit")
    p.add_argument("--seed", type=int, default=0, help="seed of the colours")
    return p.parse_args(argv)


def export(out_dir, colourings: int = 16, seed: int = 0) -> int:
    """Write every training digit ``colourings`` times; returns the number of files written."""
    from PIL import Image

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"error: {out} exists and is not empty; remove it or choose another --out_dir")
    data = digits_data.load()
    rng = np.random.default_rng(seed)
    train = data["train"]
    written = 0
    for k in range(colourings):
        pixels = digits_data.to_uint8(digits_data.paint(data["intensity"][train],
                                                        digits_data.random_colours(len(train), rng)))
        for index, image in zip(train, pixels):
            folder = out / str(int(data["labels"][index]))
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{index:04d}-{k:02d}.png")
            written += 1
    return written


def main(argv=None):
    args = parse_args(argv)
    if args.colourings < 1:
        raise SystemExit("error: --colourings must be at least 1")
    n = export(args.out_dir, args.colourings, args.seed)
    print(f"wrote {n} images ({n // args.colourings} training digits × {args.colourings} colourings) to "
          f"{os.path.join(args.out_dir, '<class>')}/")


if __name__ == "__main__":
    main()
