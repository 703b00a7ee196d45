"""Train the coloured-digits UNet (ε-prediction, EMA) and its noisy classifier from one seed.

Both networks come from ``configs/digits.yaml`` and are saved as plain float32 state_dicts, the UNet as
its EMA copy. Every training image gets a fresh random colour each time it is drawn, so colour is
learnt as content independent of the class (the held-out images keep their fixed dataset colours).

    python tools/train_digits.py -c configs/digits.yaml --out_dir assets --seed 0
"""

import argparse
import copy
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from diffusions import alphas_cumprod  # noqa: E402
from models import EncoderUNetModel, UNetModel  # noqa: E402
from utils.config import load_config  # noqa: E402
from tools import digits_data  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-c", "--config", default="configs/digits.yaml", help="config of both networks")
    p.add_argument("--out_dir", default="assets", help="where the weights are written")
    p.add_argument("--seed", type=int, default=0, help="seed of the data split, initialisation and batches")
    p.add_argument("--which", choices=["both", "unet", "classifier"], default="both", help="which network(s) to train")
    p.add_argument("--unet_steps", type=int, default=2500, help="UNet optimisation steps")
    p.add_argument("--classifier_steps", type=int, default=1000, help="classifier optimisation steps")
    p.add_argument("--batch_size", type=int, default=128, help="images per training step")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (warm-up, then cosine decay)")
    p.add_argument("--classifier_lr", type=float, default=1e-3, help="classifier learning rate")
    p.add_argument("--warmup", type=int, default=100, help="learning-rate warm-up steps")
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay of the shipped UNet weights")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for torch")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--log_every", type=int, default=100, help="print the loss every N steps")
    return p.parse_args(argv)


def recoloured_batch(data: dict, idx: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    """The intensity maps at ``idx`` painted in fresh random colours: colour augmentation."""
    return digits_data.paint(data["intensity"][idx], digits_data.random_colours(len(idx), rng))


def noised(x0: torch.Tensor, ac: torch.Tensor, gen: torch.Generator):
    """(x_t, t, ε) with t uniform over the training steps, as both objectives need."""
    t = torch.randint(0, len(ac), (len(x0),), generator=gen)
    eps = torch.randn(x0.shape, generator=gen)
    a = ac[t].float()[:, None, None, None]
    return a.sqrt() * x0 + (1 - a).sqrt() * eps, t, eps


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up then cosine decay to zero: short runs end on small steps, which EMA then smooths."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float):
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm, 1 - decay)


def train_loop(name, model, loss_fn, steps, lr, args, data, ema=None):
    """Shared loop: AdamW on ``loss_fn(model, batch indices)``, logging the running mean loss."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps, args.warmup))
    rng = np.random.default_rng(args.seed)
    train_idx, start, running = data["train"], time.time(), []
    for step in range(steps):
        idx = rng.choice(train_idx, size=args.batch_size, replace=True)
        loss = loss_fn(model, idx, rng)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if ema is not None:
            update_ema(ema, model, min(args.ema, (1 + step) / (10 + step)))
        running.append(loss.item())
        if (step + 1) % args.log_every == 0 or step + 1 == steps:
            print(f"[{name}] step {step + 1}/{steps} loss {np.mean(running):.4f} "
                  f"{time.time() - start:.0f}s", flush=True)
            running = []
    return time.time() - start


def train_unet(cfg: dict, data: dict, args) -> torch.nn.Module:
    """ε-prediction MSE on uniformly drawn timesteps; returns the EMA model."""
    torch.manual_seed(args.seed)
    model = UNetModel(**cfg["model"]).to(args.device)
    ema = copy.deepcopy(model).requires_grad_(False)
    ac = alphas_cumprod(cfg["diffusion"]["beta_schedule"], cfg["diffusion"]["total_steps"])
    gen = torch.Generator().manual_seed(args.seed + 1)
    labels, c_in = data["labels"], cfg["model"]["in_channels"]

    def loss_fn(m, idx, rng):
        x_t, t, eps = noised(recoloured_batch(data, idx, rng), ac, gen)
        out = m(x_t.to(args.device), t.to(args.device), labels[idx].to(args.device))
        return F.mse_loss(out[:, :c_in], eps.to(args.device))

    secs = train_loop("unet", model, loss_fn, args.unet_steps, args.lr, args, data, ema)
    print(f"[unet] done in {secs:.0f}s", flush=True)
    return ema


def train_classifier(cfg: dict, data: dict, args) -> torch.nn.Module:
    """Cross-entropy on noised images x_t at uniform t, as guided-diffusion's classifier_train."""
    torch.manual_seed(args.seed + 2)
    clf = EncoderUNetModel(**cfg["classifier"]).to(args.device)
    ac = alphas_cumprod(cfg["diffusion"]["beta_schedule"], cfg["diffusion"]["total_steps"])
    gen = torch.Generator().manual_seed(args.seed + 3)
    labels = data["labels"]

    def loss_fn(m, idx, rng):
        x_t, t, _ = noised(recoloured_batch(data, idx, rng), ac, gen)
        return F.cross_entropy(m(x_t.to(args.device), t.to(args.device)), labels[idx].to(args.device))

    secs = train_loop("classifier", clf, loss_fn, args.classifier_steps, args.classifier_lr, args, data)
    print(f"[classifier] done in {secs:.0f}s", flush=True)
    return clf


def save(model: torch.nn.Module, path: str):
    """A plain float32 state_dict on the CPU: loadable with ``torch.load(weights_only=True)``."""
    torch.save({k: v.detach().float().cpu().clone() for k, v in model.state_dict().items()}, path)
    print(f"saved {path} ({os.path.getsize(path) / 1e6:.2f} MB)", flush=True)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    data = digits_data.load()
    os.makedirs(args.out_dir, exist_ok=True)
    start = time.time()
    if args.which in ("both", "unet"):
        save(train_unet(cfg, data, args), os.path.join(args.out_dir, "digits_unet.pt"))
    if args.which in ("both", "classifier"):
        save(train_classifier(cfg, data, args), os.path.join(args.out_dir, "digits_classifier.pt"))
    print(f"total wall time {time.time() - start:.0f}s", flush=True)


if __name__ == "__main__":
    main()
