"""The command line as a person meets it: flag spellings, mistakes, the summary, the gallery, class lookup."""

import ast
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import sample_ddib
from conftest import ROOT, command


def _inputs(root: Path, n=3) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / f"{i}.png")
    return root


def _args(files, inp, out, *extra):
    return command(["-c", files["config"], "--weights", files["weights"], "--input_dir", inp,
                             "--save_dir", out, "--class_A", 1, "--respace_steps", 2], *extra)


def test_dash_spellings_and_did_you_mean(tiny_files, tmp_path, capsys):
    inp = _inputs(tmp_path / "in", 1)
    assert sample_ddib.main(_args(tiny_files, inp, tmp_path / "out", "--class-B", 2, "--save-pairs",
                                  "--no-clip-x0")) == 0
    assert (tmp_path / "out" / "_pairs" / "0.png").is_file()
    for typo, hint in [("--classifier_scal", "did you mean --classifier_scale?"),
                       ("--save_pair", "did you mean --save_pairs?")]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_:
            sample_ddib.main(_args(tiny_files, inp, tmp_path / "out", "--class_B", 2, typo, "1"))
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and hint in err and len(err.strip().splitlines()) == 1


def test_summary_counts_files_and_agrees_with_rerun(tiny_files, tmp_path, capsys):
    inp = _inputs(tmp_path / "in", 3)
    out = tmp_path / "out"
    assert sample_ddib.main(_args(tiny_files, inp, out, "--class_B", "2,3", "--save_pairs",
                                  "--micro_batch", "auto")) == 0
    text = capsys.readouterr().out
    assert "micro-batch 8" in text  # what auto chose, said
    assert "translated 3, skipped 0, failed 0, already done 0; 15 files written" in text  # 3 × 2 × (output + pair)
    assert len(list((out / "_sources").glob("*.png"))) == 3  # + each source as the model saw it, for the gallery
    assert f"outputs in {out}/, gallery {out / 'index.html'}" in text
    assert sample_ddib.main(_args(tiny_files, inp, out, "--class_B", "2,3", "--save_pairs")) == 0
    text = capsys.readouterr().out
    assert "skipping 3 input(s) whose output already exists" in text
    assert "translated 0, skipped 0, failed 0, already done 3; 0 files written" in text


def test_gallery_of_a_run_links_every_output(tiny_files, tmp_path, capsys):
    inp = _inputs(tmp_path / "in", 2)
    (inp / "bad.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    assert sample_ddib.main(_args(tiny_files, inp, out, "--class_B", "2,3", "--cycle")) == 0
    page = (out / "index.html").read_text()
    links = set(re.findall(r'src="([^"]+)"', page))
    assert {"2/0.png", "3/0.png", "2/1.png", "3/1.png"} <= links
    assert all((out / link).resolve().is_file() for link in links)  # sources too, relative to the page
    assert "bad.png" in page and "cycle PSNR" in page and "<th>guidance</th><td>none</td>" in page


def test_list_classes_by_index_and_a_config_that_fits(tiny_files, tmp_path, capsys):
    assert sample_ddib.main(["--list_classes", "292"]) == 0
    assert capsys.readouterr().out.strip() == "292  n02129604  tiger, Panthera tigris"
    inp = _inputs(tmp_path / "in", 1)
    argv = _args(tiny_files, inp, tmp_path / "out", "--class_B", 2)
    argv[1] = str(ROOT / "configs" / "64x64_diffusion.yaml")
    argv[3] = str(ROOT / "assets" / "digits_unet.pt")
    argv[argv.index("--class_A") + 1] = "3"
    assert sample_ddib.main(argv) == 2
    assert "these weights fit configs/digits.yaml: check -c" in capsys.readouterr().err


def test_every_flag_of_the_script_and_tools_has_help():
    missing = []
    for path in sorted((ROOT / "tools").glob("*.py")) + [ROOT / "utils" / "cli.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument" and \
                    not any(k.arg == "help" and ast.unparse(k.value) not in ("''", '""') for k in node.keywords):
                missing.append(f"{path.name}:{node.lineno}")
    assert not missing, missing


def test_every_launch_command_in_the_readme_is_quiet():
    """Without -q the one-process launcher turns a one-line usage error into a 19-line traceback."""
    commands, fenced = [], False
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif fenced and "accelerate launch" in line:
            commands.append(line)
    commands += [c for c in re.findall(r"`([^`]*accelerate launch[^`]*)`", (ROOT / "README.md").read_text())
                 if "sample_ddib.py" in c]
    assert len(commands) >= 8
    loud = [c for c in commands if not re.search(r"accelerate launch (-q|--quiet)\b", c)]
    assert not loud, loud
