"""Beyond one model and one target: two-model bridges, K targets per inversion, names, cycles, latents."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import sample_ddib
from conftest import TINY_CONFIG, randomize
from diffusions import alphas_cumprod, generate, invert, respace
from models import UNetModel
from utils.classes import resolve, search
from utils.errors import UserError
from utils.images import load_image, to_tensor, to_uint8
from models import ADMNetwork
from utils.bridge import Bridge, Sampling
from utils.folder import Options, translate_folder
from utils.jobs import Job
from utils.outputs import Layout

SIZE = 32


def _images(root: Path, n=3, sub=""):
    (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        arr = np.random.default_rng(100 + i).integers(0, 256, (SIZE + 8, SIZE + 4, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / sub / f"{i}.png")
    return root


def _model_files(tmp_path, name, seed, **model_changes):
    cfg = yaml.safe_load(yaml.safe_dump(TINY_CONFIG))
    cfg["model"].update(model_changes)
    cfg["model"] = {k: v for k, v in cfg["model"].items() if v is not None}
    if "image_size" in model_changes:
        del cfg["classifier"]
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    torch.save(randomize(UNetModel(**cfg["model"]), seed=seed).state_dict(), tmp_path / f"{name}.pt")
    return tmp_path / f"{name}.yaml", tmp_path / f"{name}.pt", cfg


def _run(*argv):
    return sample_ddib.main([str(a) for a in argv])


def test_two_models_conditional_to_unconditional(tmp_path, capsys):
    cfg_a, w_a, c_a = _model_files(tmp_path, "a", 1)
    cfg_b, w_b, c_b = _model_files(tmp_path, "b", 2, num_classes=None)
    inp = _images(tmp_path / "in", n=2)
    assert _run("-c", cfg_a, "--weights", w_a, "--config_B", cfg_b, "--weights_B", w_b, "--input_dir", inp,
                "--save_dir", tmp_path / "out", "--class_A", 3, "--respace_steps", 3) == 0
    model_a = UNetModel(**c_a["model"]).eval()
    model_a.load_state_dict(torch.load(w_a))
    model_b = UNetModel(**c_b["model"]).eval()
    model_b.load_state_dict(torch.load(w_b))
    ac, ts = alphas_cumprod("linear", 1000), respace("uniform", 1000, 3)
    x0 = to_tensor([load_image(inp / "0.png", SIZE)])
    with torch.no_grad():
        expected = to_uint8(generate(model_b, invert(model_a, x0, 3, ac, ts), None, ac, ts)[0]).astype(int)
        same_model = to_uint8(generate(model_a, invert(model_a, x0, 3, ac, ts), 3, ac, ts)[0]).astype(int)
    written = np.asarray(Image.open(tmp_path / "out" / "0.png")).astype(int)
    assert np.abs(written - expected).max() <= 1
    assert np.abs(written - same_model).max() > 10  # the second model really was used


def test_two_models_must_share_size_and_schedule(tmp_path, capsys):
    cfg_a, w_a, _ = _model_files(tmp_path, "a", 1)
    cfg_b, w_b, _ = _model_files(tmp_path, "b", 2, image_size=64)
    inp = _images(tmp_path / "in", n=1)
    common = ["--weights", w_a, "--weights_B", w_b, "--input_dir", inp, "--save_dir", tmp_path / "out",
              "--class_A", 1, "--class_B", 2]
    assert _run("-c", cfg_a, "--config_B", cfg_b, *common) == 2
    assert "differ in image_size (32 vs 64)" in capsys.readouterr().err
    data = yaml.safe_load(cfg_a.read_text())
    data["diffusion"]["beta_schedule"] = "cosine"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    assert _run("-c", cfg_a, "--config_B", tmp_path / "c.yaml", *common) == 2
    assert "differ in their noise schedule" in capsys.readouterr().err
    assert _run("-c", cfg_a, "--config_B", cfg_a, "--weights", w_a, "--input_dir", inp,
                "--save_dir", tmp_path / "out", "--class_A", 1, "--class_B", 2) == 2
    assert "--config_B and --weights_B go together" in capsys.readouterr().err


class _Counting(ADMNetwork):
    """Counts the images the network is run on."""

    def __init__(self, net):
        super().__init__(net)
        self.images = 0

    def forward(self, x, t, y=None):
        self.images += len(x)
        return super().forward(x, t, y)


def test_k_targets_invert_once(tmp_path):
    net = _Counting(randomize(UNetModel(**TINY_CONFIG["model"])).eval())
    ts = respace("uniform", 1000, 5)
    bridge = Bridge(model_A=net, model_B=net, alphas_cumprod=alphas_cumprod("linear", 1000),
                    sampling=Sampling(steps=5), device=torch.device("cpu"))
    inp = _images(tmp_path / "in", n=3)
    jobs = [Job(Path(f"{i}.png"), 1, [4, 5, 6, 7]) for i in range(3)]
    layout = Layout(tmp_path / "out", {j.rel: j.rel for j in jobs}, grouped=True)
    result = translate_folder(bridge, jobs, inp, layout, Options(micro_batch=8, image_size=SIZE))
    n, k, steps = 3, 4, len(ts)
    assert result.translated == 3
    assert net.images == n * (steps - 1) + k * n * steps  # (1 + K)·N solves, not 2·K·N
    for target in [4, 5, 6, 7]:
        assert sorted(p.name for p in (tmp_path / "out" / str(target)).glob("*.png")) == ["0.png", "1.png", "2.png"]


def test_class_names():
    assert resolve("tiger", 1000) == 292
    assert resolve("n04409515", 1000) == 852
    assert resolve("Persian cat", 1000) == 283
    assert resolve("17", 1000) == 17
    assert 292 in search("tiger") and 3 in search("tiger")
    with pytest.raises(UserError, match="ambiguous: 2 great white shark; 3 tiger shark"):
        resolve("shark", 1000)
    with pytest.raises(UserError, match="unknown class"):
        resolve("qwertyuiop", 1000)
    with pytest.raises(UserError, match="1000 ImageNet classes only"):
        resolve("tiger", 10)


NAMES = ["cat", "dog", "fox", "3", "owl", "elk", "emu", "yak", "gnu", "ant"]


def test_config_class_names_through_the_cli_the_api_and_the_gallery(tmp_path, capsys):
    cfg_path, w, cfg = _model_files(tmp_path, "named", 1)
    cfg["class_names"] = NAMES
    cfg_path.write_text(yaml.safe_dump(cfg))
    inp = tmp_path / "in"
    _images(inp, n=1, sub="dog")
    _images(inp, n=1, sub="Owl")  # a name in another case
    out = tmp_path / "out"
    assert _run("-c", cfg_path, "--weights", w, "--input_dir", inp, "--save_dir", out, "--class_A", "folder",
                "--class_B", "fox,3", "--respace_steps", 2) == 0
    assert all((out / target / source / "0.png").is_file() for target in ("2", "3") for source in ("dog", "Owl"))
    page = (out / "index.html").read_text()
    assert "1 dog → 2 fox, 3; 4 owl → 2 fox, 3" in page  # "3" is label 3's own name: not repeated
    assert _run("-c", cfg_path, "--weights", w, "--input_dir", inp, "--save_dir", tmp_path / "o2",
                "--class_A", "dgo", "--class_B", "fox", "--respace_steps", 2) == 2
    assert "unknown class 'dgo' (did you mean 'dog'?); the model's classes: cat, dog" in capsys.readouterr().err
    from ddib import DDIB
    bridge = DDIB.from_files(cfg_path, w, steps=2)
    by_name = bridge.translate([inp / "dog" / "0.png"], class_A="dog", class_B="owl", output="tensor")
    by_label = bridge.translate([inp / "dog" / "0.png"], class_A=1, class_B=4, output="tensor")
    assert torch.equal(by_name, by_label)


@pytest.mark.parametrize("names,match", [
    (NAMES[:9], "lists 9 names but the model has 10 classes"),
    (NAMES[:9] + ["Cat"], "class_names 0 and 9 are both 'Cat'"),
    (["5"] + NAMES[1:], "class_names\\[0\\] is '5', a number other than its own label 0"),
    (NAMES[:9] + [""], "must be a list of non-empty names"),
    (NAMES[:9] + ["cat, tabby"], "class_names\\[9\\] is 'cat, tabby': ',' and ';' separate several classes"),
])
def test_config_class_names_are_checked(tmp_path, names, match):
    from utils.config import load_config
    cfg_path, _, cfg = _model_files(tmp_path, "named", 1)
    cfg["class_names"] = names
    cfg_path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(UserError, match=match):
        load_config(cfg_path)


def test_list_classes(capsys):
    assert _run("--list_classes", "tiger") == 0
    out = capsys.readouterr().out
    assert " 292  n02129604  tiger, Panthera tigris" in out and "tiger shark" in out


def test_names_folders_grid_and_cycle(tmp_path, capsys):
    cfg, w, _ = _model_files(tmp_path, "imagenet", 1, num_classes=1000)
    state = torch.load(w, weights_only=True)
    state["label_emb.weight"] *= 40  # random weights barely heed the class; the cycle check needs them to
    torch.save(state, w)
    inp = tmp_path / "in"
    _images(inp, n=2, sub="292")
    _images(inp, n=1, sub="n02129165")  # lion, by WordNet id
    (inp / "stray.png").write_bytes((inp / "292" / "0.png").read_bytes())
    out = tmp_path / "out"
    assert _run("-c", cfg, "--weights", w, "--input_dir", inp, "--save_dir", out, "--class_A", "folder",
                "--class_B", "tabby,Persian cat", "--respace_steps", 3, "--save_grid", "--cycle") == 0
    captured = capsys.readouterr()
    assert "skipping stray.png: --class_A folder" in captured.err
    for target in ["281", "283"]:
        assert sorted(p.relative_to(out / target).as_posix() for p in (out / target).rglob("*.png")) == \
            ["292/0.png", "292/1.png", "n02129165/0.png"]
    with Image.open(out / "_grids" / "292" / "0.png") as grid:
        assert grid.size == (3 * SIZE, SIZE)
    rows = list(csv.DictReader(open(out / "cycle.csv")))
    assert len(rows) == 6 and {r["class_A"] for r in rows} == {"292", "291"}
    row = next(r for r in rows if r["path"] == "292/0.png" and r["class_B"] == "283")
    assert abs(float(row["cycle_psnr_db"]) - _cycle_psnr(cfg, w, inp / "292" / "0.png", 292, 283)) < 0.1
    assert "translated 3, skipped 1, failed 0" in captured.out and "cycle PSNR" in captured.out


def _cycle_psnr(cfg_path, weights, image, class_A, class_B, steps=3):
    """A → B → A computed here from the diffusions module: PSNR of the return trip against the source."""
    from utils.images import psnr

    model = UNetModel(**yaml.safe_load(cfg_path.read_text())["model"]).eval()
    model.load_state_dict(torch.load(weights, weights_only=True))
    ac, ts = alphas_cumprod("linear", 1000), respace("uniform", 1000, steps)
    src = load_image(image, SIZE)
    with torch.no_grad():
        there = generate(model, invert(model, to_tensor([src]), class_A, ac, ts), class_B, ac, ts)
        back = generate(model, invert(model, there, class_B, ac, ts), class_A, ac, ts)
    return psnr(to_uint8(back[0]), src, data_range=255.0)


def test_manifest(tmp_path, capsys):
    cfg, w, _ = _model_files(tmp_path, "a", 1)
    inp = _images(tmp_path / "in", n=3)
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,class_A,class_B\n0.png,1,2\n1.png,1,3;4\n1.png,1,5\nmissing.png,1,2\n")
    out = tmp_path / "out"
    assert _run("-c", cfg, "--weights", w, "--input_dir", inp, "--save_dir", out, "--manifest", manifest,
                "--respace_steps", 2) == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png") if "_sources" not in p.parts)
    assert written == ["2/0.png", "3/1.png", "4/1.png", "5/1.png"]
    assert "missing.png" in capsys.readouterr().err
    manifest.write_text("path,class_A,class_B\n0.png,1,99\n")
    assert _run("-c", cfg, "--weights", w, "--input_dir", inp, "--save_dir", out, "--manifest", manifest) == 2
    assert "line 2: class 99 is out of range" in capsys.readouterr().err


def test_latents_round_trip(tmp_path, capsys):
    cfg, w, _ = _model_files(tmp_path, "a", 1)
    inp = _images(tmp_path / "in", n=2)
    common = ["-c", cfg, "--weights", w, "--input_dir", inp, "--class_A", 1, "--respace_steps", 3]
    assert _run(*common, "--save_dir", tmp_path / "first", "--class_B", 2, "--save_latents") == 0
    saved = torch.load(tmp_path / "first" / "_latents" / "0.pt", weights_only=True)
    assert saved["latent"].shape == (3, SIZE, SIZE) and saved["class_A"] == 1
    assert _run(*common, "--save_dir", tmp_path / "direct", "--class_B", 5) == 0

    assert _run(*common, "--save_dir", tmp_path / "regen", "--class_B", 5, "--from_latents", tmp_path / "first") == 0
    for name in ["0.png", "1.png"]:
        assert (tmp_path / "regen" / name).read_bytes() == (tmp_path / "direct" / name).read_bytes()
    capsys.readouterr()
    # latents that no image can use, or none at all: one line, and the save folder is left as it was
    assert _run(*common[:-1], 4, "--save_dir", tmp_path / "bad", "--class_B", 5,
                "--from_latents", tmp_path / "first") == 2
    err = capsys.readouterr().err
    assert "nothing to translate" in err and "made with other timesteps" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "bad").exists()
    assert _run(*common, "--save_dir", tmp_path / "none", "--class_B", 5, "--from_latents", tmp_path / "direct") == 2
    err = capsys.readouterr().err
    assert "holds no latent for the 2 image(s)" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "none").exists()
    (tmp_path / "first" / "_latents" / "1.pt").unlink()  # one usable latent: the other image is skipped
    assert _run(*common, "--save_dir", tmp_path / "part", "--class_B", 5, "--from_latents", tmp_path / "first") == 0
    assert (tmp_path / "part" / "0.png").is_file() and not (tmp_path / "part" / "1.png").exists()
    assert "no saved latent" in capsys.readouterr().err
