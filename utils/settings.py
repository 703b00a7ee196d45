"""The settings a save folder's outputs were made with, kept in ``SAVE_DIR/_ddib/settings.json``.

A rerun skips inputs whose output exists; that is only right when the outputs were made with the same
model, classes and sampling. So the first run records its settings, and a rerun with other settings
is refused, naming what changed, unless ``--overwrite`` redoes everything (and records the new ones).
A run records its settings only once it is really going to translate (models loaded, something to
do), so a run that fails before leaves nothing that would refuse its fix. An ``--overwrite`` run is
marked unfinished (``_ddib/redo``) until every output is made again: a rerun then finishes it instead of
taking the old outputs for done.
"""

import hashlib
import json
import os
import stat
from pathlib import Path

from .errors import UserError, file_kind, printable
from .lock import RECORD, TOOL_DIR


def file_identity(path):
    """Size and SHA-256 of a file: the same weights under another name are the same weights. A
    diffusers model (a folder or hub id) is every file it is loaded from: their total size, each one's
    SHA-256 by its path in the folder, and one SHA-256 over those."""
    if path is None:
        return None
    from .diffusers_loading import is_diffusers_source, model_files

    if is_diffusers_source(path):
        files = {name: file_identity(f) for name, f in model_files(path).items()}
        combined = hashlib.sha256(json.dumps({k: v["sha256"] for k, v in sorted(files.items())}).encode())
        return {"bytes": sum(v["bytes"] for v in files.values()), "sha256": combined.hexdigest(),
                "files": {k: v["sha256"] for k, v in sorted(files.items())}}
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
            size += len(block)
    return {"bytes": size, "sha256": digest.hexdigest()}


def run_settings(args, cfg_A: dict, cfg_B: dict, plan) -> dict:
    """Everything that decides what an output looks like, keyed by the flag a user would change."""
    from .cli import sampling_of
    from .jobs import FOLDER, all_targets

    flags_give_classes = not args.manifest
    folder_mode = flags_give_classes and args.class_A is not None and args.class_A.strip().lower() == FOLDER
    class_A = (FOLDER if folder_mode else plan.jobs[0].class_A if plan.jobs and flags_give_classes else None)
    scale = sampling_of(args).classifier_scale
    return json.loads(json.dumps({
        "-c": cfg_A, "--weights": file_identity(args.weights),
        "--config_B": cfg_B if args.config_B or cfg_B is not cfg_A else None,
        "--weights_B": file_identity(args.weights_B),
        "--classifier_weights": file_identity(args.classifier_weights), "--classifier_scale": scale,
        "--cfg_scale": args.cfg_scale,
        "--class_A": class_A, "--class_B": all_targets(plan.jobs) if flags_give_classes else None,
        "--manifest": file_identity(args.manifest),
        "--respace_steps": args.respace_steps, "--respace_type": args.respace_type, "--t_end": args.t_end,
        "--solver": args.solver,
        "--eta": args.eta, "--seed": args.seed if args.eta > 0 else None, "--clip_x0": args.clip_x0,
        "--save_pairs": args.save_pairs, "--save_grid": args.save_grid, "--save_latents": args.save_latents,
        "--cycle": args.cycle,
        "--from_latents": str(Path(args.from_latents).resolve()) if args.from_latents else None,
    }))


def _shown(value) -> str:
    if isinstance(value, dict):
        return "another file" if "sha256" in value else "another config"
    if value is None or value is False:
        return "off" if value is False else "none"
    return "on" if value is True else printable(json.dumps(value), 60)


def changes(old: dict, new: dict) -> list:
    """``flag old → new`` for every setting that differs."""
    out = []
    for key in list(new) + [k for k in old if k not in new]:
        before, after = old.get(key), new.get(key)
        if before != after:
            both_files = isinstance(before, dict) and isinstance(after, dict)
            out.append(f"{key} changed" if both_files else f"{key} {_shown(before)} → {_shown(after)}")
    return out


RECORD_LIMIT = 16 << 20  # bytes; a settings record is a few KB (a config with its class names)
REDO = "redo"  # present while an --overwrite run is unfinished; its time is the redo's start


def load_record(path):
    """The JSON object a record file holds, or None when it holds none (unreadable, larger than
    RECORD_LIMIT, not JSON, nested too deep, or not an object)."""
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read(RECORD_LIMIT + 1)) if os.fstat(f.fileno()).st_size <= RECORD_LIMIT else None
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def read_record(save_dir, damaged_ok: bool = False):
    """The recorded settings (a dict), or None when the folder holds no record. A record that is not
    a regular file is a one-line error; so is one that cannot be read as one JSON object, unless
    ``damaged_ok`` (then it reads as an empty dict: --overwrite replaces it)."""
    path = Path(save_dir) / TOOL_DIR / RECORD
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not stat.S_ISREG(mode):
        raise UserError(f"{printable(str(path))} is {file_kind(mode)}, where this tool records a run's settings; remove it "
                        "(and pass --overwrite to redo the folder's outputs) or choose another --save_dir")
    old = load_record(path)
    if old is None:
        if damaged_ok:
            return {}
        raise UserError(f"{printable(str(path))} is damaged; pass --overwrite to redo the folder's outputs "
                        "with these settings, or choose another --save_dir")
    return old


def check_settings(save_dir, settings: dict, overwrite: bool) -> bool:
    """Refuse a rerun whose settings differ from the recorded ones (unless ``overwrite``); returns
    whether the folder holds a record (a run began here). Writes nothing."""
    path = Path(save_dir) / TOOL_DIR / REDO
    if os.path.lexists(path) and not os.path.isfile(path) or os.path.islink(path):
        raise UserError(f"{printable(str(path))} is not a regular file, where this tool marks an unfinished "
                        "--overwrite run; remove it or choose another --save_dir")
    if overwrite:  # a damaged record is what --overwrite replaces; one of the wrong type is not
        return read_record(save_dir, damaged_ok=True) is not None
    old = read_record(save_dir)
    if old is None:
        return False
    diff = changes(old, settings)
    if diff:
        raise UserError(f"--save_dir {printable(str(save_dir))} holds outputs made with other settings ("
                        + "; ".join(diff) + "); pass --overwrite to redo them with these settings, "
                        "or choose another --save_dir")
    return True


def record_settings(save_dir, settings: dict, overwrite: bool = False):
    """Record ``settings`` once the run is really going to translate. With ``overwrite`` the redo is
    marked unfinished until ``finish_redo``; returns the mark's time (ns), or None."""
    from .images import atomic_path

    tool = Path(save_dir) / TOOL_DIR
    since = None
    if overwrite:
        with atomic_path(tool / REDO, save_dir) as tmp:
            Path(tmp).write_text("an --overwrite run began here; outputs older than this file are redone\n")
        since = os.lstat(tool / REDO).st_mtime_ns
    if overwrite or read_record(save_dir) != json.loads(json.dumps(settings)):
        with atomic_path(tool / RECORD, save_dir) as tmp:
            Path(tmp).write_text(json.dumps(settings, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    return since


def redo_since(save_dir):
    """The start (ns) of an unfinished --overwrite run, or None."""
    try:
        st = os.lstat(Path(save_dir) / TOOL_DIR / REDO)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st.st_mtime_ns if stat.S_ISREG(st.st_mode) else None


def finish_redo(save_dir) -> None:
    """Every output is made with the recorded settings again: the redo is over."""
    path = Path(save_dir) / TOOL_DIR / REDO
    if os.path.isfile(path) and not os.path.islink(path):
        path.unlink(missing_ok=True)

