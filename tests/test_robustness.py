"""Bad files, unusual images, bad arguments, interruption and numerics."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import sample_ddib
from conftest import ROOT, TINY_CONFIG, command, randomize
from diffusions import alphas_cumprod
from models import UNetModel
from utils.images import MAX_PIXELS, ImageReadError, load_image, scan_images
from models import ADMNetwork
from utils.bridge import Bridge, Sampling

SIZE = 32


def _rgb(seed=0, size=(40, 30)):
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


# --- bad input files -------------------------------------------------------------------------------

def _bad_files(root: Path):
    good = root / "good.png"
    Image.fromarray(_rgb()).save(good)
    jpeg = root / "tmp.jpg"
    Image.fromarray(_rgb(1, (64, 64))).save(jpeg, quality=90)
    (root / "empty.jpg").write_bytes(b"")
    (root / "truncated.jpg").write_bytes(jpeg.read_bytes()[:300])
    (root / "truncated.png").write_bytes(good.read_bytes()[:100])
    (root / "text.jpg").write_text("hello, I am text")
    (root / "page.png").write_text("<!DOCTYPE html><html><body>404</body></html>")
    jpeg.unlink()
    return ["empty.jpg", "truncated.jpg", "truncated.png", "text.jpg", "page.png"]


def test_bad_files_each_raise_a_reason(tmp_path):
    for name in _bad_files(tmp_path):
        with pytest.raises(ImageReadError) as e:
            load_image(tmp_path / name, SIZE)
        assert str(e.value)


def test_decompression_bomb_refused(tmp_path):
    side = int(MAX_PIXELS ** 0.5) + 10
    Image.new("1", (side, side)).save(tmp_path / "bomb.png", optimize=True)  # small file, huge image
    with pytest.raises(ImageReadError, match="above the limit"):
        load_image(tmp_path / "bomb.png", SIZE)


def test_vanished_file(tmp_path):
    with pytest.raises(ImageReadError, match="vanished"):
        load_image(tmp_path / "gone.png", SIZE)


def test_animated_gif_and_webp_use_first_frame(tmp_path):
    frames = [Image.new("RGB", (32, 32), c) for c in [(200, 10, 10), (10, 200, 10)]]
    for name in ["a.gif", "a.webp"]:
        frames[0].save(tmp_path / name, save_all=True, append_images=frames[1:], duration=100, loop=0,
                       **({"lossless": True} if name.endswith("webp") else {}))
        out = load_image(tmp_path / name, SIZE).astype(int)
        assert out[..., 0].mean() > 150 and out[..., 1].mean() < 60, name


# --- unusual but valid images ------------------------------------------------------------------------

def _save_modes(root: Path):
    base = Image.fromarray(_rgb(2, (48, 40)))
    base.convert("L").save(root / "l.png")
    base.convert("P").save(root / "p.png")
    p = base.convert("P")
    p.info["transparency"] = 0
    p.save(root / "p_transparent.png", transparency=0)
    rgba = base.convert("RGBA")
    rgba.putalpha(0)
    rgba.save(root / "rgba_clear.png")
    la = base.convert("LA")
    la.save(root / "la.png")
    Image.fromarray((np.asarray(base.convert("L")).astype(np.uint16) * 257)).save(root / "i16.png")
    base.convert("CMYK").save(root / "cmyk.jpg")
    return base


def test_unusual_modes_become_rgb(tmp_path):
    base = _save_modes(tmp_path)
    for path in sorted(tmp_path.iterdir()):
        out = load_image(path, SIZE)
        assert out.shape == (SIZE, SIZE, 3) and out.dtype == np.uint8, path.name
    assert (load_image(tmp_path / "rgba_clear.png", SIZE) == 255).all()  # transparent → white background
    grey = np.asarray(base.convert("L").resize((38, 32), Image.BICUBIC))
    i16 = load_image(tmp_path / "i16.png", SIZE)[..., 0].astype(int)
    assert np.abs(i16 - grey[:, 3:35]).max() <= 2  # 16-bit scaled to 8-bit, not clipped


def test_exif_rotation_is_applied(tmp_path):
    img = Image.new("RGB", (64, 32), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 32, 32))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    img.save(tmp_path / "r.jpg", exif=exif, quality=95)
    upright = Image.open(tmp_path / "r.jpg")
    upright = np.asarray(upright.transpose(Image.Transpose.ROTATE_270))
    out = load_image(tmp_path / "r.jpg", SIZE)
    # upright, the red half is on top; a square centre crop of a 32x64 portrait keeps rows 16..48
    assert out.shape == (SIZE, SIZE, 3)
    assert out[:8, :, 0].mean() > 150 and out[-8:, :, 2].mean() > 150
    assert upright.shape[0] == 64


def test_small_wide_and_tall_images(tmp_path):
    for name, size in [("small.png", (7, 9)), ("wide.png", (400, 20)), ("tall.png", (15, 300))]:
        Image.fromarray(_rgb(3, size)).save(tmp_path / name)
        assert load_image(tmp_path / name, SIZE).shape == (SIZE, SIZE, 3)


def test_scan_follows_symlinks_and_survives_loops(tmp_path):
    root = tmp_path / "in"
    (root / "deep" / "er").mkdir(parents=True)
    Image.fromarray(_rgb()).save(root / "deep" / "er" / "x y.ünï.png")
    os.symlink(root / "deep" / "er" / "x y.ünï.png", root / "link.png")
    os.symlink(root, root / "deep" / "loop")
    found = [p.as_posix() for p in scan_images(root)]
    assert "link.png" in found and "deep/er/x y.ünï.png" in found
    assert len(found) < 10


# --- the script: bad arguments and configs -----------------------------------------------------------

def _args(files, inp, out, *extra):
    return command(["-c", files["config"], "--weights", files["weights"], "--input_dir", inp, "--save_dir", out,
                    "--class_A", 1, "--class_B", 2, "--respace_steps", 3], *extra)


@pytest.fixture()
def one_image(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    Image.fromarray(_rgb()).save(inp / "a.png")
    return inp


def _fails(capsys, argv, match):
    code = sample_ddib.main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert match in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_bad_arguments(tiny_files, one_image, tmp_path, capsys):
    out = tmp_path / "out"
    cases = [
        (_args(tiny_files, tmp_path / "missing", out), "not a folder"),
        (_args(tiny_files, one_image, one_image), "must not be --save_dir or inside it"),
        (_args(tiny_files, one_image, one_image / "sub"), "must not be inside --input_dir"),
        (_args(tiny_files, one_image, out, "--class_A", "-1"), "--class_A: class -1 is out of range"),
        (_args(tiny_files, one_image, out, "--respace_steps", "5000"), "above the schedule's total_steps"),
        (_args(tiny_files, one_image, out, "--class_B", "two"), "names are known for the 1000 ImageNet classes only"),
        (_args(tiny_files, one_image, out, "--classifier_scale", "2"), "needs --classifier_weights"),
        (_args(tiny_files, one_image, out, "--eta", "-1"), "--eta must be between 0 and 1"),
        (["-c", str(tmp_path / "nope.yaml")] + _args(tiny_files, one_image, out)[2:], "file not found"),
        (_args(tiny_files, one_image, out)[:2] + ["--weights", str(tmp_path / "nope.pt")]
         + _args(tiny_files, one_image, out)[4:], "file not found"),
    ]
    for argv, match in cases:
        _fails(capsys, argv, match)
    assert not out.exists()


def test_empty_input_dir(tiny_files, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    _fails(capsys, _args(tiny_files, tmp_path / "empty", tmp_path / "out"), "no image files found")


@pytest.mark.parametrize("argv_extra", [["--micro_batch", "0"], ["--micro_batch", "-3"], ["--respace_steps", "0"],
                                        ["--respace_type", "cubic"]])
def test_argparse_rejects(tiny_files, one_image, tmp_path, capsys, argv_extra):
    with pytest.raises(SystemExit) as e:
        sample_ddib.main(_args(tiny_files, one_image, tmp_path / "out") + argv_extra)
    assert e.value.code == 2
    assert "error:" in capsys.readouterr().err


def _config(tmp_path, mutate):
    cfg = yaml.safe_load(yaml.safe_dump(TINY_CONFIG))
    mutate(cfg)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_bad_configs_and_checkpoints(tiny_files, one_image, tmp_path, capsys):
    def with_config(path, *extra):
        argv = _args(tiny_files, one_image, tmp_path / "out", *extra)
        argv[1] = str(path)
        return argv

    (tmp_path / "broken.yaml").write_text("model: {image_size: 32\n")
    _fails(capsys, with_config(tmp_path / "broken.yaml"), "not valid YAML")
    _fails(capsys, with_config(_config(tmp_path, lambda c: c["model"].update(num_channels=3))),
           "'num_channels' (guided-diffusion's flag; here use model_channels)")
    _fails(capsys, with_config(_config(tmp_path, lambda c: c["model"].update(num_res_blocks="two"))),
           "'model.num_res_blocks' must be int")
    _fails(capsys, with_config(_config(tmp_path, lambda c: c["model"].update(model_channels=64))),
           "do not match the config: mis-shaped (checkpoint vs config) 144 (time_embed.0.weight (128, 32) vs (256, 64)")
    _fails(capsys, with_config(_config(tmp_path, lambda c: c.pop("classifier")),
                               "--classifier_weights", tiny_files["classifier"]), "no 'classifier' section")
    uncond = _config(tmp_path, lambda c: c["model"].pop("num_classes"))
    _fails(capsys, with_config(uncond), "--class_A: that side's model is unconditional")


def test_unknown_config_key_error_names_close_match(tiny_files, one_image, tmp_path, capsys):
    path = _config(tmp_path, lambda c: c["model"].update(use_scale_shift_nrm=True))
    argv = _args(tiny_files, one_image, tmp_path / "out")
    argv[1] = str(path)
    _fails(capsys, argv, "did you mean 'use_scale_shift_norm'")


def test_safetensors_weights(tiny_files, one_image, tmp_path, capsys):
    safetensors = pytest.importorskip("safetensors.torch")
    state = torch.load(tiny_files["weights"], weights_only=True)
    safetensors.save_file(state, str(tmp_path / "w.safetensors"))
    argv = _args(tiny_files, one_image, tmp_path / "out", "--respace_steps", "2")
    argv[3] = str(tmp_path / "w.safetensors")
    assert sample_ddib.main(argv) == 0
    assert (tmp_path / "out" / "a.png").is_file()


# --- the script: a messy folder, collisions, reruns --------------------------------------------------

def test_messy_folder_end_to_end(tiny_files, tmp_path, capsys):
    inp = tmp_path / "in"
    (inp / "nested" / "deeper").mkdir(parents=True)
    bad = _bad_files(inp)
    _save_modes(inp / "nested")
    Image.fromarray(_rgb(4)).save(inp / "a.jpg")
    Image.fromarray(_rgb(5)).save(inp / "a.png")
    Image.fromarray(_rgb(6)).save(inp / "nested" / "deeper" / "name with spaces.v1.ünï.png")
    out = tmp_path / "out"
    assert sample_ddib.main(_args(tiny_files, inp, out, "--respace_steps", "2", "--micro_batch", "3")) == 0
    captured = capsys.readouterr()
    for name in bad:
        assert sum(name in line for line in captured.err.splitlines() if "warning" in line) == 1, name
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png") if "_sources" not in p.parts)
    assert "a.jpg.png" in written and "a.png.png" in written and "good.png" in written
    assert "nested/deeper/name with spaces.v1.ünï.png" in written
    assert len(written) == 3 + 1 + 7
    for p in out.rglob("*.png"):
        with Image.open(p) as img:
            assert img.size == (SIZE, SIZE)
    assert f"translated 11, skipped {len(bad)}, failed 0" in captured.out
    rows = (out / "failures.csv").read_text().splitlines()
    assert rows[0] == "path,reason" and len(rows) == 1 + len(bad)

    os.remove(out / "good.png")
    assert sample_ddib.main(_args(tiny_files, inp, out, "--respace_steps", "2")) == 0
    captured = capsys.readouterr()
    assert "skipping 10 input(s) whose output already exists" in captured.out
    assert "translated 1," in captured.out

    before = (out / "a.jpg.png").stat().st_mtime_ns
    assert sample_ddib.main(_args(tiny_files, inp, out, "--respace_steps", "2", "--overwrite")) == 0
    captured = capsys.readouterr()
    assert "already exists" not in captured.out and "translated 11," in captured.out
    assert (out / "a.jpg.png").stat().st_mtime_ns > before


# --- numerics ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_deterministic_same_bits_for_any_micro_batch_and_process_count(tiny_files, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    for i in range(5):
        Image.fromarray(_rgb(10 + i, (40, 36))).save(inp / f"{i}.png")
    outputs = {}
    for tag, extra, launcher in [("mb1", ["--micro_batch", "1"], []),
                                 ("mb5", ["--micro_batch", "5"], []),
                                 ("2proc", ["--micro_batch", "2"], ["-m", "accelerate.commands.launch", "--cpu",
                                                                    "--num_processes", "2", "--num_machines", "1",
                                                                    "--mixed_precision", "no",
                                                                    "--dynamo_backend", "no"])]:
        cmd = [sys.executable, *launcher, str(ROOT / "sample_ddib.py"),
               *_args(tiny_files, inp, tmp_path / tag, "--respace_steps", "4", "--deterministic", *extra)]
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        outputs[tag] = {p.name: p.read_bytes() for p in (tmp_path / tag).glob("*.png")}
    assert len(outputs["mb1"]) == 5
    assert outputs["mb1"] == outputs["mb5"] == outputs["2proc"]


class _Fixed:
    """A bridge from class 1 to class 2 of one batch; returns (images, ok)."""

    def __init__(self, bridge):
        self.bridge = bridge

    def translate(self, x, paths):
        latents, ok_a = self.bridge.invert(x, [1] * len(x))
        out, ok_b = self.bridge.generate(latents, [2] * len(x), [p.as_posix() for p in paths])
        return out, ok_a & ok_b


def _bridge(model, eta=0.0, seed=0, **kw):
    model = model if isinstance(model, ADMNetwork) else ADMNetwork(model)
    return _Fixed(Bridge(model_A=model, model_B=model, alphas_cumprod=alphas_cumprod("linear", 1000),
                         sampling=Sampling(steps=4, eta=eta, seed=seed), device=torch.device("cpu"), **kw))


def test_eta_noise_depends_on_path_not_batch():
    model = randomize(UNetModel(**TINY_CONFIG["model"])).eval()
    x = torch.rand(3, 3, SIZE, SIZE) * 2 - 1
    paths = [Path("a.png"), Path("b/c.png"), Path("d.png")]
    bridge = _bridge(model, eta=1.0, seed=7)
    together, ok = bridge.translate(x, paths)
    alone, _ = bridge.translate(x[1:2], paths[1:2])
    assert ok.all()
    assert (together[1] - alone[0]).abs().max() < 1e-4
    other_seed, _ = _bridge(model, eta=1.0, seed=8).translate(x[1:2], paths[1:2])
    assert (other_seed[0] - alone[0]).abs().max() > 1e-2
    # the same image under two names gets two noise streams: every image has its own
    twins, _ = bridge.translate(x[:1].repeat(2, 1, 1, 1), [Path("x.png"), Path("y.png")])
    assert (twins[0] - twins[1]).abs().max() > 1e-2


class _Overflowing(ADMNetwork):
    """A real network whose output overflows to inf, as a 16-bit network can."""

    def forward(self, x, t, y=None):
        return super().forward(x, t, y) * float("inf")


def test_non_finite_batch_redone_in_float32():
    net = randomize(UNetModel(**TINY_CONFIG["model"])).eval()
    x = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    warnings = []
    bridge = _bridge(_Overflowing(net), low_precision=True, fallback=lambda: (net, net, None),
                     warn=warnings.append)
    out, ok = bridge.translate(x, [Path("a"), Path("b")])
    assert ok.all() and torch.isfinite(out).all()
    assert any("redoing them in float32" in w for w in warnings)
    reference, _ = _bridge(net).translate(x, [Path("a"), Path("b")])
    assert torch.equal(out, reference)


def test_non_finite_output_is_failed_not_written(tiny_files, one_image, tmp_path, capsys):
    state = torch.load(tiny_files["weights"], weights_only=True)
    state["out.2.bias"] = torch.full_like(state["out.2.bias"], 3e38)  # finite weights, an overflowing output
    torch.save(state, tmp_path / "nan.pt")
    argv = _args(tiny_files, one_image, tmp_path / "out", "--respace_steps", "2")
    argv[3] = str(tmp_path / "nan.pt")
    assert sample_ddib.main(argv) == 1
    captured = capsys.readouterr()
    assert "failed a.png: the translation to class 2 is not finite" in captured.err
    assert not (tmp_path / "out" / "a.png").exists()
    assert "failed: the translation to class 2 is not finite" in (tmp_path / "out" / "failures.csv").read_text()


class _OutOfMemoryAboveOne(ADMNetwork):
    """Raises the real out-of-memory error type for batches above one image, as a small GPU would."""

    def forward(self, x, t, y=None):
        if len(x) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return super().forward(x, t, y)


def test_out_of_memory_splits_batch():
    net = randomize(UNetModel(**TINY_CONFIG["model"])).eval()
    x = torch.rand(3, 3, SIZE, SIZE) * 2 - 1
    warnings = []
    out, ok = _bridge(_OutOfMemoryAboveOne(net), warn=warnings.append).translate(x, [Path(c) for c in "abc"])
    assert ok.all() and len(warnings) == 1 and "out of memory" in warnings[0]
    for i in range(3):
        single, _ = _bridge(net).translate(x[i:i + 1], [Path("x")])
        assert (out[i] - single[0]).abs().max() < 1e-5


# --- interruption ------------------------------------------------------------------------------------

def _slow_run(tiny_files, tmp_path, n=12):
    inp = tmp_path / "in"
    inp.mkdir(exist_ok=True)
    for i in range(n):
        Image.fromarray(_rgb(20 + i)).save(inp / f"{i:02d}.png")
    argv = _args(tiny_files, inp, tmp_path / "out", "--respace_steps", "6", "--micro_batch", "1")
    return subprocess.Popen([sys.executable, str(ROOT / "sample_ddib.py"), *argv], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), argv


def _wait_for_outputs(out: Path, proc, count=1, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if out.is_dir() and len(list(out.glob("*.png"))) >= count:
            return
        time.sleep(0.05)
    raise AssertionError("the run wrote nothing in time")


def _all_pngs_complete(out: Path):
    for p in out.rglob("*"):
        if p.suffix == ".png":
            with Image.open(p) as img:
                img.load()  # every .png is whole (a SIGKILL may leave only *.ddib-tmp behind)
                assert img.size == (SIZE, SIZE)


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 130), (signal.SIGKILL, -9)])
def test_interrupt_then_rerun(tiny_files, tmp_path, sig, code):
    proc, argv = _slow_run(tiny_files, tmp_path)
    out = tmp_path / "out"
    _wait_for_outputs(out, proc, count=2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    if sig != signal.SIGKILL:
        assert "interrupted" in err and "Traceback" not in err
    done = len(list(out.glob("*.png")))
    assert 2 <= done < 12
    _all_pngs_complete(out)
    rerun = subprocess.run([sys.executable, str(ROOT / "sample_ddib.py"), *argv], cwd=ROOT,
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"skipping {done} input(s)" in rerun.stdout and f"translated {12 - done}," in rerun.stdout
    assert len(list(out.glob("*.png"))) == 12
    assert not list(out.rglob("*.ddib-tmp"))
    _all_pngs_complete(out)
