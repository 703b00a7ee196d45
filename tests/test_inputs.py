"""What goes in: manifests read literally, every pixel type read correctly or refused, and memory bounded
near the decoded image."""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import sample_ddib
from conftest import command


def _img(path: Path, seed=0, size=(32, 32)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
        os.fsencode(path), format="PNG")


def _base(files, inp, out):
    return command(["-c", files["config"], "--weights", files["weights"], "--input_dir", inp, "--save_dir", out,
                    "--respace_steps", 2])


# --- manifests --------------------------------------------------------------------------------------------------

def test_manifest_names_are_literal(shared_tiny_files, tmp_path, capsys):
    inp, out = tmp_path / "in", tmp_path / "out"
    names = ["a.png", " a.png", "back\\slash.png", "line\u2028sep.png", "x.png"]
    for i, name in enumerate(names):
        _img(inp / name, i)
    raw = os.fsdecode(b"caf\xe9.png")  # a name that is not UTF-8
    _img(inp / raw, 9)
    manifest = tmp_path / "m.csv"
    manifest.write_bytes("path, class_A, class_B\n\" a.png\",1,2\nback\\slash.png,1,2\n\"line\u20282sep.png\",1,2\n"
                         .replace("\u20282", "\u2028").encode() + b"caf\xe9.png,1, 3\n")
    assert sample_ddib.main(_base(shared_tiny_files, inp, out) + ["--manifest", str(manifest)]) == 0, \
        capsys.readouterr().err
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png") if p.relative_to(out).parts[0][0] != "_")
    assert written == ["2/ a.png", "2/back\\slash.png", "2/line\u2028sep.png", f"3/{raw}"]  # never a.png nor x.png


# --- pixel types on the command line --------------------------------------------------------------------------

def test_pixel_types_of_files_are_scaled_or_refused(tmp_path):
    from utils.images import ImageReadError, load_image
    grey = np.random.default_rng(1).integers(0, 256, (24, 40), dtype=np.uint8)
    want = load_image(_save(tmp_path / "l.png", Image.fromarray(grey)), 16)
    same = [Image.fromarray(grey.astype(np.float32) / 255, "F"), Image.fromarray(grey.astype(np.uint16) * 257),
            Image.fromarray(grey.astype(np.int32) * 257, "I"), Image.fromarray(grey.astype(np.int32), "I")]
    for i, img in enumerate(same):
        assert np.array_equal(load_image(_save(tmp_path / f"s{i}.tif", img), 16), want), img.mode
    refused = [(Image.fromarray(grey.astype(np.float32), "F"), "float pixels must lie in [0, 1]; these span"),
               (Image.fromarray(grey.astype(np.float32) / 127.5 - 1, "F"), "float pixels must lie in [0, 1]"),
               (Image.fromarray(np.full((8, 8), np.nan, np.float32), "F"), "float pixels hold NaN"),
               (Image.fromarray(np.full((8, 8), 70000, np.int32), "I"), "integer pixels must lie in 0..65535")]
    for i, (img, match) in enumerate(refused):
        with pytest.raises(ImageReadError, match=match.replace("[", "\\[").replace("]", "\\]")):
            load_image(_save(tmp_path / f"r{i}.tif", img), 16)


def _save(path, img):
    img.save(path)
    return path


def test_a_float_tiff_out_of_range_is_skipped_with_its_reason(shared_tiny_files, tmp_path, capsys):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    Image.fromarray(np.full((32, 32), 0.25, np.float32), "F").save(inp / "unit.tif")
    Image.fromarray(np.full((32, 32), 64.0, np.float32), "F").save(inp / "levels.tif")
    assert sample_ddib.main(_base(shared_tiny_files, inp, out) + ["--class_A", "1", "--class_B", "2"]) == 0
    captured = capsys.readouterr()
    assert "translated 1, skipped 1, failed 0" in captured.out
    assert "skipping levels.tif: float pixels must lie in [0, 1]; these span 64..64" in captured.err


# --- memory ------------------------------------------------------------------------------------------------------

def _peak_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def test_a_16_bit_image_loads_within_twice_its_decoded_size(tmp_path):
    from utils.images import load_image
    try:
        with open("/proc/self/clear_refs", "w") as f:  # Linux: restart the peak resident-memory count here
            f.write("5")
    except OSError:
        pytest.skip("needs Linux's /proc/self/clear_refs")
    side = 6000  # 72 MB decoded at 2 bytes a pixel; a few hundred KB as a PNG
    Image.new("I;16", (side, side), 30000).save(tmp_path / "big.png")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _peak_mb()
    out = load_image(tmp_path / "big.png", 64)
    decoded_mb = side * side * 2 / 2 ** 20
    assert _peak_mb() - before < 2 * decoded_mb  # was 13 times: float64 copies, an EXIF copy, an RGB copy
    assert (out == round(30000 / 65535 * 255)).all()
