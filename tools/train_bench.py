"""Training throughput of train_ddib.py's loop against a plain PyTorch loop over the same network.

Both train the config's UNet (default: the digits model) on the same batch size, threads and device,
in this one process, taking turns round by round: ``utils.training.train`` as the script runs it
(accelerate, the seeded per-sample draws and loader, AdamW with warm-up, gradient clipping, EMA, the
loss log) on an image folder held in memory, and a plain loop (random indices into a tensor of the same
images, ``torch.randint``/``torch.randn`` draws, AdamW, no EMA, no clipping). Every step of both is
timed, in wall-clock and in this process's CPU time; the first ``--warmup`` steps of each round are left
out, and the median step over all rounds gives images per second. The median and the CPU time keep
the comparison fair on a machine that other work shares.

    python tools/train_bench.py --threads 1                      # CPU: the digits model, batch 128
    python tools/train_bench.py --device cuda --mixed_precision bf16 --compile on --batch_size 256
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

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
    p.add_argument("--steps", type=int, default=20, help="steps per round and loop")
    p.add_argument("--warmup", type=int, default=3, help="steps per round left out of the timing")
    p.add_argument("--rounds", type=int, default=3, help="rounds; each runs both loops")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--mixed_precision", default="no", choices=("no", "bf16", "fp16"),
                   help="ours: accelerate's autocast; plain: torch.autocast of the same dtype")
    p.add_argument("--compile", default="off", choices=("on", "off"), help="torch.compile both networks")
    p.add_argument("--out", help="write train_bench.json here")
    return p.parse_args(argv)


class StepClock:
    """Wall-clock and CPU time at the end of every step (a tqdm stand-in for ``train``'s progress)."""

    def __init__(self, device):
        self.device, self.wall, self.cpu = torch.device(device), [time.perf_counter()], [time.process_time()]

    def tick(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())

    def update(self, n=1):
        if n:
            self.tick()

    def reset(self, total=None):
        pass

    def set_postfix_str(self, *args, **kwargs):
        pass

    def steps(self, skip: int):
        """(wall seconds, CPU seconds) of each step after the first ``skip``."""
        return ([b - a for a, b in zip(self.wall, self.wall[1:])][skip:],
                [b - a for a, b in zip(self.cpu, self.cpu[1:])][skip:])


def ours(accelerator, cfg_run, data, args, workdir: Path, round_: int):
    """Per-step times of train_ddib's loop (``utils.training.train``, as the script calls it)."""
    torch.manual_seed(round_)
    model = build_part(cfg_run, "unet").to(accelerator.device)
    recipe = Recipe(steps=args.steps, batch_size=args.batch_size, lr=1e-4, warmup=10, ema=0.999, seed=round_)
    cadence = Cadence(log_every=50, save_every=10 ** 9, keep=1, sample_every=0, workers=0)
    folder = RunFolder(workdir / f"round{round_}", "unet")
    schedule = alphas_cumprod(cfg_run["diffusion"]["beta_schedule"], cfg_run["diffusion"]["total_steps"])
    samples = TrainingSamples(data, cfg_run["model"]["image_size"], len(schedule), flip=False)
    clock = StepClock(args.device)
    train(accelerator, model, samples, plan_split(args.batch_size, None, 1, 0), recipe, cadence, folder, schedule,
          conditional=data.class_names is not None, warn=print, say=print, progress=clock)
    return clock.steps(args.warmup + 1)  # the first tick is the start of training, not the end of a step


def plain(cfg_run, images: torch.Tensor, labels: torch.Tensor, args, round_: int):
    """Per-step times of the plainest loop over the same network: no EMA, no clipping, torch's RNG."""
    device = torch.device(args.device)
    torch.manual_seed(round_)
    model = build_part(cfg_run, "unet").to(device).train()
    if args.compile == "on":
        model.compile()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    schedule = alphas_cumprod(cfg_run["diffusion"]["beta_schedule"], cfg_run["diffusion"]["total_steps"]).to(device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.mixed_precision)
    scaler = torch.amp.GradScaler(enabled=dtype == torch.float16)
    clock = StepClock(device)
    for _ in range(args.steps):
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
        clock.tick()
    return clock.steps(args.warmup)


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
        times = {"ours": ([], []), "plain": ([], [])}
        for round_ in range(args.rounds):
            for name, steps in (("ours", ours(accelerator, cfg_run, data, args, Path(tmp), round_)),
                                ("plain", plain(cfg_run, images, labels, args, round_))):
                times[name][0].extend(steps[0])
                times[name][1].extend(steps[1])
            print(f"round {round_ + 1} of {args.rounds} done", flush=True)
    rate = {name: {"wall": args.batch_size / statistics.median(wall), "cpu": args.batch_size / statistics.median(cpu)}
            for name, (wall, cpu) in times.items()}
    print(f"{args.config}, batch {args.batch_size}, {args.device}, {args.threads} thread(s), precision "
          f"{args.mixed_precision}, compile {args.compile}; median step of {len(times['ours'][0])} per loop:")
    for clock in ("wall", "cpu"):
        print(f"  {clock:>4}: ours {rate['ours'][clock]:.1f} images/s, plain loop {rate['plain'][clock]:.1f} "
              f"images/s, ratio {rate['ours'][clock] / rate['plain'][clock]:.3f}")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "train_bench.json").write_text(json.dumps({"args": vars(args), "images_per_s": rate,
                                                                      "step_seconds": times}, indent=1))


if __name__ == "__main__":
    main()
