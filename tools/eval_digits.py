"""Measure DDIB on held-out coloured digits: does a translation change the class and keep the rest?

For every ordered class pair (A, B), A ≠ B, a seeded sample of held-out class-A images is translated
to B. Per respace step count, with and without classifier guidance, it prints a markdown table of:
target accuracy (an independent scikit-learn SVC on 8×8 grey images, trained on the training split,
assigns B), hue difference between source and translation (foreground colour, degrees), cycle PSNR
A→B→A and reconstruction PSNR A→A against the source, and seconds per translated image.

    python tools/eval_digits.py -c configs/digits.yaml --weights assets/digits_unet.pt \
        --classifier_weights assets/digits_classifier.pt
"""

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from diffusions import RESPACE_TYPES, SOLVERS  # noqa: E402
from tools import digits_data  # noqa: E402
from utils.images import psnr as psnr_one  # noqa: E402
from utils.pipeline import DDIB  # noqa: E402


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The digits model's files, shared with tools/solver_table.py."""
    p.add_argument("-c", "--config", default="configs/digits.yaml", help="the digits model's config")
    p.add_argument("--weights", default="assets/digits_unet.pt", help="the digits UNet's weights")
    p.add_argument("--classifier_weights", default="assets/digits_classifier.pt",
                   help="the noisy classifier for the guided rows ('' for unguided rows only)")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_args(p)
    p.add_argument("--classifier_scale", type=float, nargs="+", default=[1.0],
                   help="scales of the guided rows (an unguided row is always added)")
    p.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50, 100], help="steps per half, one row each")
    p.add_argument("--respace_type", default="uniform", choices=RESPACE_TYPES, help="timestep spacing")
    p.add_argument("--t_end", type=int, help="last timestep, where inversion stops (default: what the spacing gives)")
    p.add_argument("--solver", default="ddim", choices=sorted(SOLVERS), help="ODE solver of both halves")
    p.add_argument("--clip_x0", nargs="+", choices=["off", "on"], default=["off", "on"],
                   help="generate with the x0 prediction unclipped (the exact ODE) and/or clipped to [-1, 1]")
    p.add_argument("--per_class", type=int, default=1,
                   help="held-out sources per class A, each translated to all nine B != A")
    p.add_argument("--seed", type=int, default=0, help="seed of the source sample")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for torch")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    return p.parse_args(argv)


def fit_reference_classifier(data: dict):
    """An SVC on the training split's 8×8 grey images: independent of the diffusion models."""
    from sklearn.svm import SVC

    svc = SVC(gamma="scale", C=10.0)
    svc.fit(digits_data.to_gray8(data["images"][data["train"]]), data["labels"][data["train"]].numpy())
    held = data["held_out"]
    acc = (svc.predict(digits_data.to_gray8(data["images"][held])) == data["labels"][held].numpy()).mean()
    return svc, acc


def sample_sources(data: dict, per_class: int, seed: int):
    """Held-out indices: ``per_class`` of each class, chosen with a fixed seed."""
    rng = np.random.default_rng(seed)
    held, labels = data["held_out"], data["labels"].numpy()
    return np.concatenate([np.sort(rng.choice(held[labels[held] == c], per_class, replace=False))
                           for c in range(digits_data.NUM_CLASSES)])


def psnr(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Per-image PSNR in dB of images in [-1, 1] (clipped, as a PNG stores them)."""
    return np.array([psnr_one(x.clamp(-1, 1), y.clamp(-1, 1)) for x, y in zip(a, b)])


class Translator:
    """Batched inversion and generation with one class label per image, through the library."""

    def __init__(self, ddib: DDIB, steps: int, clip_x0: bool):
        self.ddib, self.steps, self.clip_x0 = ddib, steps, clip_x0

    def invert(self, x, y):
        return self.ddib.invert(x, y.tolist(), steps=self.steps).to(x.device)

    def generate(self, z, y, scale: float):
        return self.ddib.generate(z, class_B_per_image=y.tolist(), output="tensor", steps=self.steps,
                                  clip_x0=self.clip_x0, classifier_scale=scale).to(z.device)


def pairs(src_labels: torch.Tensor):
    """(source position, class B) for every source and every B different from its class."""
    pos, tgt = [], []
    for i, a in enumerate(src_labels.tolist()):
        for b in range(digits_data.NUM_CLASSES):
            if b != a:
                pos.append(i)
                tgt.append(b)
    return torch.tensor(pos), torch.tensor(tgt)


def evaluate_setting(tr: Translator, x, a, latent, pos, b, scale, svc, sync):
    """One row: translate, reconstruct and cycle with guidance ``scale``; returns the metrics."""
    sync()
    start = time.time()
    out = tr.generate(latent[pos], b, scale)
    sync()
    gen_secs = time.time() - start
    rec = tr.generate(latent, a, scale)
    back = tr.generate(tr.invert(out, b), a[pos], scale)
    out_c, src = out.cpu(), x[pos].cpu()
    hue = digits_data.hue_difference(digits_data.foreground_hue(src), digits_data.foreground_hue(out_c))
    return {"acc": (svc.predict(digits_data.to_gray8(out_c)) == b.cpu().numpy()).mean(),
            "hue": np.nanmean(hue), "empty": int(np.isnan(hue).sum()),
            "cycle": psnr(back, x[pos]).mean(), "rec": psnr(rec, x).mean(), "gen_secs": gen_secs}


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    ddib = DDIB.from_files(args.config, args.weights, args.classifier_weights or None, device=device,
                           precision="no", compile=False, micro_batch=10_000, solver=args.solver,
                           respace_type=args.respace_type, t_end=args.t_end, warn=print)
    data = digits_data.load()
    svc, svc_acc = fit_reference_classifier(data)
    idx = sample_sources(data, args.per_class, args.seed)
    x, a = data["images"][idx].to(device), data["labels"][idx].to(device)
    pos, b = pairs(a.cpu())
    pos, b = pos.to(device), b.to(device)
    scales = [0.0] + ([s for s in args.classifier_scale if s] if args.classifier_weights else [])
    print(f"reference SVC accuracy on the {len(data['held_out'])} held-out real digits: {svc_acc:.1%}")
    print(f"{len(idx)} held-out sources ({args.per_class} per class, seed {args.seed}) x 9 targets = "
          f"{len(pos)} translations per row; all 90 ordered pairs; solver {args.solver}, respace {args.respace_type}; "
          f"device {args.device}, {args.threads} threads\n")
    print("| steps | clip x0 | classifier scale | target acc | hue diff (deg) | A→B→A PSNR (dB) | A→A PSNR (dB) | s/img |")
    print("| ---: | :---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for steps in args.steps:
        tr = Translator(ddib, steps, clip_x0=False)
        sync()
        start = time.time()
        latent = tr.invert(x, a)
        sync()
        inv_secs = (time.time() - start) / len(idx)
        for clip, scale in [(c, s) for c in args.clip_x0 for s in scales]:
            tr.clip_x0 = clip == "on"
            m = evaluate_setting(tr, x, a, latent, pos, b, scale, svc, sync)
            secs = inv_secs + m["gen_secs"] / len(pos)
            empty = f" ({m['empty']} blank)" if m["empty"] else ""
            print(f"| {steps} | {clip} | {scale:g} | {m['acc']:.1%} | {m['hue']:.1f}{empty} | {m['cycle']:.2f} | "
                  f"{m['rec']:.2f} | {secs:.4f} |", flush=True)
    print(f"\ns/img: inversion time per source (batch of {len(idx)}) plus generation time per translation "
          f"(batch of {len(pos)}).")


if __name__ == "__main__":
    main()
