"""The save folder: a run never harms what it did not make, a failed run leaves the folder as it found it,
the records tell the truth about the folder, and records of the wrong type are one line, not a traceback."""

import csv
import errno
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sample_ddib
import utils.folder
from conftest import command
from utils.images import NotOurs, atomic_path, remove_temporaries


def _img(path: Path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)


def _inputs(root: Path, n=3, sub=""):
    for i in range(n):
        _img(root / sub / f"{i}.png", i)
    return root


def _args(files, inp, out, *extra):
    return command(["-c", files["config"], "--weights", files["weights"], "--input_dir", inp, "--save_dir", out,
                    "--class_A", 1, "--class_B", 2, "--respace_steps", 2], *extra)


def _run(capsys, argv):
    code = sample_ddib.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _refused(capsys, argv, match):
    code, out, err = _run(capsys, argv)
    assert code == 2 and match in err, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def _listing(folder: Path) -> dict:
    """Every path under ``folder`` (links not followed) with its bytes (None for folders and links)."""
    return {p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
            for p in sorted(folder.rglob("*"))}


@pytest.fixture()
def files(shared_tiny_files):
    return shared_tiny_files


# --- never harm what the tool did not make --------------------------------------------------------------------

def test_a_folder_that_never_held_a_run_keeps_the_users_files(files, tmp_path, capsys):
    inp, out = _inputs(tmp_path / "in"), tmp_path / "out"
    out.mkdir()
    for name in ("index-2.html", "index-7.html", "notes.txt"):
        (out / name).write_text(f"the user's {name}")
    code, _, err = _run(capsys, _args(files, inp, out))
    assert code == 0, err
    for name in ("index-2.html", "index-7.html", "notes.txt"):  # the page clean-up leaves them alone
        assert (out / name).read_text() == f"the user's {name}"
    assert "DDIB translations" in (out / "index.html").read_text()


@pytest.mark.parametrize("name", ["index.html", "1.png", "failures.csv", "_pairs/0.png"])
def test_a_users_file_where_an_output_goes_is_refused_before_anything_is_written(files, tmp_path, capsys, name):
    inp, out = _inputs(tmp_path / "in"), tmp_path / "out"
    (out / name).parent.mkdir(parents=True, exist_ok=True)
    (out / name).write_text("the user's")
    before = _listing(out)
    _refused(capsys, _args(files, inp, out, "--save_pairs"), "this tool never replaces what it did not write")
    assert _listing(out) == before  # not even the lock is left behind


def test_symlinks_in_the_save_folder_are_never_followed(files, tmp_path, capsys):
    inp, out, elsewhere = _inputs(tmp_path / "in", sub="sub"), tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    precious = elsewhere / "precious.txt"
    precious.write_text("keep me")
    (out / "_ddib").mkdir(parents=True)
    os.symlink(precious, out / "_ddib" / "lock")  # the lock
    _refused(capsys, _args(files, inp, out), "lock is a symlink")
    assert precious.read_text() == "keep me"
    os.unlink(out / "_ddib" / "lock")
    os.symlink(elsewhere, out / "sub")  # an output folder
    _refused(capsys, _args(files, inp, out), "sub is a symlink (it would take outputs outside the save folder)")
    os.unlink(out / "sub")
    shutil.rmtree(out / "_ddib")
    os.symlink(elsewhere, out / "_ddib")  # the records' folder
    _refused(capsys, _args(files, inp, out), "_ddib is a symlink")
    os.unlink(out / "_ddib")
    assert _run(capsys, _args(files, inp, out))[0] == 0
    os.unlink(out / "sub" / "0.png")  # a recorded folder: --overwrite must not replace through links either
    os.symlink(precious, out / "sub" / "0.png")
    _refused(capsys, _args(files, inp, out, "--overwrite"), "0.png is a symlink where an output goes")
    shutil.rmtree(out / "sub")
    os.symlink(elsewhere, out / "sub")
    _refused(capsys, _args(files, inp, out, "--overwrite"), "sub is a symlink")
    assert sorted(os.listdir(elsewhere)) == ["precious.txt"] and precious.read_text() == "keep me"


def test_the_shared_writers_refuse_links_and_clean_up_only_their_own(tmp_path):
    root, outside = tmp_path / "save", tmp_path / "outside"
    (root / "real").mkdir(parents=True)
    outside.mkdir()
    (outside / "x.ddib-tmp").write_text("not ours: reached through a link")
    os.symlink(outside, root / "linked")
    os.symlink(outside / "x.ddib-tmp", root / "real" / "f.png")
    for path in (root / "linked" / "a.png", root / "real" / "f.png"):
        with pytest.raises(NotOurs):
            with atomic_path(path, root) as tmp:
                Path(tmp).write_text("x")
    (root / "real" / "dir.png").mkdir()
    with pytest.raises(NotOurs, match="is a folder"):
        with atomic_path(root / "real" / "dir.png") as tmp:
            Path(tmp).write_text("x")
    (root / "real" / "left.ddib-tmp").write_text("a killed run's")
    assert remove_temporaries(root) == 1 and (outside / "x.ddib-tmp").exists()
    assert sorted(os.listdir(outside)) == ["x.ddib-tmp"] and not list(root.rglob("*.ddib-tmp*"))[1:]


# --- a failed run leaves the folder as it found it -----------------------------------------------------------------

def test_a_failed_run_records_nothing_so_its_fix_just_works(files, tmp_path, capsys):
    inp, out = _inputs(tmp_path / "in"), tmp_path / "out"
    wrong = command(_args(files, inp, out), "--weights", files["classifier"])  # weights of another network
    _refused(capsys, wrong, "do not match the config")
    assert not out.exists()  # the folder it made is gone again
    state = torch.load(files["weights"], weights_only=True)
    torch.save({k: v * float("nan") if k == "out.2.bias" else v for k, v in state.items()}, tmp_path / "nan.pt")
    broken = command(_args(files, inp, out), "--weights", tmp_path / "nan.pt")  # fails at load too
    out.mkdir()
    _refused(capsys, broken, "hold NaN or inf values")
    assert os.listdir(out) == []  # an existing folder stays, empty
    code, stdout, err = _run(capsys, _args(files, inp, out))  # the fixed command: no "--weights changed"
    assert code == 0 and "translated 3," in stdout, err
    record = (out / "_ddib" / "settings.json").read_bytes()
    _refused(capsys, command(broken, "--class_B", 3, "--overwrite"), "hold NaN or inf values")
    assert (out / "_ddib" / "settings.json").read_bytes() == record  # a failed --overwrite changes nothing


def test_nothing_to_translate_is_an_error_not_an_empty_success(files, tmp_path, capsys):
    inp, out = _inputs(tmp_path / "in"), tmp_path / "out"  # images, but no class folders
    _refused(capsys, _args(files, inp, out, "--class_A", "folder"),
             "nothing to translate: all 3 image(s) under --input_dir are left out (--class_A folder: the image "
             "is not inside a class folder)")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,class_A,class_B\nmissing.png,1,2\n")
    argv = ["-c", str(files["config"]), "--weights", str(files["weights"]), "--input_dir", str(inp),
            "--save_dir", str(out), "--manifest", str(manifest), "--respace_steps", "2"]
    _refused(capsys, argv, "nothing to translate")
    assert not out.exists()
    assert _run(capsys, _args(files, inp, out, "--class_A", 1))[0] == 0  # the fix: no false "--class_B [] → [2]"


# --- records tell the truth -----------------------------------------------------------------------------------------

def _interrupt_after(monkeypatch, batches: int):
    """Ctrl-C after ``batches`` micro-batches, as a signal would arrive between two of them."""
    real, calls = utils.folder._process_batch, []

    def process(*a, **k):
        if len(calls) == batches:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*a, **k)
    monkeypatch.setattr(utils.folder, "_process_batch", process)


def test_an_interrupted_overwrite_is_finished_by_the_next_run(files, tmp_path, capsys, monkeypatch):
    inp, out, fresh = _inputs(tmp_path / "in", n=3), tmp_path / "out", tmp_path / "fresh"
    assert _run(capsys, _args(files, inp, out, "--class_B", 3, "--micro_batch", 1))[0] == 0
    assert _run(capsys, _args(files, inp, fresh, "--class_B", 5))[0] == 0  # what class 5 looks like
    with monkeypatch.context() as m:
        _interrupt_after(m, 1)
        code, _, err = _run(capsys, _args(files, inp, out, "--class_B", 5, "--micro_batch", 1, "--overwrite"))
    assert code == 130 and "interrupted" in err
    page = (out / "index.html").read_text()
    assert page.count('<section id="r') == 1  # the gallery shows only what the new settings made
    code, stdout, _ = _run(capsys, _args(files, inp, out, "--class_B", 5, "--micro_batch", 1))
    assert code == 0 and "finishing an interrupted --overwrite run" in stdout and "translated 2," in stdout
    assert all((out / f"{i}.png").read_bytes() == (fresh / f"{i}.png").read_bytes() for i in range(3))
    assert not (out / "_ddib" / "redo").exists()
    assert _run(capsys, _args(files, inp, out, "--class_B", 5, "--overwrite"))[0] == 0  # a complete redo
    code, stdout, _ = _run(capsys, _args(files, inp, out, "--class_B", 5))
    assert "already done 3" in stdout and "finishing" not in stdout
    assert "<th>translated</th><td>3</td>" in (out / "index.html").read_text()


def test_failures_and_cycle_values_describe_the_folder(files, tmp_path, capsys, monkeypatch):
    inp, out = _inputs(tmp_path / "in", n=4), tmp_path / "out"
    (inp / "bad.png").write_bytes(b"not an image")
    with monkeypatch.context() as m:
        _interrupt_after(m, 2)
        assert _run(capsys, _args(files, inp, out, "--cycle", "--micro_batch", 1))[0] == 130
    assert len(list(csv.reader(open(out / "cycle.csv")))) == 1 + 2  # the header and the two images done
    (out / "cycle.csv").unlink()  # as a SIGKILL would leave it: no report at all
    (inp / "bad.png").unlink()
    _img(inp / "bad.png", 9)  # the bad input fixed
    code, stdout, err = _run(capsys, _args(files, inp, out, "--cycle", "--micro_batch", 1))
    assert code == 0, err
    rows = list(csv.DictReader(open(out / "cycle.csv")))
    assert sorted(r["path"] for r in rows) == ["0.png", "1.png", "2.png", "3.png", "bad.png"]  # all, not the rest
    assert not (out / "failures.csv").exists()  # the fixed input is no longer listed
    page = (out / "index.html").read_text()
    assert page.count("cycle PSNR") == 5 and "Failed" not in page
    code, stdout, _ = _run(capsys, _args(files, inp, out, "--cycle"))  # a rerun with nothing to do
    page = (out / "index.html").read_text()
    assert "<th>translated</th><td>5</td>" in page and "translated 0, skipped 0, failed 0 in" in page
    assert page.count("cycle PSNR") == 5


def test_side_files_that_failed_are_retried_and_each_input_counted_once(files, tmp_path, capsys, monkeypatch):
    inp, out = _inputs(tmp_path / "in", n=3), tmp_path / "out"
    real = utils.folder.save_png

    def refuse_grids(array, path, root=None):
        if "_grids" in Path(path).parts and Path(path).name == "1.png":
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(array, path, root)
    monkeypatch.setattr(utils.folder, "save_png", refuse_grids)
    real_latent = utils.folder.save_latent

    def refuse_latent(path, *a, **k):
        if Path(path).name == "2.pt":
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_latent(path, *a, **k)
    monkeypatch.setattr(utils.folder, "save_latent", refuse_latent)
    extra = ("--class_B", "2,3", "--save_grid", "--save_latents", "--save_pairs")
    code, stdout, _ = _run(capsys, _args(files, inp, out, *extra))
    assert code == 1 and "translated 1, skipped 0, failed 2," in stdout  # not translated 3 and failed 2
    assert len(list(csv.reader(open(out / "failures.csv")))) == 1 + 2
    monkeypatch.setattr(utils.folder, "save_png", real)
    monkeypatch.setattr(utils.folder, "save_latent", real_latent)
    (out / "_pairs" / "2" / "0.png").unlink()  # a preview lost since
    code, stdout, _ = _run(capsys, _args(files, inp, out, *extra))
    assert code == 0 and "translated 3, skipped 0, failed 0, already done 0" in stdout
    assert (out / "_grids" / "1.png").is_file() and (out / "_latents" / "2.pt").is_file()
    assert (out / "_pairs" / "2" / "0.png").is_file() and not (out / "failures.csv").exists()


# --- records of the wrong type ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,make,match", [
    ("_ddib/lock", Path.mkdir, "lock is a folder"), ("_ddib/lock", os.mkfifo, "lock is a FIFO"),
    ("_ddib/settings.json", Path.mkdir, "settings.json is a folder"),
    ("_ddib/settings.json", lambda p: p.write_text("[" * 100_000 + "]" * 100_000), "settings.json is damaged"),
    ("_ddib", lambda p: p.write_text("x"), "_ddib is a file, where this tool keeps its records"),
    ("index.html", Path.mkdir, "index.html is there and was not written by this tool"),
    ("cycle.csv", Path.mkdir, "cycle.csv is there and was not written by this tool"),
])
def test_records_of_the_wrong_type_are_one_line(files, tmp_path, capsys, name, make, match):
    inp, out = _inputs(tmp_path / "in", n=1), tmp_path / "out"
    (out / name).parent.mkdir(parents=True)
    make(out / name)
    _refused(capsys, _args(files, inp, out), match)


def test_a_full_disk_at_the_gallery_still_prints_the_summary(files, tmp_path, capsys, monkeypatch):
    import utils.gallery
    inp, out = _inputs(tmp_path / "in", n=2), tmp_path / "out"

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(utils.gallery, "write_page", full)
    code, stdout, err = _run(capsys, _args(files, inp, out))
    assert code == 1 and "translated 2, skipped 0, failed 0" in stdout and "gallery not written" in stdout
    assert "error: cannot write the gallery" in err and "No space left on device" in err and "Traceback" not in err


# --- a gallery that survives moving the folder ----------------------------------------------------------------------

def test_the_gallery_survives_moving_the_save_folder(files, tmp_path, capsys):
    inp, out = _inputs(tmp_path / "in", n=2, sub="s"), tmp_path / "out"
    assert _run(capsys, _args(files, inp, out, "--class_B", "2,3"))[0] == 0
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.move(str(out), str(moved))
    shutil.rmtree(inp)  # and the sources are gone too
    links = set(re.findall(r'src="([^"]+)"', (moved / "index.html").read_text()))
    assert len(links) == 2 * 3 and all((moved / link).is_file() for link in links)
    source = np.asarray(Image.open(moved / "_sources" / "s" / "0.png"))
    assert source.shape == (32, 32, 3)  # as the model saw it
