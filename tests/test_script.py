"""sample_ddib.py end to end, in a subprocess, on a tiny random model."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, command


def run_script(*args, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "sample_ddib.py"), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture()
def input_dir(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(root / "one.jpg")
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "sub" / "two.png")
    Image.fromarray(rng.integers(0, 256, (90, 40), dtype=np.uint8)).save(root / "sub" / "three.bmp")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (root / "readme.txt").write_text("ignored")
    return root


def _common(files, input_dir, save_dir):
    return ["-c", files["config"], "--weights", files["weights"], "--input_dir", input_dir,
            "--save_dir", save_dir, "--class_A", 1, "--class_B", 2, "--respace_steps", 4, "--micro_batch", 2]


def test_end_to_end(tiny_files, input_dir, tmp_path):
    save = tmp_path / "out"
    r = run_script(*_common(tiny_files, input_dir, save), "--save_pairs",
                   "--classifier_weights", tiny_files["classifier"], "--classifier_scale", 500)
    assert r.returncode == 0, r.stderr
    outputs = sorted(p.relative_to(save).as_posix() for p in save.rglob("*.png") if not {"_pairs", "_sources"} & set(p.parts))
    assert outputs == ["one.png", "sub/three.png", "sub/two.png"]
    for name in outputs:
        with Image.open(save / name) as img:
            assert img.size == (32, 32) and img.mode == "RGB"
        with Image.open(save / "_pairs" / name) as img:
            assert img.size == (64, 32)
    assert r.stderr.count("broken.jpg") >= 1 and "skipping broken.jpg" in r.stderr
    assert "translated 3, skipped 1, failed 0" in r.stdout
    assert "broken.jpg" in (save / "failures.csv").read_text()

    again = run_script(*_common(tiny_files, input_dir, save), "--save_pairs",
                       "--classifier_weights", tiny_files["classifier"], "--classifier_scale", 500)
    assert again.returncode == 0 and "skipping 3 input(s) whose output already exists" in again.stdout
    other = run_script(*_common(tiny_files, input_dir, save))  # other settings: refused, not skipped
    assert other.returncode == 2 and "--classifier_scale 500.0 → 0.0" in other.stderr

    # the guided output is the guided DDIB computed here from the library's parts, not an unguided one
    # (the random classifier's gradients are tiny: scale 500 moves the image by tens of levels)
    expected, unguided = _independent(tiny_files, input_dir / "sub" / "two.png", scale=500.0)
    with Image.open(save / "sub" / "two.png") as img:
        got = np.asarray(img).astype(int)
    assert np.abs(got - expected).max() <= 1
    assert np.abs(got - unguided).max() > 8


def _independent(files, path, scale):
    """DDIB 1 → 2 with 4 uniform steps, clipped, guided at ``scale`` and unguided, as uint8 HWC."""
    import torch
    import yaml

    from diffusions import alphas_cumprod, generate, invert, respace
    from models import EncoderUNetModel, UNetModel
    from utils.images import load_image, to_tensor, to_uint8

    cfg = yaml.safe_load(files["config"].read_text())
    unet, clf = UNetModel(**cfg["model"]).eval(), EncoderUNetModel(**cfg["classifier"]).eval()
    unet.load_state_dict(torch.load(files["weights"], weights_only=True))
    clf.load_state_dict(torch.load(files["classifier"], weights_only=True))
    ac, ts = alphas_cumprod("linear", 1000), respace("uniform", 1000, 4)
    with torch.no_grad():
        latent = invert(unet, to_tensor([load_image(path, 32)]), 1, ac, ts)
        guided = generate(unet, latent, 2, ac, ts, classifier=clf, classifier_scale=scale)
        plain = generate(unet, latent, 2, ac, ts)
    return to_uint8(guided[0]).astype(int), to_uint8(plain[0]).astype(int)


def test_help_explains_every_argument():
    r = run_script("-h")
    assert r.returncode == 0
    for flag in ["--config", "--weights", "--input_dir", "--save_dir", "--class_A", "--class_B", "--seed",
                 "--respace_type", "--respace_steps", "--micro_batch", "--classifier_weights",
                 "--classifier_scale", "--eta", "--clip_x0", "--save_pairs"]:
        assert flag in r.stdout
    assert "default: 100" in r.stdout


@pytest.mark.parametrize("extra,match", [
    (["--class_B", "10"], "--class_B: class 10 is out of range"),
    (["--respace_steps", "1001"], "above the schedule's total_steps"),
    (["--classifier_scale", "3"], "--classifier_scale needs --classifier_weights"),
    (["--mixed_precision", "fp16"], "--mixed_precision fp16 needs a GPU; use bf16 on the CPU"),
])
def test_user_errors_are_one_line(tiny_files, input_dir, tmp_path, extra, match):
    r = run_script(*command(_common(tiny_files, input_dir, tmp_path / "out"), *extra))
    assert r.returncode == 2
    assert match in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_mixed_precision_auto_and_explicit(tiny_files, input_dir, tmp_path, monkeypatch):
    """auto: float32 on the CPU, 16 bits on a GPU or as accelerate launch says; an explicit value wins."""
    import torch

    from utils.pipeline import launch_precision, network_dtype

    assert launch_precision("auto", "bf16") == "bf16" and launch_precision("auto", "no") == "auto"
    assert launch_precision("no", "fp16") == "no"  # an explicit flag wins over the launcher

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert network_dtype("auto", cpu) is None
    assert network_dtype("bf16", cpu) == torch.bfloat16
    assert network_dtype("no", cuda) is None
    assert network_dtype("fp16", cuda) == torch.float16
    for supported, want in ((True, torch.bfloat16), (False, torch.float16)):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: supported)
        assert network_dtype("auto", cuda) == want

    quiet = run_script(*_common(tiny_files, input_dir, tmp_path / "fp32"))
    assert quiet.returncode == 0 and "networks in" not in quiet.stdout  # CPU default: float32, as before
    r = run_script(*_common(tiny_files, input_dir, tmp_path / "bf16"), "--mixed_precision", "bf16")
    assert r.returncode == 0, r.stderr
    assert "networks in bf16 (--mixed_precision no for float32), micro-batch" in r.stdout
    assert "translated 3, skipped 1, failed 0" in r.stdout
