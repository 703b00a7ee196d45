"""Messy folders, foreign files, changed settings and concurrent runs: every input is translated or
listed with a reason, no output overwrites another, and every run reaches its summary."""

import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import sample_ddib
from conftest import ROOT, TINY_CONFIG, command
from utils.lock import SaveFolderLock
from utils.outputs import LATENTS_DIR, output_names

SIZE = 32


def _img(path: Path, seed=0, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def _args(files, inp, out, *extra):
    return command(["-c", files["config"], "--weights", files["weights"], "--input_dir", inp, "--save_dir", out,
                    "--class_A", 1, "--class_B", 2, "--respace_steps", 2], *extra)


def _run(capsys, argv):
    code = sample_ddib.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _fails(capsys, argv, match):
    code, _, err = _run(capsys, argv)
    assert code == 2, err
    assert match in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


# --- one naming rule ---------------------------------------------------------------------------------

TRICKY = ["a.jpg", "a.png", "a.jpg.png", "a.png.png", "A.PNG", "a.jpg~2.png", "_pairs/x.png", "x.png",
          "_grids/x.png", "__pairs/x.png", "failures.csv/y.png", "_failures.csv/y.png", "b.png/z.png", "b.jpg",
          "b.pt/c.png", "b.jpeg", "_latents/b.png", "index.html/q.png", "_ddib/settings.png", "_x.png", "__x.png",
          "l" * 251 + ".jpg", "l" * 251 + ".png", "l" * 251 + ".jpeg", "d/e.JPG", "D/e.png", "s/_pairs/x.png"]


def _all_paths(names):
    """Every file and folder the outputs and latents of ``names`` occupy, case-folded."""
    files, dirs = [], set()
    for name in names.values():
        for f in (name, Path(LATENTS_DIR) / name.with_name(name.name[:-4] + ".pt")):
            files.append(f.as_posix().lower())
            dirs.update(p.as_posix().lower() for p in f.parents if p != Path("."))
    return files, dirs


@pytest.mark.parametrize("seed", range(4))
def test_output_names_injective_over_tricky_sets(seed):
    rng = random.Random(seed)
    rels = [Path(p) for p in rng.sample(TRICKY, rng.randint(5, len(TRICKY)))] if seed else [Path(p) for p in TRICKY]
    names = output_names(rels)
    files, dirs = _all_paths(names)
    assert len(set(files)) == len(files)  # no two outputs or latents share a path
    assert not set(files) & dirs  # and no file is where another needs a folder
    for name in names.values():
        assert name.suffix == ".png" and len(os.fsencode(name.name)) <= 255
        assert name.parts[0].lower() not in ("_pairs", "_grids", "_latents", "_ddib", "failures.csv", "index.html")
    if not seed:
        assert names[Path("x.png")] == Path("x.png") and names[Path("b.jpeg")] == Path("b.jpeg.png")


def test_colliding_inputs_all_written_counted_and_skipped_on_rerun(tiny_files, tmp_path, capsys):
    inp, out = tmp_path / "in", tmp_path / "out"
    for i, name in enumerate(["a.jpg", "a.png", "a.jpg.png", "x.png", "_pairs/x.png", "_grids/x.png"]):
        _img(inp / name, i)
    code, stdout, err = _run(capsys, _args(tiny_files, inp, out, "--save_pairs", "--save_grid"))
    assert code == 0, err
    assert "translated 6, skipped 0, failed 0" in stdout
    translations = [p for p in out.rglob("*.png") if p.relative_to(out).parts[0] not in ("_pairs", "_grids", "_sources")]
    assert len(translations) == 6
    assert len(list((out / "_pairs").rglob("*.png"))) == 6 and len(list((out / "_grids").rglob("*.png"))) == 6
    code, stdout, _ = _run(capsys, _args(tiny_files, inp, out, "--save_pairs", "--save_grid"))
    assert code == 0 and "skipping 6 input(s)" in stdout and "translated 0," in stdout


# --- every run reaches its summary ----------------------------------------------------------------------

def test_long_bytes_and_newline_names(tiny_files, tmp_path, capsys):
    inp, out = tmp_path / "in", tmp_path / "out"
    long = "l" * 251
    _img(inp / f"{long}.jpg", 1)
    _img(inp / f"{long}.png", 2)  # de-colliding adds to a name already at the 255-byte limit
    raw = os.fsdecode(b"caf\xe9.png")  # Latin-1, not UTF-8
    _img(inp / raw, 3)
    (inp / os.fsdecode(b"bad\xff.jpg")).write_bytes(b"not an image")
    (inp / "two\nlines.jpg").write_bytes(b"not an image either")
    code, stdout, err = _run(capsys, _args(tiny_files, inp, out, "--eta", "0.5"))
    assert code == 0, err
    assert "translated 3, skipped 2, failed 0" in stdout
    assert "Traceback" not in err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert any("two\\nlines.jpg" in w for w in warnings) and any("bad\\xff.jpg" in w for w in warnings)
    csv = (out / "failures.csv").read_bytes()
    assert b"bad\xff.jpg" in csv and b'"two\nlines.jpg"' in csv
    assert (out / raw).is_file() and not list(out.rglob("*.ddib-tmp"))


def test_latents_with_wrong_field_types_are_skipped(tiny_files, tmp_path, capsys):
    inp, first = tmp_path / "in", tmp_path / "first"
    for name in "abcdef":
        _img(inp / f"{name}.png", ord(name))
    assert sample_ddib.main(_args(tiny_files, inp, first, "--save_latents")) == 0
    lat = first / LATENTS_DIR
    good = torch.load(lat / "a.pt", weights_only=True)
    torch.save({**good, "timesteps": 5}, lat / "b.pt")
    torch.save({**good, "alphas_cumprod_last": "x"}, lat / "c.pt")
    torch.save({**good, "latent": good["latent"].long()}, lat / "d.pt")
    torch.save([1, 2, 3], lat / "e.pt")
    torch.save({**good, "latent": "no"}, lat / "f.pt")
    capsys.readouterr()
    code, stdout, err = _run(capsys, _args(tiny_files, inp, tmp_path / "second", "--from_latents", first))
    assert code == 0, err
    assert "translated 1, skipped 5, failed 0" in stdout and "Traceback" not in err


def test_full_disk_stops_with_summary_and_report(tiny_files, tmp_path, capsys, monkeypatch):
    import utils.folder
    inp, out = tmp_path / "in", tmp_path / "out"
    for i in range(4):
        _img(inp / f"{i}.png", i)
    real, calls = utils.folder.save_png, []

    def save_png(array, path, root=None):
        calls.append(path)
        if len(calls) > 4:  # two inputs' source copies and translations
            raise OSError(errno.ENOSPC, "No space left on device")
        real(array, path, root)
    monkeypatch.setattr(utils.folder, "save_png", save_png)
    code, stdout, err = _run(capsys, _args(tiny_files, inp, out, "--micro_batch", "1"))
    assert code == 1, err
    assert "translated 2, skipped 0, failed 1" in stdout
    assert "No space left on device" in err and "rerun the same command" in err and "Traceback" not in err
    assert "2.png" in (out / "failures.csv").read_text()
    assert sorted(p.name for p in out.glob("*.png")) == ["0.png", "1.png"] and not list(out.rglob("*.ddib-tmp"))


# --- validation at the door --------------------------------------------------------------------------------

@pytest.fixture()
def one(tmp_path):
    _img(tmp_path / "in" / "a.png")
    return tmp_path / "in"


def _with(argv, flag, value):
    argv = list(argv)
    argv[argv.index(flag) + 1] = str(value)
    return argv


def test_damaged_checkpoints(tiny_files, one, tmp_path, capsys):
    base = _args(tiny_files, one, tmp_path / "out")
    (tmp_path / "r.pt").write_bytes(b"R.")
    _fails(capsys, _with(base, "--weights", tmp_path / "r.pt"), "cannot read checkpoint")
    data = bytearray(tiny_files["weights"].read_bytes())
    for at in (len(data) // 3, len(data) // 2, len(data) - 200):
        bent = bytearray(data)
        bent[at:at + 8] = b"\x00\xff" * 4
        (tmp_path / "bent.pt").write_bytes(bytes(bent))
        code, _, err = _run(capsys, _with(base, "--weights", tmp_path / "bent.pt"))
        assert code in (0, 1, 2) and "Traceback" not in err and (code != 2 or err.count("\n") == 1), err
    state = torch.load(tiny_files["weights"], weights_only=True)
    torch.save({k: (v * 100).long() for k, v in state.items()}, tmp_path / "int.pt")
    _fails(capsys, _with(_with(base, "--weights", tmp_path / "int.pt"), "--save_dir", tmp_path / "o2"),
           "not floating point")
    assert not (tmp_path / "o2" / "a.png").exists()


def _config(tmp_path, mutate=None, text=None, name="c.yaml"):
    path = tmp_path / name
    if text is None:
        cfg = yaml.safe_load(yaml.safe_dump(TINY_CONFIG))
        mutate(cfg)
        text = yaml.safe_dump(cfg)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


@pytest.mark.parametrize("mutate,match", [
    (lambda c: c["model"].update(model_channels=-32), "'model.model_channels' must be positive"),
    (lambda c: c["model"].update(channel_mult=[]), "'model.channel_mult' must list at least one"),
    (lambda c: c["model"].update(image_size=0), "'model.image_size' must be positive"),
    (lambda c: c["model"].update(num_res_blocks=-1), "'model.num_res_blocks' must be positive"),
    (lambda c: c["model"].update(dropout=float("nan")), "must be finite"),
    (lambda c: c["model"].update(model_channels=2 ** 20), "parameters, above the limit"),
    (lambda c: c["model"].update(num_head_channels=7), "does not describe a valid network"),
])
def test_configs_that_would_build_nonsense(tiny_files, one, tmp_path, capsys, mutate, match):
    _fails(capsys, _with(_args(tiny_files, one, tmp_path / "out"), "-c", _config(tmp_path, mutate)), match)


def test_config_encodings_and_alias_bomb(tiny_files, one, tmp_path, capsys):
    text = yaml.safe_dump(TINY_CONFIG)
    utf16 = _config(tmp_path, text=b"\xff\xfe" + text.encode("utf-16-le"), name="u16.yaml")
    assert sample_ddib.main(_with(_args(tiny_files, one, tmp_path / "out"), "-c", utf16)) == 0
    capsys.readouterr()
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{b}: &{b} [*{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}]\n" for a, b in zip("abcdefgh", "bcdefghi"))
    err = _fails(capsys, _with(_args(tiny_files, one, tmp_path / "out2"), "-c", _config(tmp_path, text=bomb)),
                 "aliases")
    assert len(err) < 1000


def test_manifest_bytes_and_long_fields(tiny_files, one, tmp_path, capsys):
    base = _args(tiny_files, one, tmp_path / "out")[:8] + ["--respace_steps", "2"]
    (tmp_path / "m1.csv").write_bytes(b"path,class_A,class_B\na.png,1,\xff2\n")
    _fails(capsys, base + ["--manifest", str(tmp_path / "m1.csv")], "not UTF-8")
    (tmp_path / "m2.csv").write_text("path,class_A,class_B\n\"" + "x" * 200_000 + "\",1,2\n")
    _fails(capsys, base + ["--manifest", str(tmp_path / "m2.csv")], "not a readable CSV")


@pytest.mark.parametrize("extra,match", [
    (["--eta", "1.5"], "--eta must be between 0 and 1"), (["--eta", "nan"], "--eta must be between 0 and 1"),
    (["--classifier_scale", "nan"], "--classifier_scale must be a finite number"),
    (["--classifier_scale", "inf"], "--classifier_scale must be a finite number"),
])
def test_numbers_checked_at_the_door(tiny_files, one, tmp_path, capsys, extra, match):
    argv = _args(tiny_files, one, tmp_path / "out", "--classifier_weights", tiny_files["classifier"], *extra)
    _fails(capsys, argv, match)


def test_save_dir_checked_before_any_model_loads(tiny_files, one, tmp_path, capsys, monkeypatch):
    import utils.pipeline

    def no_loading(*a, **k):
        raise AssertionError("a model was loaded")
    monkeypatch.setattr(utils.pipeline, "load_network", no_loading)
    (tmp_path / "file").write_text("x")
    _fails(capsys, _args(tiny_files, one, tmp_path / "file" / "out"), "lies under")
    _fails(capsys, _args(tiny_files, one, tmp_path / "file"), "not a folder")


# --- settings recorded in the save folder ----------------------------------------------------------------

def test_changed_settings_refused_then_overwrite(tiny_files, one, tmp_path, capsys):
    out = tmp_path / "out"
    assert sample_ddib.main(_args(tiny_files, one, out)) == 0
    capsys.readouterr()
    for extra, named in [(["--class_B", "3"], "--class_B [2] → [3]"), (["--respace_steps", "3"], "--respace_steps 2 → 3"),
                         (["--save_pairs"], "--save_pairs off → on"), (["--eta", "0.3"], "--eta 0.0 → 0.3"),
                         (["--classifier_weights", tiny_files["classifier"]], "--classifier_weights none → another file")]:
        argv = _args(tiny_files, one, out)
        argv = argv[:argv.index("--class_B")] + argv[argv.index("--class_B") + 2:] + ["--class_B", "2"] if extra[0] == "--class_B" else argv
        argv = _with(argv, extra[0], extra[1]) if extra[0] in argv else argv + list(map(str, extra))
        err = _fails(capsys, argv, named)
        assert "--overwrite" in err
    code, stdout, _ = _run(capsys, _args(tiny_files, one, out))
    assert code == 0 and "skipping 1 input(s)" in stdout
    code, stdout, _ = _run(capsys, _args(tiny_files, one, out, "--respace_steps", "3", "--overwrite"))
    assert code == 0 and "translated 1," in stdout
    code, stdout, _ = _run(capsys, _args(tiny_files, one, out, "--respace_steps", "3"))
    assert code == 0 and "skipping 1 input(s)" in stdout


# --- concurrent runs ------------------------------------------------------------------------------------

def test_second_run_into_a_folder_in_use_is_refused(tiny_files, one, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    live = out / ".ddib-live.ddib-tmp"  # another run's temporary file, being written
    live.write_bytes(b"partial")
    held = SaveFolderLock(out)
    try:
        _fails(capsys, _args(tiny_files, one, out), "is in use by another run")
        assert live.exists()
    finally:
        held.release()
    assert sample_ddib.main(_args(tiny_files, one, out)) == 0
    assert not live.exists() and (out / "a.png").is_file()


# --- smaller holes --------------------------------------------------------------------------------------

def test_unreadable_subfolder_reported_and_links_into_save_dir_not_followed(tiny_files, tmp_path, capsys,
                                                                            monkeypatch):
    inp, out = tmp_path / "in", tmp_path / "out"
    _img(inp / "a.png")
    _img(inp / "locked" / "b.png")
    assert sample_ddib.main(_args(tiny_files, inp, out)) == 0
    os.symlink(out, inp / "earlier")
    os.symlink(out / "a.png", inp / "earlier.png")
    real = os.scandir

    def scandir(path="."):
        if str(path).endswith("locked"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)
    monkeypatch.setattr(os, "scandir", scandir)
    code, stdout, err = _run(capsys, _args(tiny_files, inp, out, "--overwrite"))
    assert code == 0, err
    assert "skipping locked: folder not readable" in err
    assert "translated 1, skipped 1," in stdout


def test_memory_per_image_is_bounded(tmp_path, monkeypatch):
    from utils.images import RESIZED_LIMIT, load_image
    Image.new("RGB", (1_000_000, 1), (10, 200, 30)).save(tmp_path / "strip.png")
    Image.new("RGB", (1, 300_000), (10, 200, 30)).save(tmp_path / "tall.png")
    made, real = [], Image.Image.resize

    def resize(self, size, *a, **k):
        made.append(size[0] * size[1])
        return real(self, size, *a, **k)
    monkeypatch.setattr(Image.Image, "resize", resize)
    for name in ("strip.png", "tall.png"):
        out = load_image(tmp_path / name, 256)
        assert out.shape == (256, 256, 3) and abs(int(out[..., 1].mean()) - 200) <= 1
    assert made and max(made) <= RESIZED_LIMIT * 256 * 256


def test_signal_while_importing_is_exit_130(tiny_files, one, tmp_path):
    proc = subprocess.Popen([sys.executable, str(ROOT / "sample_ddib.py"), *_args(tiny_files, one, tmp_path / "o")],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err


LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
          "--mixed_precision", "no", "--dynamo_backend", "no"]


@pytest.mark.slow
def test_two_processes_print_a_usage_error_once(tiny_files, one, tmp_path):
    r = subprocess.run(LAUNCH + ["-q", str(ROOT / "sample_ddib.py"), *_args(tiny_files, one, tmp_path / "o"),
                                 "--class_B", "9999"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert r.stderr.count("error: --class_B") == 1, r.stderr
    assert "sample_ddib.py\", line" not in r.stderr  # no traceback through our code


@pytest.mark.slow
def test_only_the_first_process_reports_a_usage_error(tiny_files, one, tmp_path):
    argv = [sys.executable, str(ROOT / "sample_ddib.py"), *_args(tiny_files, one, tmp_path / "o"), "--class_B", "9999"]
    for rank, lines in (("0", 1), ("1", 0)):
        env = {**os.environ, "RANK": rank, "LOCAL_RANK": rank}
        r = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
        assert r.returncode == 2 and r.stderr.count("\n") == lines, r.stderr
    r = subprocess.run(argv[:2] + ["--respace_stepz", "3"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "RANK": "1", "LOCAL_RANK": "1"})
    assert r.returncode == 2 and r.stderr == ""
