"""train_ddib.py as users start it: killed with SIGKILL and rerun, it ends with the weights of an
uninterrupted run, bit for bit (one thread, the CPU); stopped by SIGTERM under ``accelerate launch`` it
saves the step it is in and a rerun finishes it the same way; two CPU processes under torch's elastic
launcher train what one process trains with the same global batch (up to summation order)."""

import csv
import json
import os
import signal
import sys

import numpy as np
import pytest
import torch
import yaml

from conftest import ROOT
from test_launch import Run, _launcher, _poll
from test_train import CONFIG, _image

pytestmark = pytest.mark.slow  # real launches, kills and several processes: run with --runslow


@pytest.fixture()
def setup(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(json.loads(json.dumps(CONFIG))))
    rng = np.random.default_rng(0)
    for name, colour in (("cat", (220, 30, 30)), ("dog", (30, 30, 220))):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(4):
            _image(tmp_path / "data" / name / f"{i}.png", colour, (8 + i, 8), rng)
    return config, tmp_path / "data"


def _args(setup, save, steps, *more):
    config, data = setup
    return [str(ROOT / "train_ddib.py"), "-c", str(config), "--data_dir", str(data), "--save_dir", str(save),
            "--steps", str(steps), "--batch_size", "32", "--lr", "2e-3", "--warmup", "2", "--threads", "1",
            "--log_every", "5", "--save_every", "5", "--sample_every", "0", *map(str, more)]


def _python():
    return [sys.executable], {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _same_files(a, b):
    for name in ("ema.pt", "model.pt"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def _losses(run):
    with open(run / "loss.csv") as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]


def _straight_then_signalled(start, env, setup, tmp_path, name, step, signum):
    """A 40-step run straight through into tmp_path/straight, then the same run into tmp_path/name sent
    ``signum`` once its checkpoint of ``step`` exists; returns the signalled Run."""
    code, output = Run(start + _args(setup, tmp_path / "straight", 40), env, tmp_path, "straight").wait(300)
    assert code == 0, output[-3000:]
    run = tmp_path / name
    first = Run(start + _args(setup, run, 40), env, tmp_path, "first")
    _poll(lambda: (run / "checkpoints" / f"unet-{step:08d}.pt").exists() or first.proc.poll() is not None, 300,
          f"the checkpoint of step {step}")
    first.proc.send_signal(signum)
    return first


def test_sigkill_then_rerun_ends_with_the_uninterrupted_weights(setup, tmp_path):
    python, env = _python()
    killed = tmp_path / "killed"
    first = _straight_then_signalled(python, env, setup, tmp_path, "killed", 15, signal.SIGKILL)
    code, output = first.wait(60)
    assert code == -signal.SIGKILL, f"the run ended before it was killed: {output[-2000:]}"
    code, output = Run(python + _args(setup, killed, 40), env, tmp_path, "rerun").wait(300)
    assert code == 0 and "resuming from" in output, output[-3000:]
    _same_files(tmp_path / "straight", killed)
    assert _losses(killed) == _losses(tmp_path / "straight")


def test_sigterm_under_accelerate_launch_saves_the_step_then_rerun_finishes(setup, tmp_path):
    launch, env = _launcher(1)
    stopped = tmp_path / "stopped"
    # SIGTERM to the launcher: its worker follows it and stops after its step
    first = _straight_then_signalled(launch, env, setup, tmp_path, "stopped", 10, signal.SIGTERM)
    code, output = first.wait(120)
    assert code != 0
    _poll(lambda: not first.processes(), 60, "every process to end")
    assert "interrupted: the latest checkpoint is kept; rerun the same command to continue" in output, output[-3000:]
    saved = max(int(p.stem.split("-")[1]) for p in (stopped / "checkpoints").glob("unet-*.pt"))
    assert 10 <= saved < 40 and f"stopped at step {saved} of 40" in output, output[-3000:]
    code, output = Run(launch + _args(setup, stopped, 40), env, tmp_path, "rerun").wait(300)
    assert code == 0 and f"(step {saved})" in output, output[-3000:]
    _same_files(tmp_path / "straight", stopped)


def test_two_cpu_processes_train_what_one_process_trains(setup, tmp_path):
    python, env = _python()
    one = Run(python + _args(setup, tmp_path / "one", 10, "--micro_batch", "8"), env, tmp_path,
              "one")  # one process, 4 micro-batches of 8 accumulated
    code, output = one.wait(300)
    assert code == 0 and "1 process × 8 images × 4 accumulation steps" in output, output[-3000:]
    launch, env = _launcher(2)
    two = Run(launch + _args(setup, tmp_path / "two", 10, "--micro_batch", "8"), env, tmp_path, "two")
    code, output = two.wait(300)
    assert code == 0 and "2 processes × 8 images × 2 accumulation steps" in output, output[-3000:]
    a = torch.load(tmp_path / "one" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "two" / "model.pt", weights_only=True)
    diff = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
    # the same images, noise and steps; only the order of summing the gradients differs, which AdamW
    # turns into differences below its step size (lr) on the few weights whose gradients are nearly zero
    # (measured: 3e-7 on average; with a process drawing another's share instead of its own, 4e-3)
    assert diff.mean() < 2e-6 and diff.max() < 2e-3, (diff.mean(), diff.max())
    for (s1, l1), (s2, l2) in zip(_losses(tmp_path / "one"), _losses(tmp_path / "two")):
        assert s1 == s2 and abs(l1 - l2) < 1e-4 * abs(l1)
