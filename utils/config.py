"""YAML configs: one file per model, validated against the network constructors.

``family`` (optional, default ``adm``) names the network family (``models.FAMILIES``); ``model`` holds
exactly the keys that family takes (for ``adm`` the keyword arguments of ``models.UNetModel``),
``classifier`` (optional) those of ``models.EncoderUNetModel``, ``diffusion`` the noise schedule, and
``class_names`` (optional) one name per class label, so classes can be given by name.
Omitted keys take the constructors' defaults; unknown keys and wrong types are errors that name them.
"""

import difflib
import math
from pathlib import Path

import yaml

from diffusions.schedules import BETA_SCHEDULES
from models import FAMILIES, EncoderUNetModel
from models.network import constructor_params

from .errors import UserError, printable

DIFFUSION_DEFAULTS = {"total_steps": 1000, "beta_schedule": "linear"}
SECTIONS = ("family", "model", "diffusion", "classifier", "class_names")
DEFAULT_FAMILY = "adm"
# guided-diffusion command-line flags users carry over, and what our configs call them
_FLAG_HINTS = {"num_channels": "model_channels", "class_cond": "num_classes", "learn_sigma": "out_channels",
               "diffusion_steps": "diffusion.total_steps", "noise_schedule": "diffusion.beta_schedule",
               "classifier_width": "model_channels", "classifier_depth": "num_res_blocks",
               "classifier_pool": "pool", "timestep_respacing": "--respace_type/--respace_steps",
               "use_fp16": "--mixed_precision", "use_checkpoint": "nothing (sampling needs no checkpointing)"}


def _expected_types(default):
    if isinstance(default, bool):
        return (bool,)
    if isinstance(default, int):
        return (int,)
    if isinstance(default, float):
        return (int, float)
    if isinstance(default, (tuple, list)):
        return (list, tuple)
    if isinstance(default, str):
        return (str,)
    return None


_TYPES = {  # parameters whose default does not say their type
    "image_size": (int,), "num_classes": (int, type(None)), "attention_resolutions": (list, tuple),
    "channel_mult": (list, tuple), "dropout": (int, float), "total_steps": (int,), "beta_schedule": (str,),
}


# sizes that must be positive (others, such as num_head_channels, use -1 for "unset")
_POSITIVE = ("image_size", "in_channels", "model_channels", "out_channels", "num_res_blocks", "num_heads",
             "total_steps", "channel_mult", "attention_resolutions", "num_classes")


def _check_ranges(name: str, values: dict) -> None:
    """Refuse sizes that would build a nonsense network (or fail deep inside a constructor)."""
    for key in _POSITIVE:
        value = values.get(key)
        items = value if isinstance(value, (list, tuple)) else [value]
        if value is not None and not all(isinstance(v, (int, float)) and v > 0 for v in items):
            raise UserError(f"config key '{name}.{key}' must be positive, got {printable(repr(value), 80)}")
    if "channel_mult" in values and not values["channel_mult"]:
        raise UserError(f"config key '{name}.channel_mult' must list at least one multiplier")
    if "dropout" in values and not 0 <= values["dropout"] < 1:
        raise UserError(f"config key '{name}.dropout' must be in [0, 1), got {values['dropout']!r}")


def _check_section(name: str, values, params: dict, required=("image_size",)) -> dict:
    """Validate one section against ``params``, its allowed keys and their defaults."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise UserError(f"config section '{name}' must be a mapping of keys to values, got {type(values).__name__}")
    unknown = [k for k in values if k not in params]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(str(k), params, n=1)
            if k in _FLAG_HINTS:
                hints.append(f"{k!r} (guided-diffusion's flag; here use {_FLAG_HINTS[k]})")
            else:
                hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise UserError(f"unknown key(s) in config section '{name}': {', '.join(hints)}; "
                        f"allowed: {', '.join(params)}")
    for key in required:
        if key not in values:
            raise UserError(f"config section '{name}' needs '{key}'")
    for key, value in values.items():
        types = _TYPES.get(key) or _expected_types(params[key])
        ok = types is None or (isinstance(value, types) and not (isinstance(value, bool) and bool not in types))
        if ok and isinstance(value, (list, tuple)):
            ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        if not ok:
            want = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise UserError(f"config key '{name}.{key}' must be {want}, got {printable(repr(value), 80)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"config key '{name}.{key}' must be finite, got {value!r}")
    _check_ranges(name, values)
    return dict(values)


class _PlainLoader(yaml.SafeLoader):
    """Safe YAML without anchors and aliases: a config needs none, and aliases nest into bombs."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.events.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in a config",
                                              event.start_mark)
        return super().compose_node(parent, index)


def check_class_names(names, num_classes) -> list:
    """``class_names``: one distinct, non-empty name per label. A name that is a number must be its own
    label, or ``--class_B 2`` could mean two different classes; a name holds no ',' or ';', which
    separate several classes in ``--class_B`` and the manifest."""
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) and n.strip() for n in names):
        raise UserError("config section 'class_names' must be a list of non-empty names, one per class label")
    if num_classes is None or len(names) != num_classes:
        raise UserError(f"config section 'class_names' lists {len(names)} names but the model has "
                        f"{num_classes or 'no'} classes (model.num_classes)")
    seen = {}
    for label, name in enumerate(names):
        if name.lower() in seen:
            raise UserError(f"class_names {seen[name.lower()]} and {label} are both {printable(repr(name), 60)}")
        seen[name.lower()] = label
        if name.strip().lstrip("-").isdigit() and int(name) != label:
            raise UserError(f"class_names[{label}] is {name!r}, a number other than its own label {label}: "
                            "a class given as a number would be ambiguous")
        if "," in name or ";" in name:
            raise UserError(f"class_names[{label}] is {printable(repr(name), 60)}: ',' and ';' separate several "
                            "classes in --class_B and the manifest, so no name can hold them")
    return list(names)


def load_config(path) -> dict:
    """Read and validate a config file; returns {'family': str, 'model': {...}, 'diffusion': {...},
    'classifier': {...}|None} and, when the file gives them, 'class_names': [...]."""
    if not isinstance(path, (str, Path)) or not str(path).strip():
        raise UserError(f"a config is a YAML file's path or a dict; got {printable(repr(path), 80)}")
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {printable(str(path))}")
    try:
        raw = yaml.load(path.read_bytes(), Loader=_PlainLoader)  # bytes: YAML's own UTF-8/16 BOM detection
    except yaml.YAMLError as e:
        raise UserError(f"config {path} is not valid YAML: {printable(' '.join(str(e).split()), 300)}") from None
    except (OSError, RecursionError) as e:
        raise UserError(f"cannot read config {path}: {printable(str(e), 200)}") from None
    return check_config(raw, f"config {path}")


def check_config(raw, where: str = "the config") -> dict:
    """Validate a config's sections (as YAML gives them, or as ``load_config`` returned them: checking
    twice changes nothing); ``where`` names it in messages."""
    if not isinstance(raw, dict):
        raise UserError(f"{where} must be a mapping with sections {', '.join(SECTIONS)}")
    unknown = [k for k in raw if k not in SECTIONS]
    if "_class_name" in raw:  # a diffusers config.json or scheduler_config.json: JSON is YAML too
        raise UserError(f"{where} is a diffusers config ({printable(str(raw['_class_name']), 60)}), not one of this "
                        "tool's model YAMLs (configs/); a checkpoint file needs its YAML, and a diffusers model "
                        "is given as its folder")
    if unknown:
        raise UserError(f"unknown section(s) in {where}: {', '.join(map(repr, unknown))}; "
                        f"allowed: {', '.join(SECTIONS)}")
    if "model" not in raw:
        raise UserError(f"{where} has no 'model' section")
    family = raw.get("family", DEFAULT_FAMILY)
    if not isinstance(family, str) or family not in FAMILIES:
        raise UserError(f"{where}: unknown family {family!r}; known: {', '.join(map(str, FAMILIES))}")
    spec = FAMILIES[family]
    cfg = {
        "family": family,
        "model": _check_section("model", raw["model"], spec.params, spec.required),
        "diffusion": {**DIFFUSION_DEFAULTS,
                      **_check_section("diffusion", raw.get("diffusion"), DIFFUSION_DEFAULTS, required=())},
        "classifier": (_check_section("classifier", raw["classifier"], constructor_params(EncoderUNetModel))
                       if raw.get("classifier") is not None else None),
    }
    if raw.get("class_names") is not None:  # absent otherwise: recorded settings of older runs stay equal
        cfg["class_names"] = check_class_names(raw["class_names"], cfg["model"].get("num_classes"))
    if cfg["diffusion"]["beta_schedule"] not in BETA_SCHEDULES:
        raise UserError(f"config key 'diffusion.beta_schedule' must be one of {', '.join(BETA_SCHEDULES)}, "
                        f"got {cfg['diffusion']['beta_schedule']!r}")
    if cfg["diffusion"]["total_steps"] < 1:
        raise UserError("config key 'diffusion.total_steps' must be positive")
    clf = cfg["classifier"]
    if clf is not None and clf["image_size"] != cfg["model"]["image_size"]:
        raise UserError(f"classifier image_size {clf['image_size']} differs from model image_size "
                        f"{cfg['model']['image_size']}")
    return cfg


def model_config(config, weights, flag: str = "-c") -> dict:
    """One side's config dict: a diffusers model (a folder or hub id as ``weights``) describes itself,
    ``config`` then being at most its scheduler config; a checkpoint file needs its YAML ``config``.
    ``flag`` names ``config`` in messages."""
    from .diffusers_loading import describe, is_diffusers_source

    if is_diffusers_source(weights):
        _refuse_run_folder(weights, flag)
        return describe(weights, schedule_from=config, flag=flag)
    if config is None:
        raise UserError(f"a checkpoint file needs its config ({flag}); a diffusers model folder or hub id needs none")
    return load_config(config)


def _refuse_run_folder(weights, flag: str) -> None:
    """A train_ddib.py run folder as weights: name the two files of it a translation takes (its
    config.yaml and ema.pt), rather than call it a diffusers model without a config.json."""
    folder = Path(weights)
    if (folder / "config.yaml").is_file() and not (folder / "config.json").is_file() and any(
            (folder / name).is_file() for name in ("ema.pt", "model.pt")):
        import shlex

        side = "_B" if flag == "--config_B" else ""
        shown = printable(str(folder))
        raise UserError(f"{shown} is a training run's folder: translate with its files, "
                        f"{flag} {shlex.quote(shown + '/config.yaml')} --weights{side} {shlex.quote(shown + '/ema.pt')}")


MAX_PARAMETERS = 4_000_000_000  # the largest guided-diffusion UNet has 0.56 billion


def build_network(build, kwargs: dict, what: str):
    """Construct a network with ``build(kwargs)``, turning constructor complaints into a config error.
    It is first built on the meta device (no memory), so a config describing a network too large to
    hold is refused before anything is allocated."""
    import torch

    def complain(e):
        return UserError(f"config section '{what}' does not describe a valid network: "
                         f"{printable(' '.join(str(e).split()) or type(e).__name__, 200)}")
    try:
        with torch.device("meta"):
            size = sum(p.numel() for p in build(kwargs).parameters())
    except Exception as e:  # constructors fail in many ways on nonsense sizes
        raise complain(e) from None
    if size > MAX_PARAMETERS:
        raise UserError(f"config section '{what}' describes a network of {size:,} parameters, above the "
                        f"limit of {MAX_PARAMETERS:,}: check its sizes")
    try:
        return build(kwargs)
    except Exception as e:
        raise complain(e) from None
