"""Image discovery, preprocessing as guided-diffusion does it, and writing."""

import numpy as np
import pytest
from PIL import Image

from utils.images import ImageReadError, center_crop, load_image, save_png, scan_images, to_tensor, to_uint8
from utils.outputs import output_names


def test_scan_is_recursive_and_filters(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ["x.JPG", "a/y.png", "a/b/z.WebP", "a/notes.txt", "a/b/t.tiff"]:
        (tmp_path / name).write_bytes(b"")
    assert [p.as_posix() for p in scan_images(tmp_path)] == ["a/b/t.tiff", "a/b/z.WebP", "a/y.png", "x.JPG"]


def test_same_size_image_passes_unchanged(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    assert np.array_equal(load_image(tmp_path / "a.png", 32), arr)


def test_resize_short_side_and_center_crop():
    img = Image.new("RGB", (300, 100), (10, 20, 30))
    img.paste((250, 0, 0), (0, 0, 100, 100))  # the left third is cropped away
    out = center_crop(img, 64)
    assert out.shape == (64, 64, 3)
    assert (np.abs(out.astype(int) - [10, 20, 30]).max(axis=-1) <= 2).mean() > 0.95


def test_grayscale_becomes_rgb(tmp_path):
    Image.new("L", (40, 50), 77).save(tmp_path / "g.png")
    out = load_image(tmp_path / "g.png", 32)
    assert out.shape == (32, 32, 3) and (out == 77).all()


def test_unreadable_raises_reason(tmp_path):
    (tmp_path / "bad.jpg").write_text("not an image")
    with pytest.raises(ImageReadError, match="not a readable image"):
        load_image(tmp_path / "bad.jpg", 32)


def test_colliding_output_names_kept_apart():
    from pathlib import Path
    names = output_names([Path("a.jpg"), Path("a.png"), Path("b.jpeg"), Path("s/a.jpg")])
    assert names[Path("b.jpeg")] == Path("b.png") and names[Path("s/a.jpg")] == Path("s/a.png")
    assert names[Path("a.jpg")] != names[Path("a.png")]


def test_png_within_one_level_of_reference(tmp_path, golden):
    translated = golden["diffusion"]["translated"]
    for i, image in enumerate(translated):
        save_png(to_uint8(image), tmp_path / f"{i}.png")
        written = np.asarray(Image.open(tmp_path / f"{i}.png")).astype(int)
        expected = ((image + 1) * 127.5).round().permute(1, 2, 0).numpy()
        assert np.abs(written - expected).max() <= 1
    assert not list(tmp_path.glob("*.ddib-tmp"))


def test_uint8_round_trip_is_exact(golden):
    x = to_tensor([a.permute(1, 2, 0).numpy() for a in golden["diffusion"]["x0_uint8"]])
    assert (x - golden["diffusion"]["x0"]).abs().max() == 0
