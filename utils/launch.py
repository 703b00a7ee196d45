"""The process around a run: signals, the accelerate launcher, and this run's claim on its save folder.

Ctrl-C and SIGTERM become KeyboardInterrupt (exit 130, finished outputs kept); only rank 0 reports a
usage error; a worker follows its launcher when the launcher dies; a worker that fails says so in one
line and exits at once, so the launcher stops the others; a save folder is locked for one run and its
recorded settings must match before any model loads.
"""

import importlib
import os
import signal
import sys
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError, printable

HELD = []  # save-folder locks of the run in progress, released when main() returns


@dataclass(frozen=True)
class Wording:
    """What a script's work is called in the lines about stopping: what is already safe, and what a
    rerun does."""
    written: str = "finished outputs are written"
    kept: str = "finished outputs are kept"
    rerun: str = "rerun the same command to finish the rest"


# the sampling script's libraries, imported with signals held back (see import_libraries)
SAMPLING_LIBRARIES = ("utils.cli", "utils.folder", "utils.pipeline")


def interrupt_on_sigterm():
    """SIGTERM stops the run like Ctrl-C: what is finished is already written."""
    def handler(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, handler)


def claim_save_dir(args, cfg_A, cfg_B, plan, accelerator):
    """Before any model loads: the save folder locked for this run (so it is writable), its recorded
    settings matching ours, and nothing in the way of what the run writes (``utils.outputs.Layout``:
    symlinks, files it did not make). Nothing is recorded yet: ``record_settings`` does that once the
    run is going to translate. The main process checks; every process stops on its verdict. Returns
    the settings to record (main process) or None."""
    from .lock import RECORD
    from .settings import check_settings, run_settings

    settings = []

    def check():
        settings.append(run_settings(args, cfg_A, cfg_B, plan))
        recorded = check_settings(args.save_dir, settings[0], args.overwrite)
        check_save_folder(args.save_dir, plan, recorded)

    claim_folder(args.save_dir, accelerator, check, RECORD)
    return settings[0] if settings else None


def check_save_folder(save_dir, plan, recorded: bool) -> None:
    """Nothing the run writes may replace or go through what the tool did not make."""
    from .gallery import foreign_page
    from .reports import foreign_report

    problem = (plan.layout.unsafe(plan.todo if recorded else plan.jobs, recorded) or foreign_page(save_dir)
               or foreign_report(save_dir))
    if problem:
        raise UserError(f"--save_dir: {problem}; this tool never replaces what it did not write: move it away "
                        "or choose another --save_dir")


def claim_folder(save_dir, accelerator, check, record: str):
    """A script's claim on the folder it writes (a save folder, a run folder): locked for this run, then
    ``check()`` (which raises UserError to refuse it) on the main process; every process stops on its
    verdict. ``record`` names the settings record whose presence says a run began (without it, releasing
    the lock leaves no trace)."""
    from .lock import SaveFolderLock

    error = None
    if accelerator.is_main_process:
        try:
            HELD.append(SaveFolderLock(save_dir, record))
            check()
        except UserError as e:
            error = str(e)
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list
        with with_peers():
            error = broadcast_object_list([error])[0]
    if error:
        raise UserError(error)


def launched_rank() -> int:
    """This process's rank under ``accelerate launch`` (0 when run directly): only rank 0 reports a
    usage error, so several processes print it once."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def follow_launcher():
    """Under a launcher, a worker gets SIGTERM when the launcher dies (SIGTERM or SIGKILL to it), so no
    worker is left running alone (Linux; elsewhere the launcher's own clean-up is all there is)."""
    if not sys.platform.startswith("linux") or not ("LOCAL_RANK" in os.environ or _simple_launcher()):
        return
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the launcher died before we asked
            os.kill(os.getpid(), signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _simple_launcher() -> bool:
    """``accelerate launch`` with one process sets no rank, only its ``ACCELERATE_*`` variables; the
    parent's command line tells it from a user who exported them (whose shell we must not follow)."""
    if "ACCELERATE_MIXED_PRECISION" not in os.environ:
        return False
    try:
        return b"accelerate" in Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        return False


def import_libraries(libraries=SAMPLING_LIBRARIES):
    """Import the heavy libraries (and the script's own ``libraries``) with Ctrl-C and SIGTERM held back:
    a signal that lands inside an import leaves a module half made (numpy then fails on every later
    import). A held signal becomes an interruption, exit 130, once the imports are done (about a second)."""
    try:
        with signals_held():
            for name in ("accelerate", "torch", "tqdm", *libraries):
                importlib.import_module(name)
    finally:  # whatever handlers there were, from here on Ctrl-C and SIGTERM interrupt
        signal.signal(signal.SIGINT, signal.default_int_handler)
        interrupt_on_sigterm()


@contextmanager
def signals_held():
    """Ctrl-C and SIGTERM held back while the reports and the gallery are written (under a launcher a
    SIGTERM follows the terminal's SIGINT at once): they are written whole, and a held signal is an
    interruption (exit 130) once they are."""
    held = []
    previous = {signum: signal.signal(signum, lambda s, f: held.append(s)) for signum in (signal.SIGINT,
                                                                                       signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if held:
        raise KeyboardInterrupt


def launched_world() -> int:
    """How many processes the launcher started (1 when run directly)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


class PeerLost(Exception):
    """A collective failed because another process is gone: that process's failure, not this one's."""


@contextmanager
def with_peers():
    """Around a barrier, reduce or gather: when a peer dies there, the error is the peer's, and this
    process stops quietly instead of reporting a failure of its own (the launcher ends it anyway)."""
    try:
        yield
    except Exception as e:
        raise PeerLost(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__) from e


def _marks(save_dir) -> Path:
    from .lock import TOOL_DIR
    return Path(save_dir) / TOOL_DIR


def report_failure(error: BaseException, save_dir, wording: Wording = Wording()):
    """An unexpected exception in one of several processes: one line naming the process and where it
    happened (not a traceback per process, interleaved), a mark in the save folder so that process 0,
    which the launcher stops next, says why, and exit 1 at once: the interpreter's teardown (the process
    group, exit handlers) can take a while, and the launcher stops the others only once this one is gone."""
    rank = launched_rank()
    frames = traceback.extract_tb(error.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    line = f"process {rank} failed: {type(error).__name__}{': ' + message if message else ''}{where}"
    print(f"error: {line}; {wording.kept}", file=sys.stderr, flush=True)
    if save_dir is not None and rank != 0:
        try:
            from .images import TEMP_SUFFIX, atomic_path  # a temporary: a later run's clean-up removes a stale one
            mark = _marks(save_dir) / f"failed-process{rank}{TEMP_SUFFIX}"
            with atomic_path(mark, save_dir) as tmp:
                Path(tmp).write_text(line + "\n")
        except OSError:
            pass  # process 0 then says only that another process failed
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


def exit_quietly(code: int):
    """Exit with ``code``. A stop signal from here on (the launcher stopping a process that is already
    leaving) ends the process without a traceback from inside the interpreter's shutdown."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)
    sys.exit(code)


def failed_peers(save_dir) -> list:
    """Process 0, stopped by the launcher: which other processes failed (read and removed from their
    marks in the save folder; empty when none did, or the folder is not shared)."""
    if save_dir is None:
        return []
    from .images import TEMP_SUFFIX
    found = []
    for mark in sorted(_marks(save_dir).glob(f"failed-process*{TEMP_SUFFIX}")):
        try:
            found.append(mark.read_text().split(" failed:")[0])
            mark.unlink()
        except OSError:
            pass
    return found


def main_guarded(argv, run, build_parser=None, libraries=SAMPLING_LIBRARIES, wording: Wording = Wording()) -> int:
    """``run(args)`` for the command line parsed by ``build_parser()`` (default: the sampling script's),
    with every way out turned into a message and an exit code: a usage error is one line from the first
    process (exit 2); Ctrl-C or SIGTERM keep what is finished (130); a peer that failed is named (1); an
    unexpected error in one of several processes is one line and stops the others (alone, the traceback
    is the most useful report of a bug). ``libraries`` are imported with signals held back; ``wording``
    says what is kept. The parsed arguments need a ``save_dir``: the folder the run works in."""
    interrupt_on_sigterm()  # first: a signal while the libraries import is an interruption too
    quiet = launched_rank() != 0
    save_dir = None
    try:
        follow_launcher()
        import_libraries(libraries)
        if build_parser is None:
            from .cli import build_parser
        parser = build_parser()
        if quiet:  # argparse prints its own errors: once is enough
            parser.error = lambda message: sys.exit(2)
        args = parser.parse_args(argv)
        save_dir = args.save_dir
        return run(args)
    except UserError as e:
        if not quiet:
            print(f"error: {printable(str(e))}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, PeerLost) as e:
        if not quiet:
            failed = failed_peers(save_dir)
            if failed or isinstance(e, PeerLost):
                print(f"stopped: {' and '.join(failed) or 'another process'} failed; {wording.kept}; "
                      f"{wording.rerun}", file=sys.stderr)
            else:
                print(f"interrupted: {wording.written}; {wording.rerun}", file=sys.stderr)
        return 130 if isinstance(e, KeyboardInterrupt) else 1
    except Exception as e:
        if launched_world() <= 1:  # alone, a traceback is the most useful report of a bug
            raise
        report_failure(e, save_dir, wording)  # exits at once: the launcher then stops the others
    finally:
        while HELD:
            HELD.pop().release()
