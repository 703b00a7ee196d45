"""The Python API takes only what it understands: every wrong argument is a one-line UserError naming it,
and every pixel type it accepts is read as the files' rules say (or refused)."""

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import ROOT
from ddib import DDIB
from utils.errors import UserError

CONFIG, WEIGHTS, CLASSIFIER = (ROOT / "configs/digits.yaml", ROOT / "assets/digits_unet.pt",
                               ROOT / "assets/digits_classifier.pt")
DIGIT = ROOT / "assets" / "digits" / "3" / "0060.png"


@pytest.fixture(scope="module")
def bridge():
    return DDIB.from_files(CONFIG, WEIGHTS, steps=2, clip_x0=False, device="cpu")


@pytest.fixture(scope="module")
def digit():
    return np.asarray(Image.open(DIGIT).convert("RGB"))


def _refused(fn, match):
    with pytest.raises(UserError) as e:
        fn()
    assert match in str(e.value) and "\n" not in str(e.value), str(e.value)


# --- images -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("images,match", [
    (None, "no images"), ([], "the list is empty"), ((), "the list is empty"),
    (np.zeros((0, 0, 3), np.uint8), "the image is empty"), (np.zeros((0, 0), np.uint8), "the image is empty"),
    (torch.zeros(3, 16), "a tensor image is CHW"), (torch.zeros(16, 16, 3), "channels last?"),
    (torch.zeros(2, 3, 32, 32), "must be 3×16×16"), (torch.zeros(5), "neither one image nor a batch"),
    ({"a": 1}, "got dict"), (5, "got int"), ([5], "image 0: expected a path"),
    ("missing.png", "image not found: missing.png"), ("", "an empty path"), (str(ROOT / "assets"), "is a folder"),
    (torch.full((3, 16, 16), float("nan")), "NaN or inf"), (np.full((16, 16, 3), np.nan), "NaN or inf"),
    (np.full((16, 16, 3), -0.5), "float pixels must lie in [0, 1]; these span -0.5..-0.5"),
    (np.full((16, 16, 3), 200.0), "float pixels must lie in [0, 1]"),
    (np.full((16, 16), 300, np.int32), "integer pixels must lie in 0..255"),
    (np.zeros((16, 16, 3), np.complex64), "are no image"),
    (np.zeros((1, 2, 16, 16, 3), np.uint8), "neither one image"),
    (np.zeros((16, 16, 5), np.uint8), "1 to 4 channels"),
    (torch.zeros(7, 16, 16, dtype=torch.uint8), "1 to 4 channels"),
])
def test_wrong_images_are_one_line_errors(bridge, images, match):
    _refused(lambda: bridge.invert(images, class_A=3), match)


def test_every_pixel_type_reads_as_its_uint8_twin(bridge, digit):
    want = bridge.images_to_tensor(digit)
    grey = np.asarray(Image.fromarray(digit).convert("L"))
    for same in (digit.astype(np.float32) / 255, digit.astype(np.float64) / 255, digit.astype(np.uint16) * 257,
                 digit.astype(np.int64), torch.from_numpy(digit.copy()).permute(2, 0, 1).contiguous(),
                 digit[None], [Image.fromarray(digit)], [digit, digit][:1]):
        assert torch.equal(bridge.images_to_tensor(same), want), type(same)
    from_grey = bridge.images_to_tensor(grey)
    assert torch.equal(bridge.images_to_tensor(Image.fromarray(grey.astype(np.float32) / 255, "F")), from_grey)
    assert torch.equal(bridge.images_to_tensor(grey.astype(np.uint16) * 257), from_grey)
    mask = bridge.images_to_tensor(np.eye(16, dtype=bool))
    assert set(mask.unique().tolist()) == {-1.0, 1.0}  # black and white, not near-black
    clear = np.stack([grey, np.zeros_like(grey)], axis=-1)  # grey + alpha, fully transparent: white
    assert (bridge.images_to_tensor(clear) == 1).all()
    batch = np.stack([digit, digit[::-1]])  # an NHWC uint8 batch
    assert torch.equal(bridge.images_to_tensor(batch), bridge.images_to_tensor([digit, digit[::-1]]))


# --- classes, latents, keys, outputs ---------------------------------------------------------------------------

def test_wrong_classes_latents_keys_and_outputs(bridge, digit):
    latents = bridge.invert([digit, digit], class_A=3)
    _refused(lambda: bridge.invert([digit, digit], class_A=[3]), "class_A: 1 classes for 2 images")
    _refused(lambda: bridge.generate(latents, class_B_per_image=[1, 2, 3]), "class_B_per_image: 3 classes for 2")
    _refused(lambda: bridge.generate(latents, class_B=2, class_B_per_image=[1, 2]), "not both")
    _refused(lambda: bridge.generate(latents, class_B_per_image=2), "expected a list of one class per image")
    _refused(lambda: bridge.generate(latents, class_B=[]), "the list of targets is empty")
    _refused(lambda: bridge.generate(latents, class_B=2, keys=["a"]), "1 keys for 2 images")
    _refused(lambda: bridge.generate(latents, class_B=2, keys="ab"), "expected a list of 2 strings")
    _refused(lambda: bridge.generate(latents, class_B=2, keys=[1, 2]), "every key must be a string")
    _refused(lambda: bridge.generate(latents, class_B=2, output="numpy"), "output must be 'pil' or 'tensor'")
    _refused(lambda: bridge.translate(digit, class_A=3, class_B=2, output="np"), "output must be 'pil' or 'tensor'")
    _refused(lambda: bridge.generate(latents[:, :2], class_B=2), "latents must be N×3×16×16")
    _refused(lambda: bridge.generate(latents.long(), class_B=2), "must be floating point")
    _refused(lambda: bridge.generate(latents * float("nan"), class_B=2), "NaN or inf")
    _refused(lambda: bridge.generate("latents.pt", class_B=2), "expected a tensor")
    _refused(lambda: bridge.generate([], class_B=2), "the list is empty")
    as_list = bridge.generate(list(latents), class_B=2, output="tensor")  # a list of latents is a batch too
    assert torch.equal(as_list, bridge.generate(latents, class_B=2, output="tensor"))
    per_image = bridge.generate(latents, class_B_per_image=[5, 8], output="tensor")
    assert torch.equal(per_image[1], bridge.generate(latents[1], class_B=8, output="tensor")[0])
    assert torch.equal(per_image, bridge.generate(latents, class_B_per_image=torch.tensor([5, 8]), output="tensor"))
    _refused(lambda: bridge.generate([latents[0], latents[0, :, :8]], class_B=2), "CHW tensors of one shape")


def test_a_list_of_targets_means_the_same_in_translate_and_generate(bridge, digit):
    both = bridge.translate(digit, class_A=3, class_B=[5, 8], output="tensor")
    halves = bridge.generate(bridge.invert(digit, class_A=3), class_B=[5, 8], output="tensor")
    assert len(both) == len(halves) == 1 and len(both[0]) == 2
    assert all(torch.equal(a, b) for a, b in zip(both[0], halves[0]))


# --- sampling settings, per call and at load ----------------------------------------------------------------------

@pytest.mark.parametrize("setting,match", [
    ({"steps": 2.5}, "steps must be an integer"), ({"steps": True}, "steps must be an integer"),
    ({"clip_x0": "no"}, "clip_x0 must be True or False"), ({"seed": "abc"}, "seed must be an integer"),
    ({"eta": True}, "eta must be a number"), ({"eta": 2}, "eta must be between 0 and 1"),
    ({"t_end": 2.5}, "t_end must be an integer or None"), ({"respace_type": 3}, "respace_type 3 is unknown"),
    ({"classifier_scale": 5}, "classifier_scale needs a classifier"),
    ({"stepz": 5}, "stepz is not a sampling setting (did you mean steps?)"),
    ({"steps": 1}, "no translation happens"),
])
def test_wrong_sampling_settings(bridge, digit, setting, match):
    _refused(lambda: bridge.translate(digit, class_A=3, class_B=2, **setting), match)
    _refused(lambda: DDIB.from_files(CONFIG, WEIGHTS, device="cpu", **setting), match)


@pytest.mark.parametrize("options,match", [
    ({"micro_batch": 0}, "micro_batch must be a positive integer or 'auto'"), ({"micro_batch": -1}, "got -1"),
    ({"micro_batch": 2.5}, "got 2.5"), ({"micro_batch": "x"}, "got 'x'"), ({"micro_batch": True}, "got True"),
    ({"compile": "maybe"}, "compile must be 'auto', 'on', 'off', True or False"), ({"compile": 1}, "got 1"),
    ({"device": "bogus"}, "device 'bogus' is no device torch knows"), ({"device": 5}, "device: expected"),
    ({"precision": "fp8"}, "precision must be one of"), ({"deterministic": "yes"}, "deterministic must be True"),
    ({"warn": "loud"}, "warn must be a function"), ({"config_B": CONFIG}, "config_B and weights_B go together"),
])
def test_wrong_load_options(options, match):
    _refused(lambda: DDIB.from_files(CONFIG, WEIGHTS, **options), match)


def test_a_device_that_is_not_here():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    _refused(lambda: DDIB.from_files(CONFIG, WEIGHTS, device="cuda"), "has no CUDA GPU")


@pytest.mark.parametrize("config,match", [
    ({}, "the config dict has no 'model' section"), ({"model": {}}, "config section 'model' needs 'image_size'"),
    ([], "expected a path or a config dict"), ("", "config is an empty path"),
    (None, "a checkpoint file needs its config"), ("nope.yaml", "config file not found: nope.yaml"),
])
def test_wrong_configs(config, match):
    _refused(lambda: DDIB.from_files(config, WEIGHTS), match)


def test_a_config_dict_as_the_file_holds_it():
    raw = yaml.safe_load(CONFIG.read_text())
    loaded = DDIB.from_files(raw, WEIGHTS, steps=2, device="cpu")
    assert loaded.image_size == 16
    _refused(lambda: DDIB.from_files(raw, ""), "weights is an empty path")
    _refused(lambda: DDIB.from_files(raw, WEIGHTS, CLASSIFIER, classifier_scale=float("nan")),
             "classifier_scale must be a finite number")
