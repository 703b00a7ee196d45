"""The process around a run: signals, the accelerate launcher, and this run's claim on its save folder.

Ctrl-C and SIGTERM become KeyboardInterrupt (exit 130, finished outputs kept); only rank 0 reports a
usage error; a worker follows its launcher when the launcher dies; a save folder is locked for one run
and its recorded settings must match before any model loads.
"""

import os
import signal
import sys

from .errors import UserError

HELD = []  # save-folder locks of the run in progress, released when main() returns


def interrupt_on_sigterm():
    """SIGTERM stops the run like Ctrl-C: what is finished is already written."""
    def handler(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, handler)


def claim_save_dir(args, cfg_A, cfg_B, plan, accelerator):
    """Before any model loads: the save folder locked for this run (so it is writable), and its
    recorded settings matching ours. The main process checks; every process stops on its verdict."""
    from .lock import SaveFolderLock
    from .settings import check_and_record, run_settings

    error = None
    if accelerator.is_main_process:
        try:
            HELD.append(SaveFolderLock(args.save_dir))
            check_and_record(args.save_dir, run_settings(args, cfg_A, cfg_B, plan), args.overwrite)
        except UserError as e:
            error = str(e)
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list
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
    if "LOCAL_RANK" not in os.environ or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the launcher died before we asked
            os.kill(os.getpid(), signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def import_libraries():
    """Import the heavy libraries with Ctrl-C and SIGTERM held back: a signal that lands inside an import
    leaves a module half made (numpy then fails on every later import). A held signal becomes an
    interruption, exit 130, once the imports are done (about a second)."""
    held = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda s, f: held.append(s))
    try:
        import accelerate  # noqa: F401
        import torch  # noqa: F401
        import tqdm  # noqa: F401

        import utils.cli  # noqa: F401
        import utils.folder  # noqa: F401
        import utils.pipeline  # noqa: F401
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        interrupt_on_sigterm()
    if held:
        raise KeyboardInterrupt
