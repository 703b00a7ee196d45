"""Under ``accelerate launch``: Ctrl-C and SIGTERM stop every worker, and one worker's failure stops the
others with one line saying which process failed; finished outputs stay and a rerun finishes the rest.

One process runs under accelerate's simple launcher; two CPU processes need torch's elastic launcher
(``--multi_gpu`` with ``ACCELERATE_USE_CPU=1``: ``--cpu --num_processes 2`` starts only one process).
Tracebacks the launchers print themselves, which no script can prevent, are allowed here:
- simple launcher, Ctrl-C: its ``KeyboardInterrupt`` in ``process.wait()``;
- simple launcher, a worker exiting non-zero: ``CalledProcessError`` (absent with ``-q``);
- elastic launcher, Ctrl-C or SIGTERM: ``SignalException``; a worker failing: ``ChildFailedError``.
None of them may pass through our own code, which this file checks.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT

pytestmark = pytest.mark.slow  # real launches, signals and kills: run with --runslow

N = 8


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launcher(nproc):
    """The launch command for ``nproc`` CPU processes, and its environment."""
    flags = ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if nproc == 1:
        return [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1", *flags], env
    env["ACCELERATE_USE_CPU"] = "1"
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(nproc),
            "--main_process_port", str(_free_port()), *flags], env


def _setup(tiny_files, tmp_path, n=N):
    inp = tmp_path / "in"
    inp.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(inp / f"{i:02d}.png")
    return ["-c", str(tiny_files["config"]), "--weights", str(tiny_files["weights"]), "--input_dir", str(inp),
            "--save_dir", str(tmp_path / "out"), "--class_A", "1", "--class_B", "2", "--respace_steps", "6",
            "--micro_batch", "1"]


class Run:
    """A launch in its own session (so a signal can go to its whole process group, as a terminal's Ctrl-C
    does), its output in files (no pipe to fill)."""

    def __init__(self, cmd, env, tmp_path, tag):
        self.log = tmp_path / f"{tag}.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.marker = str(tmp_path)

    def processes(self):
        """Live processes (launcher and workers) whose command line names this test's folder."""
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
                state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if self.marker in cmdline and state != "Z":
                pids.append(int(entry))
        return pids

    def wait(self, timeout=120):
        try:
            self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.returncode, self.log.read_text(errors="replace")


def _poll(condition, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _no_traceback_from_us(output):
    ours = [line for line in output.splitlines() if line.strip().startswith(f'File "{ROOT}')]
    assert not ours, output[-3000:]


def _outputs(out):
    return sorted(p.name for p in out.glob("*.png"))


def _all_whole(out):
    for p in out.rglob("*.png"):
        with Image.open(p) as img:
            img.load()
    assert not [p for p in out.rglob("*") if p.name.endswith(".ddib-tmp")]


def _rerun_finishes(cmd, env, tmp_path, done):
    code, output = Run(cmd, env, tmp_path, "rerun").wait(timeout=180)
    assert code == 0, output[-3000:]
    assert f"skipping {len(done)} input(s)" in output and f"translated {N - len(done)}," in output, output[-3000:]
    assert len(_outputs(tmp_path / "out")) == N


HOW = {
    "ctrl-c": lambda run: os.killpg(run.proc.pid, signal.SIGINT),  # as a terminal sends it
    "sigterm-launcher": lambda run: run.proc.send_signal(signal.SIGTERM),
    "sigterm-group": lambda run: os.killpg(run.proc.pid, signal.SIGTERM),
}


@pytest.mark.parametrize("how", sorted(HOW))
@pytest.mark.parametrize("nproc", [1, 2])
def test_signal_stops_every_worker_then_rerun_finishes(tiny_files, tmp_path, nproc, how):
    args = _setup(tiny_files, tmp_path)
    launch, env = _launcher(nproc)
    cmd = launch + [str(ROOT / "sample_ddib.py"), *args]
    run, out = Run(cmd, env, tmp_path, "first"), tmp_path / "out"
    _poll(lambda: run.proc.poll() is not None or (out.is_dir() and _outputs(out)), 120, "a first output")
    assert run.proc.poll() is None, run.log.read_text()[-3000:]
    workers = [pid for pid in run.processes() if pid != run.proc.pid]
    assert len(workers) == nproc, workers
    HOW[how](run)
    code, _ = run.wait()
    _poll(lambda: not run.processes(), 60, "every worker to stop")
    output = run.log.read_text(errors="replace")  # a worker may outlive its launcher by a moment
    assert code != 0, output[-3000:]
    _no_traceback_from_us(output)
    assert "interrupted: finished outputs are written" in output, output[-3000:]
    done = _outputs(out)
    assert 1 <= len(done) < N
    _all_whole(out)
    _rerun_finishes(cmd, env, tmp_path, done)


# --- one worker fails -----------------------------------------------------------------------------------

HOOK = '''
import os, sys, time
if os.environ.get("RANK") == "{rank}" and os.path.basename(sys.argv[0]) == "sample_ddib.py":
    sys.path.insert(0, {root!r})
    import utils.folder
    real, calls = utils.folder.save_png, []

    def save_png(array, path, root=None):  # a fault the code does not expect, after {after} image(s)
        calls.append(path)
        if len(calls) > {after}:
            raise RuntimeError("injected fault")
        real(array, path, root)
    utils.folder.save_png = save_png
    if {at_barrier}:  # fail only after the folder loop, while the other process waits at the end
        run = utils.folder.translate_folder

        def translate_folder(*a, **k):
            result = run(*a, **k)
            time.sleep(3)
            raise RuntimeError("injected fault")
        utils.folder.translate_folder = translate_folder
'''


@pytest.mark.parametrize("rank,where", [(1, "mid-run"), (0, "mid-run"), (1, "at-barrier")])
def test_one_failing_worker_stops_the_others(tiny_files, tmp_path, rank, where):
    n = 16 if where == "mid-run" else 8
    args = _setup(tiny_files, tmp_path, n=n)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOOK.format(rank=rank, root=str(ROOT), after=1 if where == "mid-run" else 99,
                                                       at_barrier=where == "at-barrier"))
    launch, env = _launcher(2)
    env["PYTHONPATH"] = str(hook)
    started = time.time()
    run = Run(launch + [str(ROOT / "sample_ddib.py"), *args], env, tmp_path, "first")
    code, output = run.wait(timeout=120)
    _poll(lambda: not run.processes(), 60, "every worker to stop")
    assert code != 0, output[-3000:]
    assert time.time() - started < 90  # nobody waited at a barrier for gloo's 30-minute timeout
    _no_traceback_from_us(output)
    lines = [line[line.index("error:"):] for line in output.replace("\r", "\n").splitlines() if "error:" in line]
    assert len(lines) == 1, output[-3000:]
    assert lines[0].startswith(f"error: process {rank} failed: RuntimeError: injected fault (at sitecustomize.py:")
    assert lines[0].endswith("; finished outputs are kept")
    assert "interrupted" not in output, output[-3000:]  # the others were stopped, not the run
    if rank:  # process 0 says why it stopped
        assert f"stopped: process {rank} failed; finished outputs are kept" in output, output[-3000:]
    out = tmp_path / "out"
    if where == "mid-run":  # the other process was stopped well before the end of its share (every 2nd file)
        theirs = [name for name in _outputs(out) if int(name[:2]) % 2 != rank]
        assert len(theirs) < n // 2, _outputs(out)
    else:
        assert len(_outputs(out)) == n
    _all_whole(out)
