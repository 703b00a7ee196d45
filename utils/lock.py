"""One run at a time per save folder: the run holds an exclusive lock on ``SAVE_DIR/_ddib/lock`` from
before its clean-up until it exits, so a second run is refused instead of deleting the first one's
temporary files. The lock is the kernel's (``flock``): it goes away with the process, even on SIGKILL,
so there is never a stale lock to remove by hand. Taking it also proves the folder writable before
any model loads."""

import os
from pathlib import Path

from .errors import UserError, printable

TOOL_DIR = "_ddib"  # the tool's own files in the save folder (lock, settings record)

try:
    import fcntl
except ImportError:  # not POSIX: no locking, runs must not share a folder
    fcntl = None


def prepare_save_dir(save_dir) -> Path:
    """Create ``save_dir/_ddib``; a one-line error when the folder cannot be made or written."""
    save_dir = Path(save_dir)
    shown = printable(str(save_dir))
    for parent in [save_dir, *save_dir.parents]:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                where = "is" if parent == save_dir else f"lies under {printable(str(parent))}, which is"
                raise UserError(f"--save_dir {shown} {where} not a folder")
            break
    try:
        (save_dir / TOOL_DIR).mkdir(parents=True, exist_ok=True)
        probe = save_dir / TOOL_DIR / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"--save_dir {shown} cannot be written: {e.strerror or type(e).__name__}") from None
    return save_dir / TOOL_DIR


class SaveFolderLock:
    """Held while the run lives; ``release`` (or the process ending) frees it."""

    def __init__(self, save_dir):
        tool = prepare_save_dir(save_dir)
        self.fd = None
        if fcntl is None:
            return
        path = tool / "lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise UserError(f"--save_dir {printable(str(save_dir))} is in use by another run (process {holder}); "
                            "wait for it to finish or choose another --save_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd

    def release(self):
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None
