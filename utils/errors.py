"""The one exception type for mistakes a user can make; the script prints it as one line."""

import re
import stat


class UserError(Exception):
    """A problem with the user's arguments, files or configs, said in words they can act on."""


MESSAGE_LIMIT = 600  # characters; a message longer than this is cut (a config value can be huge)

# Characters that change how the text around them is shown: bidirectional controls (U+202E turns
# "gpj.exe" into "exe.jpg" on screen) and Unicode's line and paragraph separators. A name shown to a
# person (a terminal line, the gallery) escapes them, so what is shown is what the file is called.
INVISIBLE = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")


def printable(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """``text`` safe to print on one line: control characters, line breaks, bidirectional controls
    and bytes that are not UTF-8 (surrogate escapes from file names) shown as escapes, and cut to
    ``limit`` characters."""
    out = []
    for ch in text:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # a raw byte of a non-UTF-8 file name
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x20 or 0x7F <= code < 0xA0 or 0xD800 <= code < 0xE000 or INVISIBLE.match(ch):
            out.append(repr(ch)[1:-1] if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
        if len(out) > limit:
            return "".join(out[:limit]) + " …"
    return "".join(out)


def file_kind(mode: int) -> str:
    """What an ``lstat`` mode is, for a message: a symlink, a folder, a FIFO, a file, or not a regular file."""
    return "a symlink" if stat.S_ISLNK(mode) else "a folder" if stat.S_ISDIR(mode) else \
        "a FIFO" if stat.S_ISFIFO(mode) else "a file" if stat.S_ISREG(mode) else "not a regular file"
