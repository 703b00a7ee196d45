"""The Python API, and the two seams: a new solver and a new network family, each added in this file alone."""

import re

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import ROOT
from ddib import DDIB, EpsNetwork, register_family, register_solver
from diffusions import SOLVERS, alphas_cumprod, generate, invert, respace, translate
from diffusions.solvers import coefficients
from models import FAMILIES
from utils.errors import UserError
from utils.images import load_image, to_tensor, to_uint8

DIGIT = ROOT / "assets" / "digits" / "3" / "0060.png"


def _readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- api-example -->\s*```python\n(.*?)```", text, re.S)
    assert block, "the README's Python example is marked with <!-- api-example -->"
    return block.group(1)


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """The README's notebook example, run exactly as written from the repository root."""
    import os
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        namespace = {}
        exec(compile(_readme_example(), "README.md", "exec"), namespace)
    finally:
        os.chdir(cwd)
    return namespace


def test_readme_example_runs_and_agrees_with_the_library(example):
    pairs = example["fives_and_eights"]
    assert len(pairs) == 1 and len(pairs[0]) == 2
    assert all(isinstance(img, Image.Image) and img.size == (16, 16) for img in pairs[0])
    # the two-halves form of the same translation gives the same eight, bit for bit
    assert np.array_equal(np.asarray(pairs[0][1]), np.asarray(example["eights"][0]))
    assert not np.array_equal(np.asarray(pairs[0][0]), np.asarray(pairs[0][1]))


def test_api_matches_the_math_below_it():
    """translate() = generate(invert()) of the diffusions module, on the shipped digits model."""
    bridge = DDIB.from_files(ROOT / "configs/digits.yaml", ROOT / "assets/digits_unet.pt", clip_x0=False, steps=8)
    net = bridge.bridge.model_A
    ac, ts = alphas_cumprod("cosine", 1000), respace("uniform", 1000, 8)
    x = to_tensor([load_image(DIGIT, 16)])
    with torch.no_grad():
        expected = to_uint8(translate(net, x, 3, 7, ac, ts, clip_x0=False)[0])
    got = bridge.translate(Image.open(DIGIT), class_A=3, class_B=7)[0]
    assert np.abs(np.asarray(got).astype(int) - expected.astype(int)).max() <= 1
    from_array = bridge.translate(np.asarray(Image.open(DIGIT).convert("RGB")), class_A="3", class_B=7)[0]
    assert np.array_equal(np.asarray(from_array), np.asarray(got))
    tensor_out = bridge.translate(x, class_A=3, class_B=7, output="tensor")
    assert tensor_out.shape == (1, 3, 16, 16) and tensor_out.dtype == torch.float32


def test_api_errors_are_user_errors():
    bridge = DDIB.from_files(ROOT / "configs/digits.yaml", ROOT / "assets/digits_unet.pt", steps=4)
    with pytest.raises(UserError, match="class-conditional"):
        bridge.translate([DIGIT], class_B=2)
    with pytest.raises(UserError, match="out of range"):
        bridge.translate([DIGIT], class_A=3, class_B=12)
    with pytest.raises(UserError, match="eta"):
        bridge.translate([DIGIT], class_A=3, class_B=2, eta=-1)
    with pytest.raises(UserError, match="solver .rk45. is unknown"):
        bridge.translate([DIGIT], class_A=3, class_B=2, solver="rk45")


# --- the solver seam: a new solver is one function and one line ----------------------------------------

EULER_CALLS = []


def sample_euler_x_over_alpha(denoise, x, path, callback=None):
    """Euler on the ODE in y = x/α against s = σ/α, dy/ds = ε: first order, and algebraically DDIM."""
    EULER_CALLS.append(len(path))
    for i, ((t, a), (_, a_next)) in enumerate(zip(path[:-1], path[1:])):
        recip, recipm1 = coefficients(a)
        eps = (recip * x - denoise(x, t)) / recipm1
        y = x * recip + ((1 / a_next - 1) ** 0.5 - recipm1) * eps
        x = y * a_next ** 0.5
    return x


def test_a_new_solver_is_one_function(tiny_files, tmp_path, monkeypatch):
    import sample_ddib

    monkeypatch.setitem(SOLVERS, "toy_euler", None)  # removed again after the test
    register_solver("toy_euler", sample_euler_x_over_alpha)
    inp = tmp_path / "in"
    inp.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(inp / "a.png")
    common = ["-c", tiny_files["config"], "--weights", tiny_files["weights"], "--input_dir", inp,
              "--class_A", 1, "--class_B", 2, "--respace_steps", 5, "--no-clip_x0"]
    assert sample_ddib.main([str(a) for a in common + ["--save_dir", tmp_path / "euler", "--solver", "toy_euler"]]) == 0
    assert sample_ddib.main([str(a) for a in common + ["--save_dir", tmp_path / "ddim"]]) == 0
    euler = np.asarray(Image.open(tmp_path / "euler" / "a.png")).astype(int)
    ddim = np.asarray(Image.open(tmp_path / "ddim" / "a.png")).astype(int)
    assert EULER_CALLS == [5, 6]  # it ran both halves: inversion over 5 points, generation down to the image
    assert np.abs(euler - ddim).max() <= 1  # the same ODE step written another way


# --- the network seam: a new family is an adapter and one registration ----------------------------------

class ToyDenoiser(torch.nn.Module):
    """A two-convolution ε network with a class embedding: nothing like the ADM UNet."""

    def __init__(self, image_size: int, in_channels: int = 3, num_classes: int = 4, width: int = 8):
        super().__init__()
        self.embed = torch.nn.Embedding(num_classes, width)
        self.conv_in = torch.nn.Conv2d(in_channels + 1, width, 3, padding=1)
        self.conv_out = torch.nn.Conv2d(width, in_channels, 3, padding=1)

    def forward(self, x, t, y):
        time = (t.float() / 1000).view(-1, 1, 1, 1).expand(-1, 1, *x.shape[2:])
        h = torch.tanh(self.conv_in(torch.cat([x, time], 1)) + self.embed(y)[:, :, None, None])
        return self.conv_out(h)


class ToyNetwork(EpsNetwork):
    def __init__(self, image_size, in_channels=3, num_classes=4):
        super().__init__(ToyDenoiser(image_size, in_channels, num_classes), in_channels, image_size, num_classes)


def test_a_new_network_family_is_one_adapter(tmp_path, monkeypatch):
    monkeypatch.setitem(FAMILIES, "toy", None)
    register_family("toy", lambda kw: ToyNetwork(**kw), {"image_size": 0, "in_channels": 3, "num_classes": 4})
    torch.manual_seed(0)
    net = ToyNetwork(8)
    torch.save(net.net.state_dict(), tmp_path / "toy.pt")
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(
        {"family": "toy", "model": {"image_size": 8}, "diffusion": {"beta_schedule": "linear"}}))
    bridge = DDIB.from_files(tmp_path / "toy.yaml", tmp_path / "toy.pt", precision="bf16", steps=6, clip_x0=False)
    assert bridge.precision == "float32"  # the fast path is ADM's: other families are left alone
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    out = bridge.translate(x, class_A=1, class_B=[2, 3], output="tensor")
    ac, ts = alphas_cumprod("linear", 1000), respace("uniform", 1000, 6)
    with torch.no_grad():
        expected = generate(net, invert(net, x, 1, ac, ts), 3, ac, ts, clip_x0=False)
    assert torch.allclose(torch.stack([o[1] for o in out]), expected, atol=1e-5)
    with pytest.raises(UserError, match="unknown key"):
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"family": "toy", "model": {"image_size": 8, "depth": 2}}))
        DDIB.from_files(tmp_path / "bad.yaml", tmp_path / "toy.pt")
