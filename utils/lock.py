"""One run at a time per save folder: the run holds an exclusive lock on ``SAVE_DIR/_ddib/lock`` from
before its clean-up until it exits, so a second run is refused instead of deleting the first one's
temporary files. The lock is the kernel's (``flock``): it goes away with the process, even on SIGKILL,
so there is never a stale lock to remove by hand. Taking it also proves the folder writable before
any model loads.

The lock file is opened without following a symlink and must be a regular file: a link (or a FIFO,
or a folder) put there is refused, never written through. A run that ends before recording any
settings (it failed or was stopped before translating) removes the lock file and the folders it
created, so the folder is left as it was found."""

import errno
import os
import stat
from pathlib import Path

from .errors import UserError, file_kind, printable

TOOL_DIR = "_ddib"  # the tool's own files in the save folder (lock, settings record)
RECORD = "settings.json"  # the settings record (utils.settings): its presence means a run began here

try:
    import fcntl
except ImportError:  # not POSIX: no locking, runs must not share a folder
    fcntl = None


def prepare_save_dir(save_dir, created=None) -> Path:
    """Create ``save_dir/_ddib``; a one-line error when the folder cannot be made or written, or when
    ``_ddib`` is not a real folder. Folders made here are appended to ``created``, when given."""
    save_dir = Path(save_dir)
    shown = printable(str(save_dir))
    missing = []
    for parent in [save_dir, *save_dir.parents]:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                where = "is" if parent == save_dir else f"lies under {printable(str(parent))}, which is"
                raise UserError(f"--save_dir {shown} {where} not a folder")
            break
        missing.append(parent)
    tool = save_dir / TOOL_DIR
    try:
        mode = os.lstat(tool).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and not stat.S_ISDIR(mode):
        raise UserError(f"{printable(str(tool))} is {file_kind(mode)}, where this tool keeps its records; move it "
                        "away or choose another --save_dir")
    try:
        save_dir.mkdir(parents=True, exist_ok=True)
        if mode is None:
            tool.mkdir(exist_ok=True)
            missing.insert(0, tool)
        probe = tool / f".probe-{os.getpid()}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        os.close(fd)
        probe.unlink()
    except OSError as e:
        raise UserError(f"--save_dir {shown} cannot be written: {e.strerror or type(e).__name__}") from None
    if created is not None:
        created.extend(missing)  # deepest first
    return tool


def _open_lock(path: Path) -> int:
    """The lock file's descriptor: created if absent, never through a symlink, a regular file."""
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | \
        getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as e:
        try:
            kind = file_kind(os.lstat(path).st_mode)
        except OSError:
            kind = ""
        if kind or e.errno in (errno.ELOOP, errno.EISDIR):
            raise UserError(f"{printable(str(path))} is {kind or 'not a regular file'}; the lock must be a "
                            "regular file of this tool: remove it and rerun") from None
        raise UserError(f"cannot open {printable(str(path))}: {e.strerror or type(e).__name__}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise UserError(f"{printable(str(path))} is {file_kind(mode)}; the lock must be a regular file of this tool: "
                        "remove it and rerun")
    return fd


class SaveFolderLock:
    """Held while the run lives; ``release`` (or the process ending) frees it. ``record``: the file in
    ``_ddib`` whose presence means a run began here (the sampling settings; a training part's own)."""

    def __init__(self, save_dir, record: str = RECORD):
        self.save_dir, self.created, self.fd, self.record = Path(save_dir), [], None, record
        tool = prepare_save_dir(save_dir, self.created)
        self.path = tool / "lock"
        if fcntl is None:
            return
        for _ in range(100):  # a run tidying up may remove the file between our open and our lock
            fd = _open_lock(self.path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
                os.close(fd)
                raise UserError(f"--save_dir {printable(str(save_dir))} is in use by another run (process "
                                f"{printable(holder, 32)}); wait for it to finish or choose another "
                                "--save_dir") from None
            try:
                same = os.path.samestat(os.fstat(fd), os.lstat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        else:
            raise UserError(f"cannot take the lock {printable(str(self.path))}: it keeps changing")
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd

    def release(self):
        """Free the lock. When no run began here (no settings record), also remove the lock file and the
        folders this run made: a failed or stopped run leaves the folder as it found it."""
        if self.fd is None and fcntl is not None:
            return
        try:
            if not (self.path.parent / self.record).exists() and not os.path.islink(self.path):
                self.path.unlink(missing_ok=True)  # still ours: we hold the lock
                for folder in self.created:
                    try:
                        folder.rmdir()  # only if empty
                    except OSError:
                        break
        finally:
            if self.fd is not None:
                os.close(self.fd)  # closing drops the flock
                self.fd = None
