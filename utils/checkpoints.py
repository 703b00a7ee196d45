"""Loading weights: guided-diffusion's raw state_dicts and the usual wrappers, strictly and safely."""

import pickle
from typing import Optional
from pathlib import Path

import torch

from .errors import UserError, printable

# Wrapper keys seen in training checkpoints; an EMA copy wins because it is what one samples with.
_WRAPPER_KEYS = ("ema", "ema_model", "model_ema", "ema_state_dict", "state_dict", "model", "net", "module")


def _read(path: Path):
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise UserError(f"{path} is a .safetensors file; install the 'safetensors' package to read it") from None
        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own error types
            raise UserError(f"cannot read {path}: {e}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "not a weights-only file"
        raise UserError(f"refusing to load {path}: it needs code to unpickle ({first}); only plain tensors "
                        "are loaded (torch.load weights_only=True)") from None
    except Exception as e:  # a damaged file fails anywhere in torch's reader (IndexError, KeyError, …)
        reason = " ".join(str(e).split()) or type(e).__name__
        raise UserError(f"cannot read checkpoint {path}: it is damaged or not a checkpoint ({reason[:200]})") from None


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and obj and all(isinstance(k, str) for k in obj) and \
        all(torch.is_tensor(v) for v in obj.values())


def unwrap_state_dict(obj) -> dict:
    """Find the tensor dict inside ``{"model": ...}``, ``{"state_dict": ...}``, an EMA copy, or none."""
    for _ in range(3):
        if _is_state_dict(obj):
            break
        if not isinstance(obj, dict):
            raise UserError("the checkpoint holds no state_dict (a mapping of parameter names to tensors)")
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            raise UserError(f"the checkpoint holds no state_dict; its top-level keys are {list(obj)[:8]}")
        obj = inner
    if not _is_state_dict(obj):
        raise UserError("the checkpoint holds no state_dict (a mapping of parameter names to tensors)")
    prefixes = ("module.", "_orig_mod.")
    for prefix in prefixes:  # DistributedDataParallel / torch.compile wrappers
        if all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


def _listing(names, limit=3):
    shown = ", ".join(names[:limit])
    return f"{len(names)} ({shown}{', …' if len(names) > limit else ''})"


SHIPPED_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _fitting_configs_hint(state: dict, model: torch.nn.Module) -> str:
    """Which shipped config builds exactly these keys and shapes (built on the meta device, so even the
    512x512 model costs no memory), to point a user who passed the wrong -c at the right one."""
    from models import EncoderUNetModel, UNetModel

    from .config import load_config

    part = "classifier" if isinstance(model, EncoderUNetModel) else "model"
    fits = []
    for path in sorted(SHIPPED_CONFIGS.glob("*.yaml")):
        try:
            section = load_config(path)[part]
            with torch.device("meta"):
                own = (EncoderUNetModel if part == "classifier" else UNetModel)(**section).state_dict()
        except (UserError, TypeError, ValueError):
            continue
        if own.keys() == state.keys() and all(own[k].shape == state[k].shape for k in own):
            fits.append(f"configs/{path.name}")
    if fits:
        return f"these weights fit {' and '.join(fits)}: check -c (or --config_B)"
    return "no config in configs/ fits them either: check that -c (or --config_B) belongs to these weights"


def nonfinite(tensors) -> list:
    """The names of the floating-point tensors among (name, tensor) pairs that hold NaN or inf."""
    return [name for name, v in tensors if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def load_weights(model: torch.nn.Module, path, what: str = "model") -> None:
    """Load ``path`` into ``model`` strictly; a mismatch names the first differing keys and counts them."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} weights not found: {path}")
    state = unwrap_state_dict(_read(path))
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shaped = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and state[k].shape != own[k].shape]
    wrong = [f"{k} ({state[k].dtype})" for k in own if k in state and own[k].is_floating_point()
             and not (state[k].is_floating_point() and not state[k].is_complex())]
    if wrong and not (missing or unexpected or shaped):
        raise UserError(f"{what} weights {path} are not floating point: {_listing(wrong, 2)}; "
                        "weights must be float32, float16 or bfloat16")
    if missing or unexpected or shaped:
        parts = [f"missing {_listing(missing)}" if missing else "",
                 f"unexpected {_listing(unexpected)}" if unexpected else "",
                 f"mis-shaped (checkpoint vs config) {_listing(shaped, 2)}" if shaped else ""]
        raise UserError(f"{what} weights {path} do not match the config: "
                        + "; ".join(p for p in parts if p) + "; " + _fitting_configs_hint(state, model))
    broken = nonfinite(state.items())
    if broken:
        raise UserError(f"{what} weights {printable(str(path))} hold NaN or inf values in {_listing(broken, 2)}: "
                        "every image would fail; the file is damaged or from a training run that diverged")
    try:
        model.load_state_dict(state, strict=True)
    except Exception as e:  # tensors whose storage was damaged inside an intact archive
        raise UserError(f"cannot load {what} weights {path}: {' '.join(str(e).split())[:200]}") from None


def load_network(cfg: dict, weights, part: str = "model", what: Optional[str] = None, device="cpu"):
    """The one loader: build ``cfg[part]`` and load ``weights`` into it strictly, in eval mode on
    ``device``. ``part="model"`` gives the family's ``EpsNetwork`` (weights go into its ``.net``, with the
    family's own names; a diffusers model is loaded by diffusers from its folder or hub id);
    ``part="classifier"`` the ADM noisy classifier."""
    from models import FAMILIES, EncoderUNetModel

    from .config import DEFAULT_FAMILY, build_network

    what = what or part
    if part == "model" and cfg.get("family") == "diffusers":  # built and loaded by diffusers from its folder
        from .diffusers_loading import load_network as load_diffusers_network

        return load_diffusers_network(cfg, weights, device)
    if part == "classifier":
        if cfg.get("classifier") is None:
            raise UserError(f"the config has no 'classifier' section for the {what}")
        net = build_network(lambda kw: EncoderUNetModel(**kw), cfg["classifier"], "classifier")
        load_weights(net, weights, what)
    else:
        net = build_network(FAMILIES[cfg.get("family", DEFAULT_FAMILY)].build, cfg["model"], "model")
        load_weights(net.net, weights, what)
        net.class_names, net.family = cfg.get("class_names"), cfg.get("family", DEFAULT_FAMILY)
    return net.to(device).eval().requires_grad_(False)
