"""Writing one output: a per-image failure when only that file cannot be written, a stop of the run
when no file can be (a full disk, a read-only or broken file system)."""

import errno

from .errors import printable

# errors that every later write would hit too: the run stops with its summary instead of failing each image
FATAL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO}


class RunStopped(Exception):
    """No more outputs can be written; the message says why and where."""


def write_or_fail(result, bridge, rel, path, fn, *args, **kwargs) -> bool:
    """``fn(*args, **kwargs)`` writes ``path`` (atomically: no partial file is left) and counts it. Returns
    whether it did; a file that cannot be written (or something in its way: ``utils.images.NotOurs``)
    fails its input, a full disk raises ``RunStopped``."""
    try:
        fn(*args, **kwargs)
        result.files_written += 1
        return True
    except OSError as e:
        reason = f"cannot write {printable(str(path))}: {e.strerror or type(e).__name__}"
        result.problem(bridge, rel, "failed", reason)
        if e.errno in FATAL_ERRNOS:
            raise RunStopped(reason) from None
        return False
