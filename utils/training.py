"""The training loop: AdamW with warm-up, gradient clipping, EMA weights, gradient accumulation over
accelerate's processes, periodic logs, sample grids and checkpoints, and resuming from the latest.

One optimizer step takes ``batch_size`` images, whatever the number of processes and micro-batches
(``utils.train_data.Split``); the learning rate is a function of the step, so a checkpoint holds all
the state there is (model, EMA, optimizer, step, RNG states, the loss log). With the random draws of
``utils.train_data`` and dropout reseeded from the step, a run resumed on the CPU ends with the weights
an uninterrupted run ends with, bit for bit.
"""

import copy
import math
import random
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import numpy as np
import torch

from diffusions import generate, respace
from diffusions.losses import classifier_loss, q_sample, unet_loss

from .errors import UserError
from .images import image_seed, to_uint8
from .train_data import Split, StepBatches, TrainingSamples, loader
from .train_run import RunFolder

LR_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class Recipe:
    """What decides the weights a run ends with (recorded per run folder; a rerun must match)."""
    part: str = "unet"
    steps: int = 10000
    batch_size: int = 64
    lr: float = 1e-4
    lr_schedule: str = "constant"
    warmup: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema: float = 0.9999
    seed: int = 0
    flip: bool = False

    def lr_at(self, step: int) -> float:
        """Linear warm-up over ``warmup`` steps, then constant or cosine decay to zero at ``steps``."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        if self.lr_schedule == "cosine":
            return self.lr * 0.5 * (1 + math.cos(math.pi * (step - self.warmup) / max(1, self.steps - self.warmup)))
        return self.lr


@dataclass(frozen=True)
class Cadence:
    """How often the run reports and saves (none of it changes the weights)."""
    log_every: int = 50
    save_every: int = 1000
    keep: int = 3
    sample_every: int = 1000
    sample_steps: int = 50
    workers: int = 0


class EMA:
    """An exponential moving average of a model's weights, its decay warmed up as min(d, (1+s)/(10+s))
    so early weights are not averaged in for long."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).requires_grad_(False).eval()

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for ema, live in zip(self.model.parameters(), model.parameters()):
            ema.lerp_(live.detach(), 1 - decay)
        for ema, live in zip(self.model.buffers(), model.buffers()):
            ema.copy_(live)


def rng_states() -> dict:
    """Every global random generator's state (each step reseeds what the loop draws from them, so these
    matter only to code outside the loop; kept so a resume restores the process as it was)."""
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": list(random.getstate()[1]) + [random.getstate()[2]],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), np_state[2], np_state[3],
                      np_state[4]]}


def restore_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if states.get("cuda") and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])
    py = states["python"]
    random.setstate((3, tuple(py[:-1]), py[-1]))
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))


class DeferredStop:
    """Ctrl-C or SIGTERM asks the loop to stop at the end of the current step (which then saves a
    checkpoint); a second one stops at once. One process only: with several, each would stop at its own
    step while the others wait for it, so there a signal stops at once and the last checkpoint stays."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested, self._old = False, {}

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if self.enabled:
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._old[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._old.items():
            signal.signal(signum, handler)


def batch_loss(part: str, model, batch, alphas_cumprod: torch.Tensor, conditional: bool, device):
    """Per-sample losses of one micro-batch, and (classifier) the number it classifies right."""
    x0, labels, t, noise = (v.to(device, non_blocking=True) for v in batch)
    x_t = q_sample(x0, t, noise, alphas_cumprod)
    if part == "classifier":
        logits = model(x_t, t)
        return classifier_loss(logits, labels), (logits.argmax(dim=1) == labels).sum()
    out = model(x_t, t, labels if conditional else None)
    return unet_loss(out, x0, x_t, t, noise, alphas_cumprod), None


@torch.no_grad()
def sample_grid(model, image_size: int, channels: int, num_classes: Optional[int], alphas_cumprod, seed: int,
                steps: int, device, columns: int = 8) -> np.ndarray:
    """A grid of samples from the same seeded noise every time (one row per class, up to ten classes
    evenly spread; four rows when unconditional), DDIM with x₀ clipped: what the model makes of noise."""
    if num_classes:
        rows = sorted({round(i * (num_classes - 1) / max(1, min(num_classes, 10) - 1)) for i in range(min(num_classes, 10))})
    else:
        rows = [None] * 4
    gen = torch.Generator().manual_seed(image_seed(seed, "samples"))
    noise = torch.randn((len(rows) * columns, channels, image_size, image_size), generator=gen).to(device)
    labels = None if num_classes is None else torch.tensor([r for r in rows for _ in range(columns)], device=device)
    was_training = model.training
    model.eval()
    try:
        images = generate(model, noise, labels, alphas_cumprod, respace("uniform", len(alphas_cumprod), steps))
    finally:
        model.train(was_training)
    tiles = to_uint8(images)  # (N, H, W, C)
    scale, gap = max(1, 64 // image_size), 2
    tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
    size = image_size * scale
    grid = np.full((len(rows) * (size + gap) + gap, columns * (size + gap) + gap, tiles.shape[-1]), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        grid[gap + r * (size + gap):gap + r * (size + gap) + size, gap + c * (size + gap):gap + c * (size + gap) + size] = tile
    return grid if grid.shape[-1] == 3 else np.repeat(grid[..., :1], 3, axis=-1)


class LogWindow:
    """The sums behind the next loss-log row: per-sample losses (and right answers), gradient norms and
    images since the last row. A checkpoint keeps them (summed over every process), so the log of a
    resumed run has the rows of an uninterrupted one."""

    def __init__(self, device):
        self.device = device
        self.sums = torch.zeros(4, device=device)  # loss, correct, count, grad norm
        self.steps, self.images, self.start = 0, 0, time.time()

    def add_batch(self, losses: torch.Tensor, correct) -> None:
        self.sums[0] += losses.detach().float().sum()
        self.sums[2] += len(losses)
        if correct is not None:
            self.sums[1] += correct

    def add_step(self, norm, images: int) -> None:
        self.sums[3] += norm.detach().float() if torch.is_tensor(norm) else float(norm)
        self.steps += 1
        self.images += images

    def pause(self, seconds: float) -> None:
        """Time not spent training (logs, samples, checkpoints) leaves the images/s alone."""
        self.start += seconds

    def totals(self, accelerator) -> torch.Tensor:
        """The sums over every process (a collective: every process calls it at the same step)."""
        return accelerator.reduce(self.sums.clone(), reduction="sum") if accelerator.num_processes > 1 else self.sums

    def state(self, accelerator) -> dict:
        return {"sums": self.totals(accelerator).cpu().clone(), "steps": self.steps}

    def load(self, state: dict, main: bool) -> None:
        if main:  # the other processes' shares are in the main process's sums
            self.sums = state["sums"].to(self.device)
        self.steps = state["steps"]

    def row(self, accelerator, recipe: "Recipe", step: int, elapsed: float, now: float) -> list:
        """One loss-log row for the window ending at time ``now``, and a fresh window starting then."""
        loss, correct, count, norm = self.totals(accelerator).tolist()
        row = [step, loss / max(count, 1)] + ([correct / max(count, 1)] if recipe.part == "classifier" else [])
        row += [recipe.lr_at(step - 1), (norm if accelerator.num_processes == 1 else norm / accelerator.num_processes)
                / max(self.steps, 1), self.images / max(now - self.start, 1e-9), round(elapsed, 1)]
        self.sums.zero_()
        self.steps, self.images, self.start = 0, 0, now
        return row


@dataclass
class Outcome:
    """How a call to ``train`` ended."""
    start_step: int
    step: int
    images: int  # trained in this call
    seconds: float
    weights: list
    stopped: bool = False  # by a signal, after saving


def _columns(part: str) -> list:
    return ["step", "loss"] + (["accuracy"] if part == "classifier" else []) + \
        ["lr", "grad_norm", "images_per_s", "elapsed_s"]


def train(accelerator, model: torch.nn.Module, samples: TrainingSamples, split: Split, recipe: Recipe,
          cadence: Cadence, run: RunFolder, alphas_cumprod: torch.Tensor, conditional: bool,
          warn: Callable[[str], None], say: Callable[[str], None], progress=None) -> Outcome:
    """Train ``model`` (a UNet or a noisy classifier, on the accelerator's device) from the latest
    checkpoint in ``run`` (or from scratch) to ``recipe.steps``. ``progress`` is a tqdm bar or None."""
    main, device, world = accelerator.is_main_process, accelerator.device, accelerator.num_processes
    ema = EMA(model, recipe.ema) if recipe.ema > 0 else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    step, history, elapsed_before = 0, [], 0.0
    state = run.load_latest(warn)
    if state is not None:
        model.load_state_dict(state["model"])
        if ema is not None:
            ema.model.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        restore_rng_states(state["rng"])
        step, history, elapsed_before = state["step"], [list(r) for r in state["history"]], state["elapsed_s"]
        if main:
            say(f"resuming from {state['path']} (step {step})")
    outcome = Outcome(step, step, 0, 0.0, [])
    if step >= recipe.steps:
        return outcome
    wrapped, wrapped_optimizer = accelerator.prepare(model, optimizer)
    batches = loader(samples, StepBatches(len(samples), recipe.seed, split, step, recipe.steps), cadence.workers)
    ac = alphas_cumprod.to(device)
    if progress is not None:
        progress.reset(total=recipe.steps)
        progress.update(step)
    start = time.time()
    window = LogWindow(device)
    if state is not None and state.get("window") is not None:
        window.load(state["window"], main)
    saved = step
    with DeferredStop(world == 1) as stop:
        wrapped.train()
        it = iter(batches)
        while step < recipe.steps:
            torch.manual_seed(image_seed(recipe.seed, f"dropout/{step}/{accelerator.process_index}"))
            for group in wrapped_optimizer.param_groups:
                group["lr"] = recipe.lr_at(step)
            for micro in range(split.accumulation):
                batch = next(it)
                sync = micro == split.accumulation - 1
                with nullcontext() if sync or world == 1 else accelerator.no_sync(wrapped):
                    losses, correct = batch_loss(recipe.part, wrapped, batch, ac, conditional, device)
                    accelerator.backward(losses.mean() / split.accumulation)
                window.add_batch(losses, correct)
            norm = accelerator.clip_grad_norm_(model.parameters(),
                                               recipe.grad_clip if recipe.grad_clip > 0 else float("inf"))
            wrapped_optimizer.step()
            wrapped_optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(model, step)
            step += 1
            window.add_step(norm, recipe.batch_size)
            outcome.images += recipe.batch_size
            if progress is not None:
                progress.update(1)
            last, now = step == recipe.steps, time.time()  # what follows is not training: the log's images/s
            if step % cadence.log_every == 0 or last:  # leaves it out
                history.append(window.row(accelerator, recipe, step, elapsed_before + now - start, now))
                if not math.isfinite(history[-1][1]):
                    raise UserError(f"the loss is {history[-1][1]} at step {step}: training diverged; lower --lr or "
                                    f"raise --warmup (the checkpoint of step {saved} is kept)")
                if progress is not None:
                    progress.set_postfix_str(f"loss {history[-1][1]:.4g}, {history[-1][-2]:.1f} img/s", refresh=False)
                if main:
                    run.write_log(_columns(recipe.part), history)
            if main and recipe.part == "unet" and cadence.sample_every and (step % cadence.sample_every == 0 or last):
                run.write_samples(sample_grid(ema.model if ema is not None else model, samples.image_size,
                                              model.in_channels, model.num_classes if conditional else None, ac,
                                              recipe.seed, cadence.sample_steps, device), step)
            if step % cadence.save_every == 0 or last or stop.requested:
                partial = window.state(accelerator)
                if main:
                    _checkpoint(run, model, ema, optimizer, step, history, partial,
                                elapsed_before + time.time() - start, recipe, cadence.keep)
                    outcome.weights = run.export(model, ema.model if ema is not None else None)
                saved = step
            window.pause(time.time() - now)
            if stop.requested:
                outcome.stopped = True
                break
    outcome.step, outcome.seconds = step, time.time() - start
    return outcome


def _checkpoint(run: RunFolder, model, ema, optimizer, step: int, history: list, window: dict, elapsed: float,
                recipe: Recipe, keep: int) -> None:
    state = {"step": step, "model": model.state_dict(), "ema": ema.model.state_dict() if ema is not None else None,
             "optimizer": optimizer.state_dict(), "rng": rng_states(), "history": history, "window": window,
             "elapsed_s": elapsed, "recipe": asdict(recipe)}
    run.save_checkpoint(state, keep)
