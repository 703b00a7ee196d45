"""diffusers models in the bridge, on tiny random models saved with ``save_pretrained``: translated
through the command line (without -c) and the API, compared with DDIM written out from its formulas
over the same diffusers modules (loaded here by diffusers, not through the tool), and generation from
a given latent compared with diffusers' own DDIMScheduler loop. Random networks are no denoisers:
their output layers are scaled down and the bridge stops at t = 300, so images stay in range and a
level means something (each comparison also checks how much of the image is unsaturated)."""

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT

diffusers = pytest.importorskip("diffusers")
from diffusers import (AutoencoderKL, DDIMScheduler, DDPMPipeline, DiTPipeline,  # noqa: E402
                       DiTTransformer2DModel, UNet2DModel)

import sample_ddib  # noqa: E402
from ddib import DDIB  # noqa: E402
from utils.errors import UserError  # noqa: E402

SIZE = 16
STEPS, T_END = 4, 300
TS = [0, 100, 200, 300]  # what --respace_steps 4 --t_end 300 visits: uniform over [0, t_end]
LEVELS = 2  # outputs agree within two levels of 255
ANIMALS = ["cat", "dog", "tiger", "lion", "fox", "owl", "bee", "eel", "yak", "emu"]


# --- tiny random models, saved as diffusers saves them --------------------------------------------------
def _unet(seed: int, num_classes=None) -> UNet2DModel:
    torch.manual_seed(seed)
    unet = UNet2DModel(sample_size=SIZE, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"), attention_head_dim=8,
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), num_class_embeds=num_classes)
    with torch.no_grad():
        unet.conv_out.weight.mul_(0.5)
    return unet.eval()


def _scheduler(prediction_type="epsilon", clip_sample=False) -> DDIMScheduler:
    return DDIMScheduler(beta_schedule="linear", prediction_type=prediction_type, clip_sample=clip_sample)


def _dit_pipeline(folder):
    """A DiT pipeline folder as the hub has DiT-XL-2: transformer/ (published as Transformer2DModel with
    ada_norm_zero), vae/ (an AutoencoderKL), scheduler/, and id2label in model_index.json."""
    torch.manual_seed(7)
    dit = DiTTransformer2DModel(sample_size=SIZE // 2, patch_size=2, in_channels=4, out_channels=8, num_layers=2,
                                num_attention_heads=2, attention_head_dim=8, num_embeds_ada_norm=10, norm_num_groups=8)
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        block_out_channels=(8, 16), latent_channels=4, norm_num_groups=8, sample_size=SIZE,
                        layers_per_block=1)
    with torch.no_grad():
        vae.decoder.conv_out.weight.mul_(0.5)
    DiTPipeline(transformer=dit.eval(), vae=vae.eval(), scheduler=_scheduler()).save_pretrained(folder)
    config = json.loads((folder / "transformer" / "config.json").read_text())
    config.update(_class_name="Transformer2DModel", cross_attention_dim=None, use_linear_projection=False)
    (folder / "transformer" / "config.json").write_text(json.dumps(config))
    index = json.loads((folder / "model_index.json").read_text())
    index["id2label"] = {str(i): name for i, name in enumerate(ANIMALS)}
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("diffusers_models")
    DDPMPipeline(unet=_unet(1, num_classes=5), scheduler=_scheduler(clip_sample=True)).save_pretrained(root / "eps")
    _unet(2, num_classes=5).save_pretrained(root / "v")  # a model folder, its scheduler config beside it
    _scheduler("v_prediction").save_config(root / "v")
    for name, seed in (("uncond_a", 3), ("uncond_b", 4)):
        DDPMPipeline(unet=_unet(seed), scheduler=_scheduler()).save_pretrained(root / name)
    _dit_pipeline(root / "dit")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):  # smooth random colours: values well inside the range
        small = rng.integers(40, 216, (4, 4, 3), dtype=np.uint8)
        Image.fromarray(small).resize((SIZE, SIZE), Image.BILINEAR).save(images / f"{i}.png")
    return root


# --- the reference: DDIM from its formulas over the diffusers modules -----------------------------------
def _loaded(folder, part=None):
    """The diffusers module and its scheduler's ᾱ (float32, as diffusers builds it), loaded by diffusers."""
    cls = {"transformer": DiTTransformer2DModel, "vae": AutoencoderKL}.get(part, UNet2DModel)
    module = cls.from_pretrained(folder, subfolder=part).eval()
    return module


def _alphas(folder) -> torch.Tensor:
    sub = "scheduler" if (folder / "scheduler").is_dir() else None
    return DDIMScheduler.from_pretrained(folder, subfolder=sub).alphas_cumprod


def _call(module, x, t, y=None):
    out = module(x, torch.full((len(x),), t, dtype=torch.long), **({} if y is None else {"class_labels": y}))
    return out.sample[:, :x.shape[1]]


def _x0_eps(kind, x, out, a):
    if kind == "epsilon":
        return (x - (1 - a).sqrt() * out) / a.sqrt(), out
    if kind == "v_prediction":
        return a.sqrt() * x - (1 - a).sqrt() * out, a.sqrt() * out + (1 - a).sqrt() * x
    return out, (x - a.sqrt() * out) / (1 - a).sqrt()


@torch.no_grad()
def reference(x, ac, model_A, model_B, kind_A="epsilon", kind_B="epsilon", y_A=None, y_B=None, clip=False,
              cfg=None, null=None, invert=True):
    """DDIM inversion over TS with model A, then DDIM generation with model B down to the image; with
    ``cfg`` the generation mixes the conditional and null-class predictions (two separate calls)."""
    if invert:
        for t, t_next in zip(TS, TS[1:]):
            x0, eps = _x0_eps(kind_A, x, _call(model_A, x, t, y_A), ac[t])
            x = ac[t_next].sqrt() * x0 + (1 - ac[t_next]).sqrt() * eps
    for t, t_prev in zip(TS[::-1], TS[-2::-1] + [None]):
        a, a_prev = ac[t], ac[t_prev] if t_prev is not None else torch.tensor(1.0)
        out = _call(model_B, x, t, y_B)
        if cfg is not None:
            uncond = _call(model_B, x, t, torch.full_like(y_B, null))
            out = uncond + cfg * (out - uncond)
        x0, eps = _x0_eps(kind_B, x, out, a)
        if clip:  # guided-diffusion's DDIM: ε read back from the clipped x₀
            x0 = x0.clamp(-1, 1)
            eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    return x


def _sources(models) -> torch.Tensor:
    arrays = [np.asarray(Image.open(models / "images" / f"{i}.png").convert("RGB")) for i in range(2)]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1


def _levels(x: torch.Tensor) -> np.ndarray:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _outputs(save_dir, sub="") -> np.ndarray:
    return np.stack([np.asarray(Image.open(save_dir / sub / f"{i}.png")) for i in range(2)])


def assert_close_levels(got: np.ndarray, expected: np.ndarray, sources: np.ndarray):
    """Within LEVELS of the reference, on images that are mostly unsaturated and differ from the source."""
    inside = ((expected > 0) & (expected < 255)).mean()
    assert inside > 0.9, f"only {inside:.0%} of the reference is inside the range: the comparison would mean little"
    assert np.abs(expected.astype(int) - sources.astype(int)).max() > 8, "the bridge left the images unchanged"
    diff = np.abs(got.astype(int) - expected.astype(int)).max()
    assert diff <= LEVELS, f"max difference {diff} levels"
    return diff


def _run(models, tmp_path, *argv):
    return sample_ddib.main(["--input_dir", str(models / "images"), "--save_dir", str(tmp_path / "out"),
                             "--respace_steps", str(STEPS), "--t_end", str(T_END), *map(str, argv)])


# --- the four kinds of model through the command line, without -c ------------------------------------
def test_class_conditional_unet_eps_pipeline_folder(models, tmp_path):
    """A DDPM pipeline folder (model_index.json, unet/, scheduler/ with clip_sample): no -c, classes as
    labels, x₀ clipped by default as the scheduler says."""
    assert _run(models, tmp_path, "--weights", models / "eps", "--class_A", 1, "--class_B", 3) == 0
    unet, ac = _loaded(models / "eps", "unet"), _alphas(models / "eps")
    x = _sources(models)
    expected = reference(x, ac, unet, unet, y_A=torch.tensor([1, 1]), y_B=torch.tensor([3, 3]), clip=True)
    assert_close_levels(_outputs(tmp_path / "out"), _levels(expected), _levels(x))
    settings = json.loads((tmp_path / "out" / "_ddib" / "settings.json").read_text())
    assert set(settings["--weights"]["files"]) == {"model_index.json", "unet/config.json",
                                                   "unet/diffusion_pytorch_model.safetensors",
                                                   "scheduler/scheduler_config.json"}
    assert settings["--clip_x0"] is True and settings["-c"]["family"] == "diffusers"
    # the pipeline's unet/ given alone is the same model: its pipeline's files, by their paths there
    assert sample_ddib.main(["--input_dir", str(models / "images"), "--save_dir", str(tmp_path / "alone"),
                             "--respace_steps", str(STEPS), "--t_end", str(T_END), "--weights",
                             str(models / "eps" / "unet"), "--class_A", "1", "--class_B", "3"]) == 0
    assert np.array_equal(_outputs(tmp_path / "alone"), _outputs(tmp_path / "out"))
    alone = json.loads((tmp_path / "alone" / "_ddib" / "settings.json").read_text())
    assert alone["--weights"] == settings["--weights"]


def test_class_conditional_unet_v_prediction_model_folder(models, tmp_path):
    """A single model folder with scheduler_config.json beside it, v-prediction; CLI and API agree."""
    assert _run(models, tmp_path, "--weights", models / "v", "--class_A", 0, "--class_B", 4) == 0
    unet, ac = _loaded(models / "v"), _alphas(models / "v")
    x = _sources(models)
    expected = reference(x, ac, unet, unet, "v_prediction", "v_prediction", torch.tensor([0, 0]), torch.tensor([4, 4]))
    assert_close_levels(_outputs(tmp_path / "out"), _levels(expected), _levels(x))
    api = DDIB.from_pretrained(models / "v", steps=STEPS, t_end=T_END)
    got = api.translate(x, class_A=0, class_B=4, output="tensor")
    assert (got - expected).abs().max() < 1e-4


def test_two_unconditional_unets(models, tmp_path):
    """The paper's setting: one domain model inverts, another generates; no classes."""
    assert _run(models, tmp_path, "--weights", models / "uncond_a", "--weights_B", models / "uncond_b") == 0
    a, b = _loaded(models / "uncond_a", "unet"), _loaded(models / "uncond_b", "unet")
    x = _sources(models)
    expected = reference(x, _alphas(models / "uncond_a"), a, b)
    assert_close_levels(_outputs(tmp_path / "out"), _levels(expected), _levels(x))


def test_dit_with_vae_and_classifier_free_guidance(models, tmp_path):
    """DiT in its VAE's latent: encoded with the posterior mean times scaling_factor, bridged, decoded;
    the generation guided (scale 3) over all latent channels, the inversion conditional; classes by the
    names in id2label; latents saved as states, recording the family and the codec."""
    assert _run(models, tmp_path, "--weights", models / "dit", "--class_A", "dog", "--class_B", "tiger",
                "--cfg_scale", 3, "--save_latents") == 0
    dit, vae = _loaded(models / "dit", "transformer"), _loaded(models / "dit", "vae")
    ac, sf = _alphas(models / "dit"), vae.config.scaling_factor
    x = _sources(models)
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mean * sf
        z = reference(z, ac, dit, dit, y_A=torch.tensor([1, 1]), y_B=torch.tensor([2, 2]), cfg=3.0, null=10)
        expected = vae.decode(z / sf).sample
    assert_close_levels(_outputs(tmp_path / "out"), _levels(expected), _levels(x))
    saved = torch.load(tmp_path / "out" / "_latents" / "0.pt", weights_only=True)
    assert saved["latent"].shape == (4, SIZE // 2, SIZE // 2)
    assert saved["family"] == "diffusers" and saved["codec"].startswith("vae(AutoencoderKL, scaling_factor=0.18215")
    gallery = (tmp_path / "out" / "index.html").read_text()
    assert "2 tiger" in gallery and "classifier-free, scale 3" in gallery
    # generating again from those latents: the same translation without inverting
    assert sample_ddib.main(["--input_dir", str(models / "images"), "--save_dir", str(tmp_path / "again"),
                             "--weights", str(models / "dit"), "--class_A", "dog", "--class_B", "tiger",
                             "--cfg_scale", "3", "--respace_steps", str(STEPS), "--t_end", str(T_END),
                             "--from_latents", str(tmp_path / "out")]) == 0
    assert np.abs(_outputs(tmp_path / "again").astype(int) - _outputs(tmp_path / "out").astype(int)).max() <= 1
    # many targets from one inversion, another solver and spacing, and the cycle back through the VAE
    assert sample_ddib.main(["--input_dir", str(models / "images"), "--save_dir", str(tmp_path / "many"),
                             "--weights", str(models / "dit"), "--class_A", "dog", "--class_B", "tiger,lion",
                             "--cfg_scale", "3", "--respace_steps", "5", "--solver", "dpm++2m",
                             "--respace_type", "logsnr", "--t_end", "500", "--cycle"]) == 0
    assert _outputs(tmp_path / "many", "2").shape == _outputs(tmp_path / "many", "3").shape == (2, SIZE, SIZE, 3)
    cycle = (tmp_path / "many" / "cycle.csv").read_text().splitlines()
    assert len(cycle) == 5 and all(float(row.split(",")[-1]) > 10 for row in cycle[1:])


# --- against diffusers' own sampler --------------------------------------------------------------------
@torch.no_grad()
def _diffusers_ddim(module, scheduler, z, y=None, cfg=None, null=None, clip_eps=False):
    """diffusers' DDIMScheduler loop as its pipelines run it (DiTPipeline's guidance: [cond, null] batch)."""
    for t in scheduler.timesteps:
        if cfg is None:
            out = _call(module, z, int(t), y)
        else:
            both = _call(module, torch.cat([z, z]), int(t), torch.cat([y, torch.full_like(y, null)]))
            cond, uncond = both.chunk(2)
            out = uncond + cfg * (cond - uncond)
        z = scheduler.step(out, t, z, use_clipped_model_output=clip_eps).prev_sample
    return z


def test_generation_matches_diffusers_ddim_scheduler(models):
    """Generation from a given latent = diffusers' DDIMScheduler on the same timesteps (uniform =
    its 'leading' spacing): DiT with guidance decoded by its VAE, and a v-prediction UNet with x₀
    clipping (diffusers' use_clipped_model_output, which is guided-diffusion's DDIM)."""
    gen = torch.Generator().manual_seed(0)
    dit, vae = _loaded(models / "dit", "transformer"), _loaded(models / "dit", "vae")
    sched = DDIMScheduler.from_pretrained(models / "dit", subfolder="scheduler")
    sched.set_timesteps(5)
    z = torch.randn(2, 4, SIZE // 2, SIZE // 2, generator=gen)
    y = torch.tensor([2, 5])
    expected = vae.decode(_diffusers_ddim(dit, sched, z, y, cfg=4.0, null=10) / vae.config.scaling_factor).sample
    ours = DDIB.from_pretrained(models / "dit", steps=5).generate(z, class_B_per_image=[2, 5], cfg_scale=4.0,
                                                                  output="tensor")
    assert list(sched.timesteps) == [800, 600, 400, 200, 0]
    assert (ours - expected).abs().max() < 1e-4 * max(1.0, expected.abs().max().item())

    unet = _loaded(models / "v")
    sched = DDIMScheduler.from_config({**dict(DDIMScheduler.load_config(models / "v")), "clip_sample": True})
    sched.set_timesteps(5)
    x = torch.randn(2, 3, SIZE, SIZE, generator=gen) * 0.3
    expected = _diffusers_ddim(unet, sched, x, torch.tensor([1, 3]), clip_eps=True)
    ours = DDIB.from_pretrained(models / "v", steps=5, clip_x0=True).generate(x, class_B_per_image=[1, 3],
                                                                              output="tensor")
    assert (ours - expected).abs().max() < 1e-4


def test_every_prediction_type_and_a_schedule_given_as_c(models, tmp_path):
    """ε, v and x₀ ("sample") predictions through the API, on a model folder without a scheduler config
    of its own: the schedule (and prediction type) come from the scheduler config given as -c."""
    folder = tmp_path / "bare"
    shutil.copytree(models / "v", folder, ignore=shutil.ignore_patterns("scheduler_config.json"))
    unet, x = _loaded(folder), _sources(models)
    for kind in ("epsilon", "v_prediction", "sample"):
        _scheduler(kind).save_config(tmp_path / kind)
        bridge = DDIB.from_pretrained(folder, scheduler_config=tmp_path / kind / "scheduler_config.json",
                                      steps=STEPS, t_end=T_END)
        got = bridge.translate(x, class_A=2, class_B=0, output="tensor")
        expected = reference(x, _alphas(tmp_path / kind), unet, unet, kind, kind, torch.tensor([2, 2]),
                             torch.tensor([0, 0]))
        assert_close_levels(_levels(got), _levels(expected), _levels(x))
    with pytest.raises(UserError, match="has no scheduler_config.json"):
        DDIB.from_pretrained(folder)
    with pytest.raises(UserError, match="has its own scheduler config.*drop -c"):
        DDIB.from_pretrained(models / "v", scheduler_config=tmp_path / "sample" / "scheduler_config.json")


def test_hub_id_from_the_cache_offline(models):
    """A hub id resolves through huggingface_hub's cache (the tests run with HF_HUB_OFFLINE=1 and a
    temporary HF_HOME), here in the google/ddpm-*-256 repositories' layout (model_index.json with the
    UNet's config.json, weights and scheduler_config.json at the top): the same model as its folder.
    An id that is not cached is one clear line."""
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = Path(constants.HF_HUB_CACHE) / "models--tiny--ddpm-eps" / "snapshots" / commit
    shutil.copytree(models / "eps" / "unet", snapshot)
    shutil.copy(models / "eps" / "scheduler" / "scheduler_config.json", snapshot)
    shutil.copy(models / "eps" / "model_index.json", snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text(commit)
    x = _sources(models)
    from_hub = DDIB.from_pretrained("tiny/ddpm-eps", steps=STEPS, t_end=T_END)
    from_folder = DDIB.from_pretrained(models / "eps", steps=STEPS, t_end=T_END)
    assert torch.equal(from_hub.translate(x, class_A=1, class_B=2, output="tensor"),
                       from_folder.translate(x, class_A=1, class_B=2, output="tensor"))
    with pytest.raises(UserError, match="tiny/absent is no folder here, and as a hub id it is not in the Hugging Face cache.*HF_HUB_OFFLINE"):
        DDIB.from_pretrained("tiny/absent")


def test_mistakes_are_one_line(models, tmp_path, capsys):
    """Guidance a model cannot take, clipping a latent, text-conditioned models, a missing file, a
    diffusers config for a checkpoint file."""
    cases = [(["--weights", models / "eps", "--class_A", 1, "--class_B", 2, "--cfg_scale", 2], "--cfg_scale"),
             (["--weights", models / "dit", "--class_A", 1, "--class_B", 2, "--clip_x0"], "--clip_x0 clips"),
             (["--weights", models / "dit", "--class_A", 1, "--class_B", 2, "--cfg_scale", "nan"], "finite"),
             (["--weights", tmp_path / "absent.safetensors"], "file not found"),
             (["--weights", models / "uncond_a", "--weights_B", models / "dit"], "denoise different spaces"),
             (["-c", models / "v" / "scheduler_config.json", "--weights", ROOT / "assets" / "digits_unet.pt",
               "--class_A", 1, "--class_B", 2], "is a diffusers config (DDIMScheduler), not one of this tool's"),
             (["--weights", models / "uncond_a", "--weights_B", models / "uncond_b", "--config_B",
               models / "uncond_b" / "scheduler" / "scheduler_config.json"], "its own scheduler config (")]
    text_model = tmp_path / "sd" / "unet"
    text_model.mkdir(parents=True)
    (text_model / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel", "sample_size": 64}))
    cases.append((["--weights", text_model.parent, "--class_B", 1], "text-conditioned"))
    for argv, message in cases:
        assert _run(models, tmp_path, *argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
        assert "-c" in argv or not re.search(r"[\s(]-c\b", err), err  # a message names the flag given
    assert not (tmp_path / "out").exists()  # refused before anything is written
    with pytest.raises(UserError, match="cfg_scale.*null class"):
        DDIB.from_pretrained(models / "v", steps=2).generate(torch.zeros(1, 3, SIZE, SIZE), class_B=1, cfg_scale=2)


def test_class_names_from_id2label():
    """DiT's id2label lists ImageNet's classes: then ImageNet's names, WordNet ids and synonyms serve,
    even where a few spellings differ; other names become the model's own (see the DiT test)."""
    from utils.classes import imagenet_classes
    from utils.diffusers_loading import _class_names

    imagenet = {str(i): ", ".join(names) for i, (_, names) in enumerate(imagenet_classes())}
    imagenet["5"] = "crampfish, electric ray"  # one class named otherwise
    assert _class_names({"id2label": imagenet}, 1000) is None
    own = {str(i): f"kind {i}" for i in range(1000)}
    assert _class_names({"id2label": own}, 1000)[292] == "kind 292"
    assert _class_names({"id2label": {"0": "a", "1": "a"}}, 2) is None  # not distinct: numbers only
    assert _class_names({}, 10) is None


def test_without_diffusers_installed(models, monkeypatch):
    """diffusers is needed only for diffusers models; without it, one line with the install command."""
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(UserError, match="not installed: pip install -r requirements-diffusers.txt"):
        DDIB.from_pretrained(models / "eps")
    import subprocess  # and the tool's own modules do not import it for other models
    code = ("import sys, sample_ddib, ddib, utils.pipeline, utils.folder, utils.settings, utils.config; "
            "from utils.config import model_config; model_config('configs/digits.yaml', 'assets/digits_unet.pt'); "
            "assert 'diffusers' not in sys.modules")
    from conftest import ROOT
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_guided_diffusion_and_diffusers_models_bridge(models, tmp_path, capsys):
    """An ADM checkpoint inverts and a diffusers UNet generates: their linear schedules (float64 and
    float32 builds) agree within the tolerance and the bridge walks the source's table; a schedule
    that differs is refused."""
    import yaml

    from conftest import randomize
    from diffusions import alphas_cumprod, invert
    from models import UNetModel

    cfg = {"model": {"image_size": SIZE, "in_channels": 3, "model_channels": 32, "out_channels": 3,
                     "num_res_blocks": 1, "attention_resolutions": [], "channel_mult": [1, 2]},
           "diffusion": {"total_steps": 1000, "beta_schedule": "linear"}}
    (tmp_path / "adm.yaml").write_text(yaml.safe_dump(cfg))
    adm = randomize(UNetModel(**cfg["model"]), seed=5, std=0.02).eval()
    torch.save(adm.state_dict(), tmp_path / "adm.pt")
    assert _run(models, tmp_path, "-c", tmp_path / "adm.yaml", "--weights", tmp_path / "adm.pt",
                "--weights_B", models / "uncond_b") == 0
    x = _sources(models)
    with torch.no_grad():
        latents = invert(adm, x, None, alphas_cumprod("linear", 1000), TS)
    expected = reference(latents, _alphas(models / "uncond_b"), None, _loaded(models / "uncond_b", "unet"),
                         invert=False)
    assert_close_levels(_outputs(tmp_path / "out"), _levels(expected), _levels(x))
    other = tmp_path / "scaled"
    shutil.copytree(models / "uncond_b", other)
    sched = json.loads((other / "scheduler" / "scheduler_config.json").read_text())
    (other / "scheduler" / "scheduler_config.json").write_text(json.dumps({**sched, "beta_schedule": "scaled_linear"}))
    assert _run(models, tmp_path, "-c", tmp_path / "adm.yaml", "--weights", tmp_path / "adm.pt",
                "--weights_B", other, "--overwrite") == 2
    assert "differ in their noise schedule" in capsys.readouterr().err


def test_settings_hash_every_file_and_bf16(models, tmp_path, capsys):
    """A rerun into the same folder with other weights in the model folder is refused (each file is
    hashed); bf16 weights on the CPU stay close to float32."""
    folder = tmp_path / "eps"
    shutil.copytree(models / "eps", folder)
    argv = ["--weights", folder, "--class_A", 1, "--class_B", 2]
    assert _run(models, tmp_path, *argv) == 0
    from safetensors.torch import load_file, save_file
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state["conv_out.bias"] = state["conv_out.bias"] + 0.01
    save_file(state, weights, metadata={"format": "pt"})
    assert _run(models, tmp_path, *argv) == 2
    assert "--weights changed" in capsys.readouterr().err
    x = _sources(models)
    full = DDIB.from_pretrained(folder, steps=STEPS, t_end=T_END).translate(x, class_A=1, class_B=2, output="tensor")
    half = DDIB.from_pretrained(folder, steps=STEPS, t_end=T_END, precision="bf16")
    assert half.precision == "bf16"
    got = half.translate(x, class_A=1, class_B=2, output="tensor")
    assert not torch.equal(got, full)  # the weights really are 16 bits wide
    assert 10 * torch.log10(4 / (got - full).pow(2).mean()) > 30  # PSNR in dB over the [-1, 1] range


def test_speed_tool_runs_both_paths_to_the_same_images(tmp_path):
    """tools/dit_speed.py (the comparison with DiTPipeline in docs/speed.md) on a tiny DiT: both paths
    produce the same images from the same latent, so its timings compare like with like."""
    from tools import dit_speed

    assert dit_speed.main(["--preset", "tiny", "--image_size", "32", "--steps", "2", "--repeats", "1",
                           "--batch", "1", "--out", str(tmp_path / "speed.json")]) == 0
    result = json.loads((tmp_path / "speed.json").read_text())
    assert result["max_pixel_diff"] < 1e-4 and set(result["best_s"]) == {"ours", "DiTPipeline"}
