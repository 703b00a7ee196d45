"""What goes in: manifests read literally, every pixel type read correctly or refused, and memory bounded
near the decoded image."""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import sample_ddib
from conftest import command


def _img(path: Path, seed=0, size=(32, 32)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
        os.fsencode(path), format="PNG")


def _base(files, inp, out):
    return command(["-c", files["config"], "--weights", files["weights"], "--input_dir", inp, "--save_dir", out,
                    "--respace_steps", 2])


# --- manifests --------------------------------------------------------------------------------------------------

def test_manifest_names_are_literal(shared_tiny_files, tmp_path, capsys):
    inp, out = tmp_path / "in", tmp_path / "out"
    names = ["a.png", " a.png", "back\\slash.png", "line\u2028sep.png", "x.png"]
    for i, name in enumerate(names):
        _img(inp / name, i)
    raw = os.fsdecode(b"caf\xe9.png")  # a name that is not UTF-8
    _img(inp / raw, 9)
    manifest = tmp_path / "m.csv"
    manifest.write_bytes("path, class_A, class_B\n\" a.png\",1,2\nback\\slash.png,1,2\n\"line\u20282sep.png\",1,2\n"
                         .replace("\u20282", "\u2028").encode() + b"caf\xe9.png,1, 3\n")
    assert sample_ddib.main(_base(shared_tiny_files, inp, out) + ["--manifest", str(manifest)]) == 0, \
        capsys.readouterr().err
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png") if p.relative_to(out).parts[0][0] != "_")
    assert written == ["2/ a.png", "2/back\\slash.png", "2/line\u2028sep.png", f"3/{raw}"]  # never a.png nor x.png
