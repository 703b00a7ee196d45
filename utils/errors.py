"""The one exception type for mistakes a user can make; the script prints it as one line."""


class UserError(Exception):
    """A problem with the user's arguments, files or configs, said in words they can act on."""


MESSAGE_LIMIT = 600  # characters; a message longer than this is cut (a config value can be huge)


def printable(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """``text`` safe to print on one line: control characters, line breaks and bytes that are not
    UTF-8 (surrogate escapes from file names) shown as escapes, and cut to ``limit`` characters."""
    out = []
    for ch in text:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # a raw byte of a non-UTF-8 file name
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x20 or 0x7F <= code < 0xA0 or 0xD800 <= code < 0xE000 or code in (0x2028, 0x2029):
            out.append(repr(ch)[1:-1] if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
        if len(out) > limit:
            return "".join(out[:limit]) + " …"
    return "".join(out)
