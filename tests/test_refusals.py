"""Command lines that cannot do what they ask are refused with one line, before any model loads: empty
paths, a flag given twice, settings under which no translation happens, weights that are not finite."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

import sample_ddib
from conftest import command
from utils.errors import printable


def _args(files, inp, out, *extra):
    return command(["-c", files["config"], "--weights", files["weights"], "--input_dir", inp,
                             "--save_dir", out, "--class_A", 1, "--class_B", 2, "--respace_steps", 2], *extra)


@pytest.fixture()
def one(tmp_path):
    (tmp_path / "in").mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "in" / "a.png")
    return tmp_path / "in"


def _refused(capsys, argv, match):
    try:
        code = sample_ddib.main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert match in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


def _with(argv, flag, value):
    argv = list(argv)
    argv[argv.index(flag) + 1] = value
    return argv


# --- empty paths ----------------------------------------------------------------------------------------

def test_empty_save_dir_leaves_the_current_folder_alone(shared_tiny_files, one, tmp_path, capsys, monkeypatch):
    here = tmp_path / "here"
    here.mkdir()
    for name in ("index.html", "index-2.html", "index-7.html"):
        (here / name).write_text(f"the user's {name}")
    monkeypatch.chdir(here)
    _refused(capsys, _args(shared_tiny_files, one, ""), "--save_dir is empty")
    assert sorted(os.listdir(here)) == ["index-2.html", "index-7.html", "index.html"]
    assert (here / "index.html").read_text() == "the user's index.html"


@pytest.mark.parametrize("flag", ["-c", "--weights", "--input_dir", "--save_dir", "--config_B", "--weights_B",
                                  "--classifier_weights", "--manifest", "--from_latents", "--class_A", "--class_B"])
@pytest.mark.parametrize("blank", ["", " \t"])
def test_every_blank_path_or_class_is_refused(shared_tiny_files, one, tmp_path, capsys, monkeypatch, flag, blank):
    monkeypatch.chdir(tmp_path)  # where a blank path would land
    argv = _args(shared_tiny_files, one, tmp_path / "out")
    argv = _with(argv, flag, blank) if flag in argv else argv + [flag, blank]
    _refused(capsys, argv, f"{'-c/--config' if flag == '-c' else flag} is empty")
    assert os.listdir(tmp_path) == ["in"]


def test_blank_class_query_is_refused(capsys):
    _refused(capsys, ["--list_classes", " "], "--list_classes is empty")


# --- a flag given twice ------------------------------------------------------------------------------------

@pytest.mark.parametrize("extra,named", [
    (["--class_B", "3"], "--class_B is given twice"),
    (["--respace-steps=5"], "--respace_steps is given twice"),
    (["--no-clip_x0", "--clip-x0"], "--clip_x0 is given twice (as --no-clip_x0 and --clip_x0)"),
    (["--save_pairs", "--save-pairs"], "--save_pairs is given twice"),
    (["--config", "x.yaml"], "--config is given twice (as -c and --config)"),
])
def test_a_flag_given_twice_is_refused(shared_tiny_files, one, tmp_path, capsys, monkeypatch, extra, named):
    monkeypatch.chdir(tmp_path)
    _refused(capsys, _args(shared_tiny_files, one, tmp_path / "out") + extra, named)
    assert not (tmp_path / "out").exists()


def test_values_that_look_like_flags_are_no_repeats(shared_tiny_files, one, tmp_path, capsys):
    assert sample_ddib.main(_with(_args(shared_tiny_files, one, tmp_path / "out", "--t_end", "900", "--seed", "-3"),
                                  "--respace_steps", "3")) == 0


# --- names shown as they are ----------------------------------------------------------------------------------

def test_bidirectional_controls_are_escaped_in_messages_and_pages():
    from utils.gallery import text
    name = "invoice\u202egnp.exe\u2066\u200f.png"
    for shown in (printable(name), text(name)):
        assert "\u202e" not in shown and "\u2066" not in shown and "\u200f" not in shown
        assert "\\u202e" in shown and "\\u2066" in shown and "\\u200f" in shown


# --- settings under which no translation happens ---------------------------------------------------------------

@pytest.mark.parametrize("extra,match", [
    (["--respace_steps", "1"], "--respace_steps 1 visits only t = 0: no translation happens"),
    (["--t_end", "20"], "--t_end 20 ends the inversion at t = 20, where the noise is too weak"),
    (["--respace_type", "none", "--t_end", "3"], "--t_end 3 ends the inversion at t = 3"),
    (["--respace_type", "logsnr", "--t_end", "2"], "--t_end 2 ends the inversion"),
    (["--respace_type", "quad", "--respace_steps", "1"], "--respace_steps 1 visits only t = 0"),
    (["--t_end", "1000"], "--t_end must be below the schedule's total_steps 1000"),
])
def test_settings_that_return_the_source_are_refused(shared_tiny_files, one, tmp_path, capsys, extra, match):
    _refused(capsys, command(_args(shared_tiny_files, one, tmp_path / "out"), *extra), match)
    assert not (tmp_path / "out").exists()


def test_the_noise_floor_of_the_last_timestep():
    from diffusions import alphas_cumprod
    from utils.bridge import MIN_END_NOISE, Sampling, SettingError
    linear = alphas_cumprod("linear", 1000)
    Sampling(steps=1, respace_type="uniform-trailing").check(linear)  # one step from t = 999: a translation
    Sampling(steps=5, t_end=30).check(linear)  # σ = 0.15 at t = 30 on the linear schedule
    with pytest.raises(SettingError) as e:
        Sampling(steps=5, t_end=10).check(linear)
    assert e.value.field == "t_end" and f"< {MIN_END_NOISE}" in str(e.value)
    with pytest.raises(SettingError, match="no translation happens"):
        Sampling(steps=1).check(linear)


# --- weights that are not finite ------------------------------------------------------------------------------

@pytest.mark.parametrize("flag,key,value", [("--weights", "out.2.bias", float("nan")),
                                            ("--weights", "input_blocks.0.0.weight", float("inf")),
                                            ("--classifier_weights", "out.2.c_proj.bias", -float("inf"))])
def test_weights_that_are_not_finite_are_refused_at_load(shared_tiny_files, one, tmp_path, capsys, flag, key, value):
    files = shared_tiny_files
    state = torch.load(files["classifier" if "classifier" in flag else "weights"], weights_only=True)
    state[key] = state[key].clone()
    state[key].view(-1)[3] = value
    torch.save(state, tmp_path / "bad.pt")
    argv = command(_args(files, one, tmp_path / "out"), flag, tmp_path / "bad.pt")
    err = _refused(capsys, argv, f"weights {tmp_path / 'bad.pt'} hold NaN or inf values in 1 ({key})")
    assert "every image would fail" in err
