"""The networks reproduce guided-diffusion's outputs and build every public checkpoint's exact keys."""

import json

import pytest
import torch
import yaml

from conftest import DATA, ROOT
from models import EncoderUNetModel, UNetModel


def test_unet_matches_reference(golden, golden_unet):
    g = golden["unet"]
    with torch.no_grad():
        out = golden_unet(g["x"], g["t"], g["y"])
    assert out.shape == g["out"].shape
    assert (out - g["out"]).abs().max().item() < 1e-4


def test_classifier_matches_reference(golden, golden_classifier):
    g = golden["classifier"]
    with torch.no_grad():
        logits = golden_classifier(g["x"], g["t"])
    assert (logits - g["logits"]).abs().max().item() < 1e-4


def test_unet_requires_labels_iff_conditional(golden, golden_unet):
    g = golden["unet"]
    with pytest.raises(ValueError, match="class labels"):
        golden_unet(g["x"], g["t"])


SHAPES = json.loads((DATA / "checkpoint_shapes.json").read_text())
CASES = [
    ("64x64_diffusion", "model", "64x64_diffusion.pt"),
    ("64x64_diffusion", "classifier", "64x64_classifier.pt"),
    ("128x128_diffusion", "model", "128x128_diffusion.pt"),
    ("128x128_diffusion", "classifier", "128x128_classifier.pt"),
    ("256x256_diffusion", "model", "256x256_diffusion.pt"),
    ("256x256_diffusion", "classifier", "256x256_classifier.pt"),
    ("512x512_diffusion", "model", "512x512_diffusion.pt"),
    ("512x512_diffusion", "classifier", "512x512_classifier.pt"),
    ("256x256_diffusion_uncond", "model", "256x256_diffusion_uncond.pt"),
    ("lsun_256x256_diffusion", "model", "lsun_bedroom.pt / lsun_cat.pt / lsun_horse.pt / lsun_horse_nodropout.pt"),
]


@pytest.mark.parametrize("config,section,checkpoint", CASES)
def test_config_builds_public_checkpoint(config, section, checkpoint):
    cfg = yaml.safe_load((ROOT / "configs" / f"{config}.yaml").read_text())
    cls = UNetModel if section == "model" else EncoderUNetModel
    with torch.device("meta"):
        model = cls(**cfg[section])
    ref = SHAPES[checkpoint]
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert list(shapes) == list(ref["state_dict"]), "key names or order differ"
    assert shapes == ref["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == ref["parameters"]


def test_256_unet_counts():
    """The parameter counts of the public checkpoints, spelled out."""
    ref = SHAPES["256x256_diffusion.pt"]
    assert ref["parameters"] == 553_838_086 and len(ref["state_dict"]) == 567
