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

from .errors import printable
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
    hue_jitter: float = 0.0

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
        shown = min(num_classes, 10)
        rows = sorted({round(i * (num_classes - 1) / max(1, shown - 1)) for i in range(shown)})
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
        top, left = (gap + k * (size + gap) for k in divmod(i, columns))
        grid[top:top + size, left:left + size] = tile
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
    error: Optional[str] = None  # why the run stopped early: a diverged loss, a disk that cannot be written


def _columns(part: str) -> list:
    return ["step", "loss"] + (["accuracy"] if part == "classifier" else []) + \
        ["lr", "grad_norm", "images_per_s", "elapsed_s"]


def train(accelerator, model: torch.nn.Module, samples: TrainingSamples, split: Split, recipe: Recipe,
          cadence: Cadence, run: RunFolder, alphas_cumprod: torch.Tensor, conditional: bool,
          warn: Callable[[str], None], say: Callable[[str], None], progress=None) -> Outcome:
    """Train ``model`` (a UNet or a noisy classifier, on the accelerator's device) from the latest
    checkpoint in ``run`` (or from scratch) to ``recipe.steps``. ``progress`` is a tqdm bar or None."""
    loop = _Loop(accelerator, model, recipe, cadence, run, split, alphas_cumprod, conditional)
    state = run.load_latest(warn)
    if state is not None:
        loop.restore(state)
        if accelerator.is_main_process:
            say(f"resuming from {state['path']} (step {loop.step})")
    outcome = Outcome(loop.step, loop.step, 0, 0.0, [])
    if loop.step >= recipe.steps:
        return outcome
    batches = iter(loader(samples, StepBatches(len(samples), recipe.seed, split, loop.step, recipe.steps),
                          cadence.workers))
    if progress is not None:
        progress.reset(total=recipe.steps)
        progress.update(loop.step)
    start = time.time()
    with DeferredStop(accelerator.num_processes == 1) as stop:
        while loop.step < recipe.steps and not (outcome.stopped or outcome.error):
            loop.optimizer_step(batches)
            outcome.images += recipe.batch_size
            if progress is not None:
                progress.update(1)
            outcome.error = loop.bookkeeping(samples.image_size, stop.requested, outcome, progress)
            outcome.stopped = stop.requested
    outcome.step, outcome.seconds = loop.step, time.time() - start
    return outcome


class _Loop:
    """One training run's state (model, EMA, optimizer, step, loss log) and its two moves: an
    optimizer step, and the logging, sampling and saving that may follow it."""

    def __init__(self, accelerator, model, recipe: Recipe, cadence: Cadence, run: RunFolder, split: Split,
                 alphas_cumprod: torch.Tensor, conditional: bool):
        self.accelerator, self.model, self.recipe, self.cadence, self.run = accelerator, model, recipe, cadence, run
        self.split, self.conditional = split, conditional
        self.ac = alphas_cumprod.to(accelerator.device)
        self.ema = EMA(model, recipe.ema) if recipe.ema > 0 else None
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        self.step, self.saved, self.history, self.elapsed_before = 0, 0, [], 0.0
        self.window = LogWindow(accelerator.device)
        self.started = time.time()
        self.wrapped = self.wrapped_optimizer = None

    def restore(self, state: dict) -> None:
        """Continue from a checkpoint: every piece of state it holds."""
        self.model.load_state_dict(state["model"])
        if self.ema is not None:
            self.ema.model.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        restore_rng_states(state["rng"])
        self.step = self.saved = state["step"]
        self.history, self.elapsed_before = [list(r) for r in state["history"]], state["elapsed_s"]
        if state.get("window") is not None:
            self.window.load(state["window"], self.accelerator.is_main_process)

    def elapsed(self) -> float:
        return self.elapsed_before + time.time() - self.started

    def optimizer_step(self, batches) -> None:
        """Accumulate the gradients of this process's micro-batches (synchronised across processes on the
        last), clip, step, update the EMA. Dropout is reseeded from the step: a resume redraws it."""
        acc, recipe, split = self.accelerator, self.recipe, self.split
        if self.wrapped is None:
            self.wrapped, self.wrapped_optimizer = acc.prepare(self.model, self.optimizer)
            self.wrapped.train()
            self.started = time.time()
        torch.manual_seed(image_seed(recipe.seed, f"dropout/{self.step}/{acc.process_index}"))
        for group in self.wrapped_optimizer.param_groups:
            group["lr"] = recipe.lr_at(self.step)
        for micro in range(split.accumulation):
            last = micro == split.accumulation - 1
            with nullcontext() if last or acc.num_processes == 1 else acc.no_sync(self.wrapped):
                losses, correct = batch_loss(recipe.part, self.wrapped, next(batches), self.ac, self.conditional,
                                             acc.device)
                acc.backward(losses.mean() / split.accumulation)
            self.window.add_batch(losses, correct)
        norm = acc.clip_grad_norm_(self.model.parameters(), recipe.grad_clip if recipe.grad_clip > 0 else float("inf"))
        self.wrapped_optimizer.step()
        self.wrapped_optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model, self.step)
        self.step += 1
        self.window.add_step(norm, recipe.batch_size)

    def _kept(self) -> str:
        return f"the checkpoint of step {self.saved} is kept" if self.saved else "no checkpoint was written yet"

    def bookkeeping(self, image_size: int, stopping: bool, outcome: Outcome, progress) -> Optional[str]:
        """The loss log, sample grids and checkpoints due after this step (a checkpoint too when
        ``stopping``); returns why the run cannot go on (a diverged loss, a full disk), else None."""
        step, cadence, main = self.step, self.cadence, self.accelerator.is_main_process
        last, now = step == self.recipe.steps, time.time()  # from here on it is not training: the log's
        try:                                                # images/s leaves it out
            if step % cadence.log_every == 0 or last:
                self.history.append(self.window.row(self.accelerator, self.recipe, step, self.elapsed(), now))
                loss = self.history[-1][1]
                if not math.isfinite(loss):
                    return (f"the loss is {loss} at step {step}: training diverged; lower --lr or raise --warmup "
                            f"({self._kept()})")
                if progress is not None:
                    progress.set_postfix_str(f"loss {loss:.4g}, {self.history[-1][-2]:.1f} img/s", refresh=False)
                if main:
                    self.run.write_log(_columns(self.recipe.part), self.history)
            if main and self.recipe.part == "unet" and cadence.sample_every and (step % cadence.sample_every == 0
                                                                                  or last):
                net = self.ema.model if self.ema is not None else self.model
                self.run.write_samples(sample_grid(net, image_size, net.in_channels,
                                                   net.num_classes if self.conditional else None, self.ac,
                                                   self.recipe.seed, cadence.sample_steps, self.accelerator.device),
                                       step)
            if step % cadence.save_every == 0 or last or stopping:
                partial = self.window.state(self.accelerator)
                if main:
                    _checkpoint(self.run, self.model, self.ema, self.optimizer, step, self.history, partial,
                                self.elapsed(), self.recipe, cadence.keep)
                    outcome.weights = self.run.export(self.model, self.ema.model if self.ema is not None else None)
                self.saved = step
        except OSError as e:
            where = f" {printable(e.filename)}" if isinstance(e.filename, str) else ""
            return (f"cannot write{where}: {e.strerror or type(e).__name__} ({self._kept()}); free space and rerun "
                    "the same command to continue")
        finally:
            self.window.pause(time.time() - now)
        return None


def _checkpoint(run: RunFolder, model, ema, optimizer, step: int, history: list, window: dict, elapsed: float,
                recipe: Recipe, keep: int) -> None:
    state = {"step": step, "model": model.state_dict(), "ema": ema.model.state_dict() if ema is not None else None,
             "optimizer": optimizer.state_dict(), "rng": rng_states(), "history": history, "window": window,
             "elapsed_s": elapsed, "recipe": asdict(recipe)}
    run.save_checkpoint(state, keep)
