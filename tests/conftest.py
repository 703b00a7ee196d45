"""Shared fixtures: the golden guided-diffusion reference and tiny random models."""

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
sys.path.insert(0, str(ROOT))

# No test reaches the model hub: offline, with a Hugging Face cache of the session's own (set before
# anything imports huggingface_hub, which reads these once; subprocesses inherit them).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="ddib-test-hf-")
for _var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
    os.environ.pop(_var, None)
atexit.register(shutil.rmtree, os.environ["HF_HOME"], True)

from models import EncoderUNetModel, UNetModel  # noqa: E402

TINY_CONFIG = {
    "model": {"image_size": 32, "in_channels": 3, "model_channels": 32, "out_channels": 6, "num_res_blocks": 1,
              "attention_resolutions": [16], "channel_mult": [1, 2], "num_classes": 10, "num_head_channels": 16,
              "use_scale_shift_norm": True, "resblock_updown": True},
    "diffusion": {"total_steps": 1000, "beta_schedule": "linear"},
    "classifier": {"image_size": 32, "in_channels": 3, "model_channels": 32, "out_channels": 10,
                   "num_res_blocks": 1, "attention_resolutions": [16], "channel_mult": [1, 2],
                   "num_head_channels": 32, "use_scale_shift_norm": True, "resblock_updown": True,
                   "pool": "attention"},
}


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true",
                     help="also run the slow tests (real accelerate launches, signals, kills); CI runs them")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a real launcher, signal or multi-process run (needs --runslow)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow (as CI does)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def command(base, *extra) -> list:
    """``base`` (flags with values) and ``extra``, as strings; a flag of ``extra`` that ``base`` already
    has replaces its value there (the script refuses a flag given twice)."""
    argv, extra = [str(a) for a in base], [str(a) for a in extra]
    i = 0
    while i < len(extra):
        if extra[i].startswith("-") and extra[i] in argv and i + 1 < len(extra):
            argv[argv.index(extra[i]) + 1] = extra[i + 1]
            i += 2
        else:
            argv.append(extra[i])
            i += 1
    return argv


@pytest.fixture(autouse=True)
def _restore_threads():
    """The script sets one thread per process on the CPU; keep that from leaking across tests."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def golden():
    return torch.load(DATA / "ddib_public_32.pt", weights_only=True)


def _as_feature_sizes(kwargs):
    """The fixture gives attention_resolutions as downsample rates; our constructors take sizes."""
    kwargs = dict(kwargs)
    kwargs["attention_resolutions"] = [kwargs["image_size"] // r for r in kwargs["attention_resolutions"]]
    return kwargs


@pytest.fixture(scope="session")
def golden_unet(golden):
    model = UNetModel(**_as_feature_sizes(golden["unet"]["kwargs"]))
    model.load_state_dict(golden["unet"]["state_dict"], strict=True)
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="session")
def golden_classifier(golden):
    model = EncoderUNetModel(**_as_feature_sizes(golden["classifier"]["kwargs"]))
    model.load_state_dict(golden["classifier"]["state_dict"], strict=True)
    return model.eval().requires_grad_(False)


def randomize(model: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    """Random non-zero weights (the constructors zero some output layers)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model


@pytest.fixture()
def tiny_files(tmp_path):
    """A tiny config and random weights on disk, as a user would have them."""
    return _tiny_files(tmp_path)


@pytest.fixture(scope="session")
def shared_tiny_files(tmp_path_factory):
    """``tiny_files`` made once for the session, for tests that only read them."""
    return _tiny_files(tmp_path_factory.mktemp("tiny"))


def _tiny_files(tmp_path):
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(TINY_CONFIG))
    unet = randomize(UNetModel(**TINY_CONFIG["model"]), seed=1)
    clf = randomize(EncoderUNetModel(**TINY_CONFIG["classifier"]), seed=2)
    torch.save(unet.state_dict(), tmp_path / "unet.pt")
    torch.save(clf.state_dict(), tmp_path / "classifier.pt")
    return {"config": cfg_path, "weights": tmp_path / "unet.pt", "classifier": tmp_path / "classifier.pt",
            "root": tmp_path}
