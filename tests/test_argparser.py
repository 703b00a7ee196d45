"""The strict parser: no abbreviations, both spellings of each flag, one-line errors with a guess."""

import argparse

import pytest

from utils.argparser import ArgumentParser


def toy() -> ArgumentParser:
    p = ArgumentParser(prog="toy.py", description="a toy")
    p.add_argument("-c", "--config", help="config file")
    p.add_argument("--input_dir", help="where images are")
    p.add_argument("--classifier_scale", type=float, default=1.0, help="guidance scale")
    p.add_argument("--classifier_weights", help="classifier checkpoint")
    p.add_argument("--save_pairs", action="store_true", help="write pairs")
    p.add_argument("--clip_x0", action=argparse.BooleanOptionalAction, default=True, help="clip x0")
    p.add_argument("--respace_steps", type=int, default=100, help="steps")
    return p


def fails(argv, capsys) -> str:
    """The stderr of a command line that must exit with code 2."""
    with pytest.raises(SystemExit) as stop:
        toy().parse_args(argv)
    assert stop.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    return err


@pytest.mark.parametrize("argv", [
    ["--save_pairs", "--input_dir", "x", "--classifier_scale=2", "--no-clip_x0"],
    ["--save-pairs", "--input-dir", "x", "--classifier-scale=2", "--no-clip-x0"],
    ["--save-pairs", "--input_dir=x", "--classifier-scale", "2", "--no-clip_x0"],
])
def test_both_spellings_mean_the_same(argv):
    args = toy().parse_args(argv)
    assert (args.save_pairs, args.input_dir, args.classifier_scale, args.clip_x0) == (True, "x", 2.0, False)


def test_boolean_flags_both_ways(capsys):
    assert toy().parse_args(["--clip-x0"]).clip_x0 is True
    assert toy().parse_args(["--no-clip-x0"]).clip_x0 is False
    err = fails(["--clip_x0", "--no-clip-x0"], capsys)  # two answers to one question: refused, not the last
    assert err == "error: --clip_x0 is given twice (as --clip_x0 and --no-clip_x0); give each flag once\n"


def test_help_shows_one_spelling(capsys):
    with pytest.raises(SystemExit) as stop:
        toy().parse_args(["-h"])
    assert stop.value.code == 0
    help_text = capsys.readouterr().out
    assert "--save_pairs" in help_text and "--no-clip_x0" in help_text
    assert "--save-pairs" not in help_text and "--no-clip-x0" not in help_text and "--input-dir" not in help_text


def test_abbreviations_are_refused(capsys):
    err = fails(["--classifier_scal", "2"], capsys)
    assert err == "error: unrecognized argument --classifier_scal; did you mean --classifier_scale?\n"
    assert "did you mean --save_pairs?" in fails(["--save"], capsys)
    assert "did you mean --classifier_scale or --classifier_weights?" in fails(["--classifier=2"], capsys)


@pytest.mark.parametrize("typed, meant", [
    ("--clasifier-weights=w.pt", "--classifier_weights"),
    ("--no-clip-x", "--no-clip_x0"),
    ("--Respace_Steps", "--respace_steps"),
    ("-input_dir", "--input_dir"),
])
def test_unknown_flag_is_one_line_with_a_guess(typed, meant, capsys):
    err = fails([typed, "v"], capsys)
    assert err.count("\n") == 1 and "usage" not in err
    assert err == f"error: unrecognized argument {typed.partition('=')[0]}; did you mean {meant}?\n"


def test_hopeless_flags_get_no_guess_and_all_are_named(capsys):
    err = fails(["--zzzz", "--qqqq=1", "--save_pairs"], capsys)
    assert err == "error: unrecognized argument --zzzz (also unknown: --qqqq)\n"
    assert fails(["stray", "words"], capsys) == "error: unrecognized arguments stray words\n"


def test_other_mistakes_are_one_line_too(capsys):
    err = fails(["--respace-steps", "many"], capsys)
    assert err == "error: argument --respace_steps: invalid int value: 'many'\n"


def test_two_flags_sharing_a_spelling_keep_their_own(capsys):
    p = ArgumentParser()
    p.add_argument("--a_b_c", dest="under", action="store_true")
    p.add_argument("--a-b-c", dest="dash", action="store_true")
    assert vars(p.parse_args(["--a-b-c"])) == {"under": False, "dash": True}
    assert vars(p.parse_args(["--a_b_c"])) == {"under": True, "dash": False}
    with pytest.raises(SystemExit):  # a mixed spelling could mean either: refused, not guessed
        p.parse_args(["--a-b_c"])
    assert capsys.readouterr().err.startswith("error: unrecognized argument --a-b_c; did you mean")


def test_without_exit_on_error_it_raises():
    p = ArgumentParser(exit_on_error=False)
    p.add_argument("--seed", type=int)
    with pytest.raises(argparse.ArgumentError, match="did you mean --seed"):
        p.parse_args(["--sed", "1"])


def test_intermixed_parsing_reports_the_same_way(capsys):
    p = toy()
    p.add_argument("files", nargs="*")
    assert p.parse_intermixed_args(["a", "--save-pairs", "b"]).files == ["a", "b"]
    with pytest.raises(SystemExit):
        p.parse_intermixed_args(["a", "--save-pair", "b"])
    assert capsys.readouterr().err == "error: unrecognized argument --save-pair; did you mean --save_pairs?\n"
