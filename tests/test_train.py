"""train_ddib.py on tiny models and tiny folders: the loss goes down, the run folder translates through
sample_ddib.py, a crashed or stopped run resumes to the same weights bit for bit, bad data folders are
one-line errors, and the draws and losses the loop rests on."""

import colorsys
import csv
import errno
import json
import os
import shlex
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import ROOT

import sample_ddib  # noqa: E402
import train_ddib  # noqa: E402
from diffusions import alphas_cumprod  # noqa: E402
from diffusions.losses import q_sample, unet_loss, variational_term  # noqa: E402
from utils.checkpoints import load_network  # noqa: E402
from utils.config import load_config  # noqa: E402
from utils.train_data import StepBatches, class_order, plan_split, rotate_hue  # noqa: E402
from utils.train_run import RunFolder  # noqa: E402
from utils.training import EMA, Recipe  # noqa: E402

SECTION = {"image_size": 8, "in_channels": 3, "model_channels": 32, "num_res_blocks": 1,
           "attention_resolutions": [4], "channel_mult": [1, 2], "num_head_channels": 32}
CONFIG = {"model": {**SECTION, "out_channels": 3, "num_classes": 7},
          "diffusion": {"total_steps": 100, "beta_schedule": "linear"},
          "classifier": {**SECTION, "out_channels": 7, "pool": "attention"}}


@pytest.fixture()
def config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(json.loads(json.dumps(CONFIG))))  # no shared lists: YAML would alias them
    return path


def _image(path, colour, size, rng):
    pixels = np.clip(np.array(colour) + rng.integers(-20, 20, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture()
def data(tmp_path):
    """Two learnable classes (red and blue images of odd sizes) and one unreadable file."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for name, colour in (("cat", (220, 30, 30)), ("dog", (30, 30, 220))):
        (root / name).mkdir(parents=True)
        for i, size in enumerate([(8, 8), (11, 17), (30, 20)]):
            _image(root / name / f"{i}.png", colour, size, rng)
    (root / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return root


def train(capsys, *args):
    """train_ddib.py in this process: (exit code, stdout, stderr)."""
    code = train_ddib.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def error_line(err: str) -> str:
    """The one error line of a refused run (what the progress bar drew before it aside)."""
    lines = [line.rsplit("\r", 1)[-1] for line in err.splitlines() if "error" in line]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def common(config, data, save, steps, *more):
    """The arguments of a tiny run; ``more`` adds flags or replaces these defaults (a flag given twice is
    refused)."""
    flags, rest, more = {"--batch_size": 8, "--warmup": 2, "--lr": 2e-3, "--threads": 1}, [], list(more)
    while more:
        token = more.pop(0)
        if token in flags:
            flags[token] = more.pop(0)
        else:
            rest.append(token)
    return ["-c", config, "--data_dir", data, "--save_dir", save, "--steps", steps,
            *[v for pair in flags.items() for v in pair], *rest]


def loss_rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_loss_goes_down_and_the_run_translates(config, data, tmp_path, capsys):
    run = tmp_path / "run"
    args = common(config, data, run, 60, "--log_every", 10, "--save_every", 30, "--keep", 1,
                  "--sample_every", 60, "--sample_steps", 4)
    code, out, err = train(capsys, *args)
    assert code == 0, err
    losses = [float(r["loss"]) for r in loss_rows(run / "loss.csv")]
    assert len(losses) == 6 and losses[-1] < 0.5 * losses[0], losses
    assert "skipping dog/broken.jpg" in err and "dog/broken.jpg" in (run / "skipped.csv").read_text()
    assert "6 images, 3 smaller than 8×8 enlarged" not in out  # 8×8 and larger: none enlarged
    cfg = load_config(run / "config.yaml")
    assert cfg["class_names"] == ["cat", "dog"] and cfg["model"]["num_classes"] == 2
    assert cfg["classifier"]["out_channels"] == 2
    net = load_network(cfg, run / "ema.pt")  # the one loader, strict: guided-diffusion's names
    assert net.num_classes == 2 and net.class_names == ["cat", "dog"]
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["unet-00000060.pt"]  # --keep 1
    with Image.open(run / "samples" / "step-00000060.png") as grid:  # 2 class rows × 8, 8 px enlarged 8×
        assert grid.size == (8 * 66 + 2, 2 * 66 + 2)
    with Image.open(run / "loss.png") as plot:
        assert plot.format == "PNG"

    code, out, _ = train(capsys, *args)  # finished: a rerun has nothing to do
    assert code == 0 and "already trained to step 60" in out
    code, _, err = train(capsys, *common(config, data, run, 60, "--lr", 1e-3))
    assert code == 2 and "--lr 0.002 → 0.001" in error_line(err)

    trans = subprocess.run([sys.executable, str(ROOT / "sample_ddib.py"), "-c", run / "config.yaml", "--weights",
                            run / "ema.pt", "--input_dir", data / "cat", "--save_dir", tmp_path / "trans",
                            "--class_A", "cat", "--class_B", "dog", "--respace_steps", "4"],
                           capture_output=True, text=True, timeout=300)
    assert trans.returncode == 0, trans.stderr
    assert "translated 3, skipped 0, failed 0" in trans.stdout
    assert sorted(p.name for p in (tmp_path / "trans").glob("*.png")) == ["0.png", "1.png", "2.png"]


def test_crash_and_stop_resume_to_the_same_weights(config, data, tmp_path, capsys, monkeypatch):
    steps = ["--log_every", 2, "--save_every", 4, "--sample_every", 0]
    code, _, err = train(capsys, *common(config, data, tmp_path / "straight", 12, *steps))
    assert code == 0, err

    resumed = tmp_path / "resumed"
    update, calls = EMA.update, []

    def crash_at_6(self, model, step):  # dies after step 6, with the checkpoint of step 4 on disk
        if step == 5:
            raise RuntimeError("simulated crash")
        update(self, model, step)

    monkeypatch.setattr(EMA, "update", crash_at_6)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(capsys, *common(config, data, resumed, 12, *steps))
    assert [p.name for p in (resumed / "checkpoints").iterdir()] == ["unet-00000004.pt"]

    def sigterm_at_9(self, model, step):  # a real SIGTERM: the step finishes, is saved, exit 130
        calls.append(step)
        if step == 8:
            os.kill(os.getpid(), signal.SIGTERM)
        update(self, model, step)

    monkeypatch.setattr(EMA, "update", sigterm_at_9)
    code, out, err = train(capsys, *common(config, data, resumed, 12, *steps))
    assert code == 130 and calls == [4, 5, 6, 7, 8], (out, err)
    assert "resuming from" in out and "(step 4)" in out and "stopped at step 9 of 12" in out
    assert "interrupted: the latest checkpoint is kept" in err
    assert (resumed / "checkpoints" / "unet-00000009.pt").is_file()

    monkeypatch.setattr(EMA, "update", update)
    code, out, err = train(capsys, *common(config, data, resumed, 12, *steps))
    assert code == 0 and "(step 9)" in out, err
    for name in ("ema.pt", "model.pt"):
        assert (resumed / name).read_bytes() == (tmp_path / "straight" / name).read_bytes(), name
    ours, theirs = loss_rows(resumed / "loss.csv"), loss_rows(tmp_path / "straight" / "loss.csv")
    assert [(r["step"], r["loss"]) for r in ours] == [(r["step"], r["loss"]) for r in theirs]
    assert [r["step"] for r in ours] == ["2", "4", "6", "8", "10", "12"]  # the stop at 9 adds no row


def test_loader_workers_read_what_the_memory_cache_holds(config, data, tmp_path, capsys):
    """Images read by two loader processes (nothing cached) train the same weights, bit for bit."""
    steps = ["--log_every", 2, "--sample_every", 0]
    assert train(capsys, *common(config, data, tmp_path / "cached", 4, *steps))[0] == 0
    assert train(capsys, *common(config, data, tmp_path / "read", 4, *steps, "--cache_mb", 0, "--workers", 2))[0] == 0
    assert (tmp_path / "cached" / "ema.pt").read_bytes() == (tmp_path / "read" / "ema.pt").read_bytes()


def test_divergence_and_a_full_disk_stop_with_one_line(config, data, tmp_path, capsys, monkeypatch):
    code, out, err = train(capsys, *common(config, data, tmp_path / "diverged", 10, "--lr", 1e8, "--grad_clip", 0,
                                           "--warmup", 0, "--log_every", 2, "--sample_every", 0))
    assert code == 1 and "stopped at step 4 of 10" in out
    assert "error: the loss is nan at step 4: training diverged; lower --lr or raise --warmup (no checkpoint" in err

    def full(self, state, keep):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.root / "checkpoints" / "x.pt"))

    monkeypatch.setattr(RunFolder, "save_checkpoint", full)
    code, out, err = train(capsys, *common(config, data, tmp_path / "full", 4, "--save_every", 2, "--sample_every", 0))
    assert code == 1 and "stopped at step 2 of 4" in out
    assert error_line(err).startswith("error: cannot write ") and "No space left on device (no checkpoint was " \
        "written yet); free space and rerun the same command to continue" in err


def test_classifier_part_and_unconditional_folder(config, data, tmp_path, capsys):
    run = tmp_path / "run"
    code, out, err = train(capsys, *common(config, data, run, 4, "--part", "classifier", "--log_every", 2))
    assert code == 0, err
    rows = loss_rows(run / "classifier_loss.csv")
    assert [r["step"] for r in rows] == ["2", "4"] and 0 <= float(rows[-1]["accuracy"]) <= 1
    load_network(load_config(run / "config.yaml"), run / "classifier.pt", part="classifier")
    assert not (run / "classifier_ema.pt").exists()  # no EMA for the classifier unless asked

    single = tmp_path / "domain"
    single.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        _image(single / f"{i}.png", (10, 200, 10), (9, 9), rng)
    code, out, err = train(capsys, *common(config, single, tmp_path / "uncond", 2, "--sample_every", 2,
                                           "--sample_steps", 2))
    assert code == 0, err
    cfg = load_config(tmp_path / "uncond" / "config.yaml")
    assert cfg["model"]["num_classes"] is None and "class_names" not in cfg and cfg["classifier"] is None
    assert load_network(cfg, tmp_path / "uncond" / "ema.pt").num_classes is None
    assert "unconditional" in out


def _bad(tmp_path, kind):
    root = tmp_path / "bad"
    rng = np.random.default_rng(2)
    if kind == "empty":
        (root / "nothing").mkdir(parents=True)
        (root / "notes.txt").write_text("not an image")
    elif kind == "unreadable":
        root.mkdir()
        for name in ("a.png", "b.jpg"):
            (root / name).write_bytes(b"not an image")
    elif kind == "one class":
        (root / "cats").mkdir(parents=True)
        _image(root / "cats" / "0.png", (1, 2, 3), (8, 8), rng)
    elif kind in ("mixed", "numbers with a gap", "class unreadable", "comma"):
        names = {"numbers with a gap": ["1", "2"], "comma": ["a,b", "c"]}.get(kind, ["a", "b"])
        for name in names:
            (root / name).mkdir(parents=True)
            if kind == "class unreadable" and name == "b":
                (root / name / "0.png").write_bytes(b"broken")
            else:
                _image(root / name / "0.png", (1, 2, 3), (8, 8), rng)
        if kind == "mixed":
            _image(root / "loose.png", (1, 2, 3), (8, 8), rng)
    return root


@pytest.mark.parametrize("kind, message", [
    ("empty", "holds no images (looked for .bmp .gif .jpeg .jpg .png .tif .tiff .webp)"),
    ("unreadable", "none of its 2 image file(s) can be read"),
    ("one class", "has one class folder only ('cats'); a class-conditional model needs two or more"),
    ("mixed", "has images both directly in it (1) and in subfolders"),
    ("numbers with a gap", "must be 0, 1, 2, … without gaps"),
    ("class unreadable", "class folder(s) 'b' hold no readable image"),
    ("comma", "the class folders cannot all be class names: class_names[0] is 'a,b': ',' and ';' separate"),
])
def test_bad_data_folders_are_one_line_errors(config, tmp_path, capsys, kind, message):
    code, _, err = train(capsys, *common(config, _bad(tmp_path, kind), tmp_path / "run", 2))
    assert code == 2 and message in error_line(err), err
    assert not (tmp_path / "run").exists()  # a refused run leaves no folder behind


def test_usage_errors(config, data, tmp_path, capsys, monkeypatch):
    code, _, err = train(capsys, *common(config, data, data / "run", 2))
    assert code == 2 and "--save_dir must not be inside --data_dir" in err
    monkeypatch.chdir(tmp_path)
    before = sorted(os.listdir(tmp_path))
    for blank in ("", "  "):  # an unset variable is no folder: never the current one, nor one named "  "
        code, _, err = train(capsys, *common(config, data, blank, 2))
        assert code == 2 and "--save_dir is empty" in error_line(err), err
        assert sorted(os.listdir(tmp_path)) == before
    code, _, err = train(capsys, *common(config, data, tmp_path / "run", 2, "--batch_size", 6, "--micro_batch", 4))
    assert code == 2 and "--micro_batch 4 must divide each process's share of the batch, 6 images" in err
    code, _, err = train(capsys, *common(config, data, tmp_path / "run", 2, "--resume"))
    assert code == 2 and "--resume: no unet checkpoint" in err
    code, _, err = train(capsys, *common(config, data / "cat", tmp_path / "run", 2, "--part", "classifier"))
    assert code == 2 and "--part classifier needs class folders" in err
    linked = tmp_path / "linked"
    linked.mkdir()
    (tmp_path / "elsewhere.pt").write_bytes(b"a user's file")
    (linked / "ema.pt").symlink_to(tmp_path / "elsewhere.pt")
    code, _, err = train(capsys, *common(config, data, linked, 2))
    assert code == 2 and "ema.pt is a symlink, where the run writes a file of its own" in error_line(err)
    assert (tmp_path / "elsewhere.pt").read_bytes() == b"a user's file"
    assert sorted(p.name for p in linked.iterdir()) == ["ema.pt"]  # nothing left behind
    with pytest.raises(SystemExit) as exit:  # argparse's own exit, with our one line
        train(capsys, *common(config, data, tmp_path / "run2", 2, "--ema", 1))
    assert exit.value.code == 2
    assert capsys.readouterr().err == "error: argument --ema: must be a number in [0.0, 1.0), got '1'\n"


def test_a_users_files_in_the_save_folder_are_never_replaced(config, data, tmp_path, capsys):
    """A folder where no run recorded itself holds the user's files, whatever their names."""
    for name in ("ema.pt", "loss.csv", "config.yaml", "skipped.csv", "checkpoints/unet-00000002.pt"):
        save = tmp_path / name.replace("/", "_")
        (save / name).parent.mkdir(parents=True)
        (save / name).write_bytes(b"a user's file")
        code, _, err = train(capsys, *common(config, data, save, 2))
        assert code == 2 and f"{name} is already there and no run of this tool recorded it" in error_line(err), err
        assert (save / name).read_bytes() == b"a user's file"
        assert sorted(p.relative_to(save).as_posix() for p in save.rglob("*") if p.is_file()) == [name]


def test_the_printed_command_translates_with_spaces_in_names(config, tmp_path, capsys):
    """The 'translate with:' line is a shell command: names with spaces stay one word each."""
    data, run = tmp_path / "my data", tmp_path / "my run"
    rng = np.random.default_rng(0)
    for name, colour in (("Persian cat", (220, 30, 30)), ("dog", (30, 30, 220))):
        (data / name).mkdir(parents=True)
        _image(data / name / "0.png", colour, (8, 8), rng)
    code, out, _ = train(capsys, *common(config, data, run, 1, "--batch_size", 2, "--sample_every", 0))
    assert code == 0, out
    line = next(line for line in out.splitlines() if line.startswith("translate with: python sample_ddib.py "))
    argv = [str(tmp_path / "translated") if a == "OUT" else str(data / "dog") if a == "IN" else a
            for a in shlex.split(line.split(" sample_ddib.py ", 1)[1])]
    assert argv[argv.index("--class_B") + 1] == "Persian cat"
    assert sample_ddib.main(argv + ["--respace_steps", "2"]) == 0
    assert (tmp_path / "translated" / "0.png").is_file()
    # the run folder itself as weights: one line naming the two files to give, on either side
    capsys.readouterr()
    for flags in (["--weights", run], ["-c", run / "config.yaml", "--weights", run],
                  ["-c", run / "config.yaml", "--weights", run / "ema.pt", "--weights_B", run]):
        assert sample_ddib.main([str(a) for a in flags] + argv[argv.index("--input_dir"):]) == 2
        err = error_line(capsys.readouterr().err)
        side = "_B" if "--weights_B" in flags else ""
        assert "is a training run's folder" in err and f"--weights{side} {shlex.quote(f'{run}/ema.pt')}" in err, err


def test_class_folders_in_label_order():
    assert class_order(["10", "b", "2", "A", "0", "1", "3", "4", "5", "6", "7", "8", "9"]) == \
        ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "A", "b"]


def test_every_process_draws_its_share_of_the_same_global_batch():
    """One process, or two with accumulation, draw the same (image, seed) pairs per step; a resumed
    sampler continues the uninterrupted one; epochs are fresh permutations."""
    def keys(world, micro, start=0, steps=5):
        per_rank = [list(StepBatches(7, 3, plan_split(8, micro, world, rank), start, steps)) for rank in range(world)]
        return sorted(k for rank in per_rank for batch in rank for k in batch)

    one = keys(1, None)
    assert one == keys(2, None) == keys(2, 2) == keys(1, 2)
    assert keys(1, None, start=2) == sorted(k for step in list(StepBatches(7, 3, plan_split(8, None, 1, 0), 0, 5))[2:]
                                            for k in step)
    images = [i for i, _ in list(StepBatches(7, 3, plan_split(7, None, 1, 0), 0, 2))[0]]
    assert sorted(images) == list(range(7))  # one epoch: every image once
    assert len({seed for _, seed in one}) == len(one)


def test_hue_turn_keeps_saturation_and_value():
    """--hue_jitter's turn of the colour circle, against colorsys's HSV, pixel by pixel."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((3, 4, 5), generator=gen) * 2 - 1
    for turn in (0.0, 0.1, -0.37, 0.5):
        y = (rotate_hue(x, turn) + 1) / 2
        for pixel, out in zip(((x + 1) / 2).flatten(1).T.tolist(), y.flatten(1).T.tolist()):
            h, s, v = colorsys.rgb_to_hsv(*pixel)
            assert max(abs(a - b) for a, b in zip(colorsys.hsv_to_rgb((h + turn) % 1, s, v), out)) < 1e-5
    assert rotate_hue(torch.tensor([1.0, -1, -1])[:, None, None], 1 / 3).flatten().tolist() == [-1, 1, -1]


def test_learning_rate_schedule():
    constant = Recipe(steps=100, lr=1.0, warmup=10)
    assert [constant.lr_at(s) for s in (0, 4, 9, 10, 99)] == [0.1, 0.5, 1.0, 1.0, 1.0]
    cosine = Recipe(steps=110, lr=1.0, warmup=10, lr_schedule="cosine")
    assert cosine.lr_at(10) == 1.0 and abs(cosine.lr_at(60) - 0.5) < 1e-12 and cosine.lr_at(109) < 1e-3


def test_variational_term_of_the_learned_sigma():
    """Zero where the network's Gaussian is the true posterior; positive where its variance is not; the
    hybrid loss adds it for a learned-σ output and trains only its σ half through it."""
    ac = alphas_cumprod("linear", 100)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand((4, 3, 8, 8), generator=gen) * 2 - 1
    noise = torch.randn((4, 3, 8, 8), generator=gen)
    t = torch.tensor([5, 30, 60, 99])
    x_t = q_sample(x0, t, noise, ac)
    exact = variational_term(-torch.ones_like(x0), noise, x0, x_t, t, ac)  # min_log: the posterior's variance
    assert exact.abs().max() < 1e-4
    wrong = variational_term(torch.ones_like(x0), noise, x0, x_t, t, ac)
    assert wrong[0] > 1e-2 and wrong[1] > 1e-4 and (wrong > -1e-6).all()  # β_t ≈ the posterior's at large t
    out = torch.cat([noise, torch.ones_like(x0)], dim=1).requires_grad_()
    loss = unet_loss(out, x0, x_t, t, noise, ac)
    assert torch.allclose(loss, wrong * 100 / 1000)  # ε exact: only the σ term, scaled by T/1000
    loss.sum().backward()
    assert out.grad[:, :3].abs().max() == 0 and out.grad[:, 3:].abs().max() > 0
    assert torch.isfinite(variational_term(torch.zeros_like(x0), noise, x0, x_t, torch.zeros(4, dtype=torch.long),
                                           ac)).all()  # t = 0: the decoder's likelihood
