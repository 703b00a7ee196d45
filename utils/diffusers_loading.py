"""diffusers models as weights: a pipeline folder, a single model folder or a hub id.

``describe`` reads a folder's JSON files into the config dict ``utils.config.load_config`` returns
for a YAML (family ``diffusers``; the architecture from ``config.json``, the noise schedule from the
scheduler config, the codec from ``vae/``, class names from ``model_index.json``'s ``id2label``), so
the checks, the settings record and two-model bridges treat both kinds of model alike.
``load_network`` and ``load_codec`` then build the modules with diffusers itself. diffusers is
imported only here, and only when a folder or hub id is given.

Layouts understood:
- a pipeline folder: ``model_index.json``, ``unet/`` or ``transformer/``, ``scheduler/``, and ``vae/``
  for a latent model (DiT);
- a model folder: ``config.json`` and ``diffusion_pytorch_model.safetensors`` (or ``.bin``), with a
  ``scheduler_config.json`` beside it, in a sibling ``../scheduler/`` of a pipeline, or given as -c;
- a hub id (``google/ddpm-cat-256``): the files above fetched into huggingface_hub's cache (offline
  with ``HF_HUB_OFFLINE=1``: from the cache alone).
"""

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .errors import UserError, printable

INSTALL = "pip install -r requirements-diffusers.txt"
MODEL_DIRS = ("transformer", "unet")
WEIGHTS = "diffusion_pytorch_model"
SCHEDULER_CONFIG = "scheduler_config.json"
# weight-file suffixes: such a path that does not exist is a missing file, never a hub id
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors", ".bin", ".pkl")
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
# schedulers of other kinds of diffusion (variance-exploding, flow matching, …): no β/ᾱ table to bridge with
FOREIGN_SCHEDULERS = ("ScoreSdeVe", "KarrasVe", "FlowMatch", "EDM", "CMStochastic", "VQDiffusion", "Amused",
                      "CosineDPM")


def require_diffusers():
    """The diffusers module, or one line naming the install command."""
    try:
        import diffusers
    except ImportError:
        raise UserError(f"diffusers models need the diffusers package, which is not installed: {INSTALL}") from None
    diffusers.utils.logging.set_verbosity_error()  # no notes about config keys a model does not use
    diffusers.utils.logging.disable_progress_bar()
    return diffusers


def is_hub_id(text) -> bool:
    """``owner/name`` that is no existing path and does not end like a checkpoint file."""
    text = str(text)
    return (HUB_ID.fullmatch(text) is not None and not Path(text).exists()
            and not text.lower().endswith(CHECKPOINT_SUFFIXES))


def is_diffusers_source(weights) -> bool:
    """Whether ``--weights`` names a diffusers model (a folder or a hub id) rather than a checkpoint file."""
    return weights is not None and (Path(weights).is_dir() or is_hub_id(weights))


# --- where the files are -------------------------------------------------------------------------------
_FETCHED = {}  # hub id → local snapshot folder, once per process


def local_folder(weights) -> Path:
    """The folder holding a diffusers model: the folder itself, or a hub id's snapshot in the cache."""
    if Path(weights).is_dir():
        return Path(weights)
    if not is_hub_id(weights):
        raise UserError(f"--weights: not found: {printable(str(weights))}")
    if weights not in _FETCHED:
        _FETCHED[weights] = _fetch(str(weights))
    return _FETCHED[weights]


def _fetch(repo_id: str) -> Path:
    """The JSON files first (which say what the model is), then the weights it needs: safetensors
    where the repository has them, else .bin. Offline, whatever the cache holds."""
    require_diffusers()
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.utils import logging as hub_logging

    configs = ["model_index.json", "config.json", SCHEDULER_CONFIG, "scheduler/" + SCHEDULER_CONFIG,
               "vae/config.json", "vqvae/config.json"] + [f"{d}/config.json" for d in MODEL_DIRS]
    hub_logging.set_verbosity_error()  # a pattern that matches nothing is a warning there
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=configs))
        layout = find_layout(folder, repo_id)
        for part in filter(None, (layout.model, layout.vae)):
            prefix = "" if part == folder else part.relative_to(folder).as_posix() + "/"
            for suffix in ("safetensors", "bin"):
                if _weight_files(part, required=False):
                    break
                snapshot_download(repo_id, allow_patterns=[f"{prefix}{WEIGHTS}.{suffix}",
                                                            f"{prefix}{WEIGHTS}.{suffix}.index.json",
                                                            f"{prefix}{WEIGHTS}-*.{suffix}"])
    except UserError:
        raise
    except Exception as e:  # huggingface_hub's errors, and the network's
        raise UserError(_hub_problem(repo_id, e, constants.HF_HUB_OFFLINE)) from None
    for part in filter(None, (layout.model, layout.vae)):
        if not _weight_files(part, required=False):
            where = "the Hugging Face cache (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else "the hub"
            raise UserError(f"{repo_id}: no {WEIGHTS}.safetensors or .bin for {part.name}/ in {where}")
    return folder


def _hub_problem(repo_id: str, error: Exception, offline: bool) -> str:
    name = type(error).__name__
    if offline or name in ("LocalEntryNotFoundError", "OfflineModeIsEnabled"):
        return (f"{repo_id} is no folder here, and as a hub id it is not in the Hugging Face cache while the "
                f"hub cannot be reached{' (HF_HUB_OFFLINE is set)' if offline else ''}; download it once where "
                "the network allows, or pass a local folder")
    if name in ("RepositoryNotFoundError", "GatedRepoError"):
        return (f"{repo_id}: no such model on the hub, or it is gated or private (log in with "
                "`hf auth login`); a local folder works too")
    reason = " ".join(str(error).split())[:200] or name
    return f"{repo_id}: cannot fetch it from the hub ({printable(reason)})"


@dataclass
class Layout:
    """Where a diffusers model's parts are: the folder holding them all (a pipeline's, also for its unet/
    or transformer/ given alone), the denoiser's folder, the VAE's (latent models), the scheduler
    config, and the pipeline's model_index.json (or {})."""
    root: Path
    model: Path
    vae: Optional[Path]
    scheduler: Optional[Path]
    index: dict


def find_layout(folder: Path, shown=None) -> Layout:
    """A pipeline folder's parts, or a model folder's (with its pipeline's siblings where it has one)."""
    shown = printable(str(shown or folder))
    index = _read_json(folder / "model_index.json") if (folder / "model_index.json").is_file() else {}
    model = next((folder / d for d in MODEL_DIRS if (folder / d / "config.json").is_file()), None)
    home = folder  # where scheduler/ and vae/ are looked for
    if model is None:
        if not (folder / "config.json").is_file():
            raise UserError(f"{shown} is not a diffusers model: no model_index.json with unet/ or transformer/, "
                            "and no config.json")
        model = folder
        if (folder.parent / "model_index.json").is_file():  # a pipeline's unet/ or transformer/ given alone
            home, index = folder.parent, _read_json(folder.parent / "model_index.json")
    if (home / "vqvae" / "config.json").is_file() and not (home / "vae").is_dir():
        raise UserError(f"{shown}: a VQ autoencoder (vqvae/) is not supported; latent models need an "
                        "AutoencoderKL in vae/")
    vae = home / "vae" if home != model and (home / "vae" / "config.json").is_file() else None
    scheduler = next((p for p in (home / "scheduler" / SCHEDULER_CONFIG, model / SCHEDULER_CONFIG,
                                  home / SCHEDULER_CONFIG) if p.is_file()), None)
    return Layout(home, model, vae, scheduler, index)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"cannot read {printable(str(path))}: {printable(' '.join(str(e).split()), 200)}") from None
    if not isinstance(data, dict):
        raise UserError(f"{printable(str(path))} is not a JSON object")
    return data


def _weight_files(folder: Path, required: bool = True) -> list:
    """The weight files diffusers loads from a model folder: safetensors before .bin, one file or the
    shards an index lists (variants such as .fp16 are not read)."""
    for suffix in ("safetensors", "bin"):
        single, index = folder / f"{WEIGHTS}.{suffix}", folder / f"{WEIGHTS}.{suffix}.index.json"
        if single.is_file():
            return [single]
        if index.is_file():
            shards = sorted(set(_read_json(index).get("weight_map", {}).values()))
            return [index] + [folder / s for s in shards]
    if required:
        raise UserError(f"{printable(str(folder))} has no {WEIGHTS}.safetensors or {WEIGHTS}.bin")
    return []


def model_files(weights) -> dict:
    """Every file a diffusers model is loaded from (configs and weights), by its path in the folder
    that holds them all, for the settings record."""
    layout = find_layout(local_folder(weights))
    files = [layout.root / "model_index.json"] if layout.index and (layout.root / "model_index.json").is_file() \
        else []
    for part in filter(None, (layout.model, layout.vae)):
        files += [part / "config.json"] + _weight_files(part)
    if layout.scheduler is not None:
        files.append(layout.scheduler)
    return {f.relative_to(layout.root).as_posix(): f for f in files}


# --- what the model is ------------------------------------------------------------------------------------
def _model_class(config: dict, where: str) -> str:
    """The diffusers class to load: UNet2DModel, or DiTTransformer2DModel (published as
    Transformer2DModel with ada_norm_zero)."""
    name = config.get("_class_name")
    if name == "UNet2DModel":
        return name
    if name == "DiTTransformer2DModel" or (name == "Transformer2DModel" and config.get("norm_type") == "ada_norm_zero"):
        return "DiTTransformer2DModel"
    hint = " (text-conditioned: it needs a prompt, not a class)" if name and "Condition" in name else ""
    raise UserError(f"{where}: a {printable(str(name))}{hint}; the bridge takes diffusers' UNet2DModel and DiT "
                    "(Transformer2DModel with norm_type ada_norm_zero) models")


def _square(value, key: str, where: str) -> int:
    if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1]:
        value = value[0]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError(f"{where}: '{key}' must be a positive size of square images, got {printable(repr(value), 60)}")
    return value


def _schedule(sched: dict, where: str) -> dict:
    """The ``diffusion`` section of a diffusers scheduler config (the table diffusers builds from it)."""
    from diffusions.schedules import DIFFUSERS_BETA_SCHEDULES, diffusers_alphas_cumprod

    cls = str(sched.get("_class_name", ""))
    if any(name in cls for name in FOREIGN_SCHEDULERS) or not ({"beta_schedule", "trained_betas",
                                                                "num_train_timesteps"} & set(sched)):
        raise UserError(f"{where}: {printable(cls) or 'this scheduler'} is not a discrete variance-preserving "
                        "(DDPM-type) noise schedule; the bridge needs one")
    if sched.get("rescale_betas_zero_snr"):
        raise UserError(f"{where}: rescale_betas_zero_snr ends the schedule at pure noise (ᾱ = 0), where "
                        "inversion has no latent; use the model's schedule without it")
    steps, trained = sched.get("num_train_timesteps", 1000), sched.get("trained_betas")
    section = {"total_steps": steps, "beta_schedule": sched.get("beta_schedule", "linear"),
               "beta_start": sched.get("beta_start", 0.0001), "beta_end": sched.get("beta_end", 0.02),
               "trained_betas": trained, "source": "diffusers"}
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 2:
        raise UserError(f"{where}: num_train_timesteps must be an integer of at least 2, "
                        f"got {printable(repr(steps), 40)}")
    if trained is not None and not (isinstance(trained, list) and len(trained) == steps
                                    and all(isinstance(b, (int, float)) and 0 < b < 1 for b in trained)):
        raise UserError(f"{where}: trained_betas must list num_train_timesteps = {steps} numbers in (0, 1)")
    if trained is None and section["beta_schedule"] not in DIFFUSERS_BETA_SCHEDULES:
        raise UserError(f"{where}: beta_schedule {printable(repr(section['beta_schedule']), 40)} is not supported; "
                        f"use one of {', '.join(DIFFUSERS_BETA_SCHEDULES)} or trained_betas")
    for key in ("beta_start", "beta_end"):
        if not isinstance(section[key], (int, float)) or not 0 < section[key] < 1:
            raise UserError(f"{where}: {key} must be a number in (0, 1), got {printable(repr(section[key]), 40)}")
    section["beta_start"], section["beta_end"] = float(section["beta_start"]), float(section["beta_end"])
    table = diffusers_alphas_cumprod(**{k: section[k] for k in ("beta_schedule", "total_steps", "beta_start",
                                                                 "beta_end", "trained_betas")})
    if not (table.isfinite().all() and (table > 0).all() and (table < 1).all()):
        raise UserError(f"{where}: the schedule's ᾱ leaves (0, 1); check beta_start, beta_end and trained_betas")
    return section


def _scheduler_config(layout: Layout, schedule_from, shown: str, flag: str = "-c") -> tuple:
    """(scheduler config, where it came from): the folder's own, or ``flag``'s (-c, --config_B) when the
    folder has none."""
    if schedule_from is not None:
        if layout.scheduler is not None:
            raise UserError(f"{shown} has its own scheduler config ({printable(str(layout.scheduler))}); drop {flag}")
        path = Path(schedule_from)
        path = path / SCHEDULER_CONFIG if path.is_dir() else path
        if path.suffix.lower() != ".json" or not path.is_file():
            raise UserError(f"{flag} for a diffusers model folder is its scheduler's {SCHEDULER_CONFIG}, "
                            f"got {printable(str(schedule_from))}")
        return _read_json(path), printable(str(path))
    if layout.scheduler is None:
        raise UserError(f"{shown} has no {SCHEDULER_CONFIG} (in scheduler/ or beside config.json): give the "
                        f"schedule the model was trained with as {flag} {SCHEDULER_CONFIG}")
    return _read_json(layout.scheduler), printable(str(layout.scheduler))


def _public(config: dict) -> dict:
    """A config.json without diffusers' bookkeeping keys (version, source path)."""
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _codec(layout: Layout, in_channels: int, shown: str):
    """The VAE's description and its downscaling factor, or (None, 1) for a pixel model."""
    if layout.vae is None:
        return None, 1
    vae = _read_json(layout.vae / "config.json")
    if vae.get("_class_name") != "AutoencoderKL":
        raise UserError(f"{shown}: the autoencoder in vae/ is a {printable(str(vae.get('_class_name')))}; "
                        "latent models need an AutoencoderKL")
    if vae.get("latent_channels", 4) != in_channels:
        raise UserError(f"{shown}: the VAE has {vae.get('latent_channels', 4)} latent channels, the denoiser "
                        f"takes {in_channels}")
    scale, shift = vae.get("scaling_factor", 0.18215), vae.get("shift_factor")
    if not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise UserError(f"{shown}: vae/config.json's scaling_factor must be a positive number, got {scale!r}")
    return ({"class": "AutoencoderKL", "config": _public(vae), "scaling_factor": float(scale),
             "shift_factor": None if shift is None else float(shift)},
            2 ** (len(vae.get("block_out_channels", [64])) - 1))


def _class_names(index: dict, num_classes: Optional[int]) -> Optional[list]:
    """The model's class names from ``id2label``, unless they are ImageNet's (then the ImageNet names,
    WordNet ids and synonyms of ``utils.classes`` serve: DiT's list agrees with ours on the first name of
    almost every class, and spellings differ on a few), or unusable as distinct names."""
    from .classes import IMAGENET_CLASSES, imagenet_classes
    from .config import check_class_names

    id2label = index.get("id2label")
    if not isinstance(id2label, dict) or num_classes is None:
        return None
    names = [str(id2label.get(str(i), "")).strip() for i in range(num_classes)]
    if num_classes == IMAGENET_CLASSES:
        same = sum(name.split(",")[0].strip().lower() == own[0].lower()
                   for name, (_, own) in zip(names, imagenet_classes()))
        if same >= 0.95 * IMAGENET_CLASSES:
            return None
    try:
        return check_class_names(names, num_classes)
    except UserError:
        return None


def describe(weights, schedule_from=None, flag: str = "-c") -> dict:
    """A diffusers model (folder or hub id) as a config dict: family ``diffusers``; ``model`` with the
    class, config.json, the image size read and written, the channels and size of the denoised state,
    classes, null class and prediction type; ``diffusion`` the schedule; ``codec`` the VAE or None.
    ``schedule_from``: a scheduler config for a folder that has none, given as ``flag``."""
    from diffusions.denoisers import PREDICTION_TYPES

    require_diffusers()
    shown = printable(str(weights))
    layout = find_layout(local_folder(weights), weights)
    config = _read_json(layout.model / "config.json")
    where = printable(str(layout.model / "config.json"))
    cls = _model_class(config, where)
    sched, sched_where = _scheduler_config(layout, schedule_from, shown, flag)
    prediction = sched.get("prediction_type") or ("sample" if sched.get("predict_epsilon") is False else "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise UserError(f"{sched_where}: prediction_type {printable(repr(prediction), 40)} is not one of "
                        f"{', '.join(PREDICTION_TYPES)}")
    if cls == "UNet2DModel":
        size = _square(config.get("sample_size"), "sample_size", where)
        channels, out = config.get("in_channels", 3), config.get("out_channels", 3)
        if config.get("class_embed_type") is not None:
            raise UserError(f"{where}: class_embed_type {config['class_embed_type']!r} embeds numbers, not class "
                            "labels; the bridge takes num_class_embeds classes")
        if config.get("time_embedding_type", "positional") not in ("positional", "learned"):
            raise UserError(f"{where}: time_embedding_type {config['time_embedding_type']!r} belongs to a "
                            "variance-exploding model; the bridge needs a DDPM-type one")
        num_classes, null = config.get("num_class_embeds"), None
    else:
        size = _square(config.get("sample_size", 32), "sample_size", where)
        channels = config.get("in_channels", 4)
        out = config.get("out_channels") or channels
        num_classes = config.get("num_embeds_ada_norm", 1000)
        null = num_classes  # DiT's label table has one more row, the null class, for classifier-free guidance
    codec, scale = _codec(layout, channels, shown)
    if cls != "UNet2DModel" and codec is None:
        raise UserError(f"{shown}: a DiT denoises a VAE's latent, and no vae/ was found beside it")
    cfg = {"family": "diffusers",
           "model": {"class": cls, "config": _public(config), "image_size": size * scale, "in_channels": channels,
                     "state_size": size, "out_channels": out, "num_classes": num_classes, "null_class": null,
                     "prediction_type": prediction, "clip_sample": bool(sched.get("clip_sample", False))},
           "diffusion": _schedule(sched, sched_where), "codec": codec, "classifier": None}
    names = _class_names(layout.index, num_classes)
    if names:
        cfg["class_names"] = names
    return cfg


# --- building the modules ------------------------------------------------------------------------------
def _from_pretrained(cls, folder: Path, what: str):
    import torch

    try:
        return cls.from_pretrained(str(folder), dtype=torch.float32).eval().requires_grad_(False)
    except Exception as e:  # diffusers' loaders fail in many ways on damaged or mismatched files
        reason = " ".join(str(e).split())[:240] or type(e).__name__
        raise UserError(f"cannot load the {what} from {printable(str(folder))}: {printable(reason)}") from None


def load_network(cfg: dict, weights, device="cpu"):
    """The denoiser of a described diffusers model, built and loaded by diffusers, as an EpsNetwork."""
    from models.diffusers_models import DiffusersNetwork

    diffusers = require_diffusers()
    layout = find_layout(local_folder(weights), weights)
    model = cfg["model"]
    module = _from_pretrained(getattr(diffusers, model["class"]), layout.model, "model")
    _check_finite(module, layout.model)
    null = model["null_class"]
    if null is not None and _label_rows(module) != null + 1:
        null = None  # trained without label dropout: no null class to guide with
    net = DiffusersNetwork(module, model["in_channels"], model["state_size"], model["num_classes"],
                           model["out_channels"], model["prediction_type"], null, cfg.get("class_names"))
    return net.to(device).eval().requires_grad_(False)


def _label_rows(module) -> Optional[int]:
    """Rows of DiT's class-label table (classes, plus one for the null class when trained with dropout)."""
    import torch

    for name, sub in module.named_modules():
        if name.endswith("class_embedder.embedding_table") and isinstance(sub, torch.nn.Embedding):
            return sub.num_embeddings
    return None


def _check_finite(module, folder: Path) -> None:
    from .checkpoints import nonfinite

    bad = nonfinite(module.named_parameters())
    if bad:
        raise UserError(f"the weights in {printable(str(folder))} hold NaN or inf values ({len(bad)} tensors, "
                        f"first {printable(bad[0], 80)})")


def load_codec(cfg: dict, weights, device="cpu"):
    """The image ↔ state codec of a described model: its VAE, or the identity for a pixel model."""
    from models.codec import IDENTITY, VAECodec

    if cfg.get("codec") is None:
        return IDENTITY
    diffusers = require_diffusers()
    layout = find_layout(local_folder(weights), weights)
    vae = _from_pretrained(diffusers.AutoencoderKL, layout.vae, "VAE")
    _check_finite(vae, layout.vae)
    return VAECodec(vae.to(device), cfg["codec"]["scaling_factor"], cfg["codec"]["shift_factor"])

