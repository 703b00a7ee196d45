"""A training run's folder: what it holds, and writing each of its files atomically.

    RUN/config.yaml            the model's config with the data's classes: ``sample_ddib.py -c`` takes it
    RUN/ema.pt, RUN/model.pt   the UNet's EMA and raw weights (plain float32 state_dicts, guided-diffusion's names)
    RUN/classifier.pt          the noisy classifier (``--part classifier``), RUN/classifier_ema.pt with --ema
    RUN/loss.csv, RUN/loss.png the loss log and its plot (classifier_loss.* for the classifier)
    RUN/samples/step-N.png     sample grids from the EMA UNet
    RUN/checkpoints/PART-N.pt  everything a resume needs; the last few are kept
    RUN/_ddib/                 the lock and each part's recorded settings

Only the main process writes. Every file appears under its name only once complete, so a run killed at
any moment leaves the previous version of each file, never a truncated one.
"""

import csv
import io
import json
import os
import re
import stat
from pathlib import Path

import torch
import yaml

from .errors import UserError, printable
from .images import atomic_path, in_the_way, save_png
from .lock import TOOL_DIR

PARTS = ("unet", "classifier")
CHECKPOINTS, SAMPLES, CONFIG = "checkpoints", "samples", "config.yaml"
CHECKPOINT_FORMAT = "ddib-train-1"
_FILES = {"unet": {"raw": "model.pt", "ema": "ema.pt", "log": "loss.csv", "plot": "loss.png"},
          "classifier": {"raw": "classifier.pt", "ema": "classifier_ema.pt", "log": "classifier_loss.csv",
                         "plot": "classifier_loss.png"}}


def _state_dict(model: torch.nn.Module) -> dict:
    """A plain float32 CPU copy: loadable with ``torch.load(weights_only=True)`` and strict keys."""
    return {k: v.detach().float().cpu().clone() if v.is_floating_point() else v.detach().cpu().clone()
            for k, v in model.state_dict().items()}


def _save(obj, path: Path, root: Path) -> None:
    """torch.save, atomically inside the run folder ``root``; through a file object, so the archive's
    inner name is the same whatever the temporary file is called (equal weights make equal files)."""
    with atomic_path(path, root) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def _regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def run_config(cfg: dict, class_names, part: str) -> tuple:
    """(the config a run writes to RUN/config.yaml, notes on what the data changed in it): the -c config
    with the data's classes (``model.num_classes``, the classifier's outputs and ``class_names``; no
    classes and no classifier for one unconditional folder)."""
    if cfg.get("family", "adm") != "adm":
        raise UserError(f"train_ddib.py trains guided-diffusion's UNet (family adm), not {cfg['family']!r}")
    if part == "classifier" and cfg.get("classifier") is None:
        raise UserError("--part classifier needs a 'classifier' section in the config (EncoderUNetModel sizes)")
    if part == "classifier" and not class_names:
        raise UserError("--part classifier needs class folders: a noisy classifier learns to tell classes apart, "
                        "and these images form one unconditional domain")
    count = len(class_names) if class_names else None
    out = {"family": "adm", "model": {**cfg["model"], "num_classes": count}, "diffusion": dict(cfg["diffusion"]),
           "classifier": {**cfg["classifier"], "out_channels": count} if count and cfg.get("classifier") else None}
    notes = []
    if cfg["model"].get("num_classes") != count:
        notes.append(f"model.num_classes {cfg['model'].get('num_classes')} → {count} (from the data)")
    if cfg.get("classifier") is not None and out["classifier"] is None:
        notes.append("no classifier section: an unconditional model has no classes to tell apart")
    elif out["classifier"] is not None and cfg["classifier"].get("out_channels") != count:
        notes.append(f"classifier.out_channels {cfg['classifier'].get('out_channels')} → {count} (from the data)")
    if class_names:
        out["class_names"] = list(class_names)
    return out, notes


def build_part(cfg_run: dict, part: str) -> torch.nn.Module:
    """The network ``part`` trains, freshly initialised from torch's seed (sizes checked first)."""
    from models import EncoderUNetModel, UNetModel

    from .config import build_network

    if part == "classifier":
        return build_network(lambda kw: EncoderUNetModel(**kw), cfg_run["classifier"], "classifier")
    return build_network(lambda kw: UNetModel(**kw), cfg_run["model"], "model")


class RunFolder:
    """The files of one part (``unet`` or ``classifier``) of a run in ``root``."""

    def __init__(self, root, part: str):
        self.root, self.part = Path(root), part
        self.files = {k: self.root / v for k, v in _FILES[part].items()}

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def settings(self) -> Path:
        return self.root / TOOL_DIR / f"train-{self.part}.json"

    # -- the config ---------------------------------------------------------------------------------

    def check_config(self, cfg: dict) -> None:
        """A run folder holds one model: a config.yaml that differs from ``cfg`` (another part trained with
        another -c or other class folders) is refused."""
        from .config import load_config

        if self.config.is_file() and load_config(self.config) != cfg:
            raise UserError(f"{printable(str(self.config))} describes another model (another -c or other class "
                            "folders); train into another --save_dir")

    def write_config(self, cfg: dict, note: str) -> None:
        """``RUN/config.yaml``, once, headed by ``note``; it must read back as ``cfg``."""
        from .config import load_config

        if self.config.is_file():
            return
        written = json.loads(json.dumps({k: v for k, v in cfg.items() if v is not None}))  # no shared objects:
        # YAML would write them as aliases, which configs refuse
        text = "".join(f"# {line}\n" for line in note.splitlines()) + yaml.safe_dump(written, sort_keys=False,
                                                                                      allow_unicode=True)
        with atomic_path(self.config, self.root) as tmp:
            Path(tmp).write_text(text, encoding="utf-8")
        if load_config(self.config) != cfg:  # what sample_ddib.py will read back
            raise RuntimeError("the written config does not read back as itself")

    # -- settings -----------------------------------------------------------------------------------

    def check_settings(self, settings: dict) -> None:
        """Refuse a rerun whose settings differ from those this part recorded, naming each change: its
        checkpoints were made with the recorded ones."""
        from .settings import changes, load_record

        if not os.path.lexists(self.settings):
            return
        old = load_record(self.settings) if _regular(self.settings) else None
        if old is None:
            raise UserError(f"{printable(str(self.settings))} is damaged or not a file of this tool; train into "
                            "another --save_dir")
        diff = changes(old, settings)
        if diff:
            raise UserError(f"--save_dir {printable(str(self.root))} holds a {self.part} run with other settings ("
                            + "; ".join(diff) + "); rerun with the same settings to continue it, or train into "
                            "another --save_dir")

    def record_settings(self, settings: dict) -> None:
        """Record the settings on the first run (once the data has been read: a refused run records none)."""
        if not os.path.lexists(self.settings):
            with atomic_path(self.settings, self.root) as tmp:
                Path(tmp).write_text(json.dumps(settings, indent=1) + "\n", encoding="utf-8")

    def check_writable(self) -> None:
        """Nothing the run writes may go through or replace what the tool did not make: its files must be
        absent or regular files, its folders absent or real folders."""
        for path in [self.config, self.settings, self.root / "skipped.csv", *self.files.values()]:
            why = in_the_way(path)
            if why:
                raise UserError(f"{printable(str(path))} {why}, where the run writes a file of its own; move it "
                                "away or train into another --save_dir")
        for folder in (self.root / CHECKPOINTS, self.root / SAMPLES):
            if os.path.lexists(folder) and (folder.is_symlink() or not folder.is_dir()):
                raise UserError(f"{printable(str(folder))} is not a folder of this tool (a link or a file); move it "
                                "away or train into another --save_dir")
        found = self._unrecorded_file()
        if found is not None:
            raise UserError(f"{printable(str(found))} is already there and no run of this tool recorded it; this tool "
                            "never replaces what it did not write: move it away or train into another --save_dir")

    def _unrecorded_file(self):
        """A file where this part writes, in a folder where it never ran (no record: every run records
        before it writes): the user's, then. config.yaml and skipped.csv belong to the run folder, so
        they are the user's only where no part ran."""
        if os.path.lexists(self.settings):
            return None
        candidates = [*self.files.values(), *(path for _, path in self.checkpoints())]
        if self.part == "unet" and (self.root / SAMPLES).is_dir():
            candidates += sorted(p for p in (self.root / SAMPLES).iterdir() if re.fullmatch(r"step-\d+\.png", p.name))
        if not any(os.path.lexists(RunFolder(self.root, part).settings) for part in PARTS):
            candidates += [self.config, self.root / "skipped.csv"]
        return next((path for path in candidates if _regular(path)), None)

    # -- checkpoints --------------------------------------------------------------------------------

    def checkpoints(self) -> list:
        """(step, path) of this part's checkpoints, oldest first."""
        folder = self.root / CHECKPOINTS
        pattern = re.compile(rf"{self.part}-(\d+)\.pt")
        found = []
        if folder.is_dir() and not folder.is_symlink():
            for path in folder.iterdir():
                match = pattern.fullmatch(path.name)
                if match and _regular(path):  # a link or folder of that name is not ours
                    found.append((int(match.group(1)), path))
        return sorted(found)

    def save_checkpoint(self, state: dict, keep: int) -> Path:
        """Write step ``state['step']``'s checkpoint, then remove all but this part's last ``keep``."""
        path = self.root / CHECKPOINTS / f"{self.part}-{state['step']:08d}.pt"
        _save({"format": CHECKPOINT_FORMAT, "part": self.part, **state}, path, self.root)
        for _, old in self.checkpoints()[:-keep]:
            old.unlink(missing_ok=True)
        return path

    def load_latest(self, warn) -> dict:
        """The newest checkpoint that reads back whole (None when there is none); a damaged one is
        named and the one before it is used."""
        for step, path in reversed(self.checkpoints()):
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
                if state.get("format") == CHECKPOINT_FORMAT and state.get("step") == step:
                    state["path"] = path
                    return state
                reason = "not a checkpoint of this tool"
            except Exception as e:  # a damaged file fails anywhere in torch's reader
                reason = " ".join(str(e).split())[:120] or type(e).__name__
            warn(f"cannot use {printable(str(path))} ({reason}); trying the one before")
        return None

    # -- weights, log, samples ----------------------------------------------------------------------

    def export(self, model: torch.nn.Module, ema) -> list:
        """The weights as plain state_dicts: the raw ones, and the EMA copy when there is one."""
        written = [self.files["raw"]]
        _save(_state_dict(model), self.files["raw"], self.root)
        if ema is not None:
            _save(_state_dict(ema), self.files["ema"], self.root)
            written.append(self.files["ema"])
        return written

    def weights_for_sampling(self, has_ema: bool) -> Path:
        return self.files["ema"] if has_ema else self.files["raw"]

    def write_log(self, columns: list, rows: list) -> None:
        """The loss log as CSV, and its plot."""
        from .plot import line_plot

        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([[f"{v:.6g}" if isinstance(v, float) else v for v in row] for row in rows])
        with atomic_path(self.files["log"], self.root) as tmp:
            Path(tmp).write_text(text.getvalue(), encoding="utf-8")
        steps, losses = [r[0] for r in rows], [r[1] for r in rows]
        line_plot(self.files["plot"], {f"{self.part} loss": (steps, losses)}, y_label="loss", log_y=True,
                  root=self.root)

    def write_samples(self, grid, step: int) -> Path:
        path = self.root / SAMPLES / f"step-{step:08d}.png"
        save_png(grid, path, self.root)
        return path
