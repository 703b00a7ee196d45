"""Configs and checkpoints: what loads, and the errors for what does not."""

import pickle

import pytest
import torch
import yaml

from conftest import ROOT, TINY_CONFIG, randomize
from models import UNetModel
from utils.checkpoints import load_weights, unwrap_state_dict
from utils.config import load_config
from utils.errors import UserError


@pytest.fixture()
def tiny_state():
    return randomize(UNetModel(**TINY_CONFIG["model"])).state_dict()


@pytest.mark.parametrize("wrap", [
    lambda sd: sd,
    lambda sd: {"model": sd},
    lambda sd: {"state_dict": sd, "epoch": 3},
    lambda sd: {"model": {k: torch.zeros_like(v) for k, v in sd.items()}, "ema": sd},
    lambda sd: {"module." + k: v for k, v in sd.items()},
])
def test_checkpoint_wrappers_load(tmp_path, tiny_state, wrap):
    path = tmp_path / "w.pt"
    torch.save(wrap(tiny_state), path)
    model = UNetModel(**TINY_CONFIG["model"])
    load_weights(model, path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, tiny_state[k]), k


def test_mismatch_names_keys(tmp_path, tiny_state):
    state = dict(tiny_state)
    del state["out.2.weight"]
    state["extra.weight"] = torch.zeros(1)
    state["label_emb.weight"] = torch.zeros(5, 128)
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(UserError) as e:
        load_weights(UNetModel(**TINY_CONFIG["model"]), tmp_path / "w.pt")
    msg = str(e.value)
    assert "missing 1 (out.2.weight)" in msg
    assert "unexpected 1 (extra.weight)" in msg
    assert "label_emb.weight (5, 128) vs (10, 128)" in msg


class _Evil:
    def __reduce__(self):
        return (print, ("code ran",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickle_needing_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"model": _Evil()}, f)
    with pytest.raises(UserError, match="refusing to load"):
        load_weights(UNetModel(**TINY_CONFIG["model"]), path)


def test_unwrap_rejects_non_state_dict():
    with pytest.raises(UserError, match="no state_dict"):
        unwrap_state_dict({"epoch": 1, "lr": 0.1})


def _write(tmp_path, data):
    path = tmp_path / "c.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_config_defaults_and_sections(tmp_path):
    cfg = load_config(_write(tmp_path, {"model": {"image_size": 32}}))
    assert cfg["diffusion"] == {"total_steps": 1000, "beta_schedule": "linear"}
    assert cfg["classifier"] is None


@pytest.mark.parametrize("data,match", [
    ({"model": {"image_size": 32, "num_channels": 64}}, r"'num_channels'.*model_channels"),
    ({"model": {"image_size": 32}, "sampler": {}}, "unknown section"),
    ({"model": {"image_size": "32"}}, "must be int"),
    ({"model": {"image_size": 32, "use_scale_shift_norm": "yes"}}, "must be bool"),
    ({"model": {"image_size": 32}, "diffusion": {"beta_schedule": "sqrt"}}, "linear, cosine"),
    ({"diffusion": {}}, "no 'model' section"),
    ("model: [unclosed", "not valid YAML"),
])
def test_config_errors(tmp_path, data, match):
    with pytest.raises(UserError, match=match):
        load_config(_write(tmp_path, data))


def test_shipped_configs_load():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        cfg = load_config(path)
        assert cfg["model"]["image_size"] > 0, path
