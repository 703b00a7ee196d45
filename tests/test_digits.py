"""The shipped coloured-digits models: they load, the data split is fixed, and DDIB runs on the demos."""

import os
import sys

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from diffusions import alphas_cumprod, respace, translate  # noqa: E402
from models import EncoderUNetModel, UNetModel  # noqa: E402

CONFIG = os.path.join(ROOT, "configs", "digits.yaml")
UNET = os.path.join(ROOT, "assets", "digits_unet.pt")
CLASSIFIER = os.path.join(ROOT, "assets", "digits_classifier.pt")
DEMO = os.path.join(ROOT, "assets", "digits")
# Measured with the shipped weights on the two demo images below (10 uniform steps, x0 unclipped):
# 28.7 dB; the bound leaves room for other CPUs' float rounding, not for a broken model.
MIN_RECON_PSNR = 26.0


@pytest.fixture(scope="module")
def cfg():
    with open(CONFIG) as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def unet(cfg):
    model = UNetModel(**cfg["model"])
    model.load_state_dict(torch.load(UNET, map_location="cpu", weights_only=True))
    return model.eval()


def demo_files():
    """(class, path) of every shipped demo PNG."""
    return [(int(c), os.path.join(DEMO, c, f)) for c in sorted(os.listdir(DEMO))
            for f in sorted(os.listdir(os.path.join(DEMO, c)))]


def read_png(path: str) -> torch.Tensor:
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    return torch.from_numpy(pixels).permute(2, 0, 1) / 127.5 - 1


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (((a.clamp(-1, 1) - b) / 2) ** 2).mean().item()
    return 10 * np.log10(1 / mse)


def test_weights_load_strict_and_are_small(cfg):
    for path, cls, section in [(UNET, UNetModel, "model"), (CLASSIFIER, EncoderUNetModel, "classifier")]:
        state = torch.load(path, map_location="cpu", weights_only=True)
        cls(**cfg[section]).load_state_dict(state, strict=True)
        assert all(v.dtype == torch.float32 for v in state.values())
    total = os.path.getsize(UNET) + os.path.getsize(CLASSIFIER)
    assert total < 10e6
    assert cfg["model"]["num_classes"] == cfg["classifier"]["out_channels"] == 10


def test_classifier_runs(cfg):
    clf = EncoderUNetModel(**cfg["classifier"])
    clf.load_state_dict(torch.load(CLASSIFIER, map_location="cpu", weights_only=True))
    x = torch.stack([read_png(p) for _, p in demo_files()[:4]])
    with torch.no_grad():
        logits = clf.eval()(x, torch.zeros(4, dtype=torch.long))
    assert logits.shape == (4, 10) and torch.isfinite(logits).all()


def test_demo_files_are_held_out_images():
    digits_data = pytest.importorskip("tools.digits_data")
    data = digits_data.load()
    files = demo_files()
    assert len(files) == 30 and {c for c, _ in files} == set(range(10))
    for c, path in files:
        i = int(os.path.splitext(os.path.basename(path))[0])
        assert i in data["held_out"] and int(data["labels"][i]) == c
        expected = digits_data.to_uint8(data["images"][i:i + 1])[0].astype(int)
        assert np.abs(np.asarray(Image.open(path).convert("RGB"), dtype=int) - expected).max() <= 1


def test_split_is_deterministic_and_disjoint():
    digits_data = pytest.importorskip("tools.digits_data")
    _, labels = digits_data.load_raw()
    train, held = digits_data.split_indices(labels)
    train2, held2 = digits_data.split_indices(labels)
    assert np.array_equal(train, train2) and np.array_equal(held, held2)
    assert len(np.intersect1d(train, held)) == 0 and len(train) + len(held) == len(labels) == 1797
    assert abs(len(held) - 0.2 * len(labels)) < 10
    assert np.array_equal(digits_data.dataset_colours(5), digits_data.dataset_colours(5))


def test_translate_demo_images(cfg, unet):
    files = demo_files()
    (a, path_a), (b, _) = files[0], files[-1]
    x = torch.stack([read_png(path_a), read_png(files[1][1])])
    ac = alphas_cumprod(cfg["diffusion"]["beta_schedule"], cfg["diffusion"]["total_steps"])
    ts = respace("uniform", cfg["diffusion"]["total_steps"], 10)
    with torch.no_grad():
        out = translate(unet, x, a, b, ac, ts)
        recon = translate(unet, x, a, a, ac, ts, clip_x0=False)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert out.min() >= -1 and out.max() <= 1
    assert (out - x).abs().mean() > 0.05  # a different digit, not a copy
    assert psnr(recon, x) > MIN_RECON_PSNR


def test_demo_through_the_script(tmp_path):
    """The README's demo, end to end in a subprocess on two demo digits: outputs, sizes, and A→A
    through the real script staying close to the source."""
    import shutil
    import subprocess

    inp = tmp_path / "in"
    for c, path in demo_files()[:6:3]:  # two images of class 0 and 1
        (inp / str(c)).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, inp / str(c))
    out = tmp_path / "out"
    cmd = [sys.executable, os.path.join(ROOT, "sample_ddib.py"), "-c", CONFIG, "--weights", UNET,
           "--input_dir", str(inp), "--save_dir", str(out), "--class_A", "folder", "--class_B", "0,8",
           "--respace_steps", "10", "--no-clip_x0"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "translated 2, skipped 0, failed 0" in r.stdout
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png") if "_sources" not in p.parts)
    sources = sorted(p.relative_to(inp).as_posix() for p in inp.rglob("*.png"))
    assert written == sorted([f"0/{s}" for s in sources] + [f"8/{s}" for s in sources])
    for p in out.rglob("*.png"):
        assert Image.open(p).size == (16, 16)
    zero = next(s for s in sources if s.startswith("0/"))
    assert psnr(read_png(str(out / "0" / zero)), read_png(str(inp / zero))) > MIN_RECON_PSNR - 1
