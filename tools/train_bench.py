"""Training throughput of train_ddib.py's loop against a plain PyTorch loop over the same network.

Both train the config's UNet (default: the digits model) on the same batch size, threads and device,
in this one process, taking turns round by round: ``utils.training.train`` as the script runs it
(accelerate, the seeded per-sample draws and loader, AdamW with warm-up, gradient clipping, EMA) on an
image folder held in memory, timed by its own loss log (which leaves out writing files), and a plain loop (random indices into a tensor of the same
images, ``torch.randint``/``torch.randn`` draws, AdamW, no EMA, no clipping). Each round times the
second half of its steps (the first half warms up) and reports images per second.

    python tools/train_bench.py --threads 1                      # CPU: the digits model, batch 128
    python tools/train_bench.py --device cuda --mixed_precision bf16 --compile on --batch_size 256
"""

import argparse
import csv
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusions import alphas_cumprod  # noqa: E402
from diffusions.losses import q_sample  # noqa: E402
from utils.config import load_config  # noqa: E402
from utils.train_data import TrainingSamples, find_images, plan_split, read_images  # noqa: E402
from utils.train_run import RunFolder, build_part, run_config  # noqa: E402
from utils.training import Cadence, Recipe, train  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-c", "--config", default="configs/digits.yaml", help="the model's config")
    p.add_argument("--data_dir", help="class folders to train on (default: the digits' training split, one "
                                      "colouring, exported to a temporary folder; needs scikit-learn)")
    p.add_argument("--batch_size", type=int, default=128, help="images per step")
    p.add_argument("--steps", type=int, default=20, help="steps per round and path (the second half is timed)")
    p.add_argument("--rounds", type=int, default=3, help="rounds; each runs both loops")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--mixed_precision", default="no", choices=("no", "bf16", "fp16"),
                   help="ours: accelerate's autocast; plain: torch.autocast of the same dtype")
    p.add_argument("--compile", default="off", choices=("on", "off"), help="torch.compile both networks")
    p.add_argument("--out", help="write train_bench.json here")
    return p.parse_args(argv)


def ours(accelerator, cfg_run, data, args, workdir: Path, round_: int) -> float:
    """images/s of train_ddib's loop: the second log row covers the timed half (the first is warm-up)."""
    torch.manual_seed(round_)
    model = build_part(cfg_run, "unet").to(accelerator.device)
    half = args.steps // 2
    recipe = Recipe(steps=2 * half, batch_size=args.batch_size, lr=1e-4, warmup=10, ema=0.999, seed=round_)
    cadence = Cadence(log_every=half, save_every=10 ** 9, keep=1, sample_every=0, workers=0)
    folder = RunFolder(workdir / f"round{round_}", "unet")
    schedule = alphas_cumprod(cfg_run["diffusion"]["beta_schedule"], cfg_run["diffusion"]["total_steps"])
    samples = TrainingSamples(data, cfg_run["model"]["image_size"], len(schedule), flip=False)
    train(accelerator, model, samples, plan_split(args.batch_size, None, 1, 0), recipe, cadence, folder, schedule,
          conditional=data.class_names is not None, warn=print, say=print)
    with open(folder.files["log"]) as f:
        return float(list(csv.DictReader(f))[1]["images_per_s"])  # the second window


def plain(cfg_run, images: torch.Tensor, labels: torch.Tensor, args, round_: int) -> float:
    """images/s of the plainest loop over the same network: no EMA, no clipping, draws from torch's RNG."""
    device = torch.device(args.device)
    torch.manual_seed(round_)
    model = build_part(cfg_run, "unet").to(device).train()
    if args.compile == "on":
        model.compile()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    schedule = alphas_cumprod(cfg_run["diffusion"]["beta_schedule"], cfg_run["diffusion"]["total_steps"]).to(device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.mixed_precision)
    scaler = torch.amp.GradScaler(enabled=dtype == torch.float16)
    half = args.steps // 2
    for step in range(2 * half):
        if step == half:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        idx = torch.randint(0, len(images), (args.batch_size,))
        x0, y = images[idx].to(device), labels[idx].to(device)
        t = torch.randint(0, len(schedule), (args.batch_size,), device=device)
        noise = torch.randn_like(x0)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = model(q_sample(x0, t, noise, schedule), t, y if cfg_run["model"]["num_classes"] else None)
        loss = ((out[:, :x0.shape[1]].float() - noise) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return half * args.batch_size / (time.perf_counter() - start)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=args.device == "cpu", mixed_precision=args.mixed_precision,
                              dynamo_backend="inductor" if args.compile == "on" else "no")
    cfg = load_config(args.config)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir
        if data_dir is None:
            from tools.digits_folders import export

            data_dir = Path(tmp) / "digits"
            export(data_dir, colourings=1)
        found = find_images(data_dir)
        data = read_images(data_dir, found, cfg["model"]["image_size"])
        cfg_run, _ = run_config(cfg, data.class_names, "unet")
        images = torch.from_numpy(data.pixels).permute(0, 3, 1, 2).float() / 127.5 - 1
        labels = torch.tensor(data.labels if data.labels is not None else [0] * len(images))
        results = {"ours": [], "plain": []}
        for round_ in range(args.rounds):
            results["ours"].append(ours(accelerator, cfg_run, data, args, Path(tmp), round_))
            results["plain"].append(plain(cfg_run, images, labels, args, round_))
            print(f"round {round_ + 1}: ours {results['ours'][-1]:.1f} images/s, plain {results['plain'][-1]:.1f} "
                  "images/s", flush=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"median of {args.rounds} rounds: ours {med['ours']:.1f} images/s, plain loop {med['plain']:.1f} images/s, "
          f"ratio {med['ours'] / med['plain']:.3f} ({args.config}, batch {args.batch_size}, {args.device}, "
          f"{args.threads} thread(s), precision {args.mixed_precision}, compile {args.compile})")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "train_bench.json").write_text(json.dumps({"args": vars(args), "images_per_s": results,
                                                                      "median": med}, indent=1))


if __name__ == "__main__":
    main()
