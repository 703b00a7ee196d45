"""An argparse parser that is strict about what it accepts and short about what went wrong.

Abbreviations are refused, so a flag added later can never change what an old command line means.
Every long flag answers to both its underscore and its dash spelling (``--save_pairs``,
``--save-pairs``; ``--no-clip_x0``, ``--no-clip-x0``) while help lists only the spelling it was
defined with. A flag given twice is refused (argparse would keep the last value without a word).
Any mistake is one ``error:`` line (an unknown flag with the closest known one) and exit code 2,
instead of the full usage.
"""

import argparse
import difflib
import sys


def _spelling(flag: str) -> str:
    """What the dash and underscore spellings of one flag have in common."""
    return flag.replace("-", "_")


def _likeness(flag: str) -> str:
    """Looser still, for guessing what a mistyped flag meant: no leading dashes, any case."""
    return _spelling(flag.lstrip("-")).lower()


def positive_int(value: str) -> int:
    """An argument type: an integer of at least 1, or argparse's one-line error."""
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value!r}")
    return n


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with no abbreviations, dash/underscore spellings and one-line errors."""

    def __init__(self, *args, **kwargs):
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def _is_long(self, flag: str) -> bool:
        return len(flag) > 2 and flag[0] in self.prefix_chars and flag[1] == flag[0]

    def spellings(self) -> dict:
        """Each long flag as defined, by its spelling-free form. A form that two different actions
        share is left out, so each of those flags answers only to its exact spelling."""
        found = {}
        for flag, action in self._option_string_actions.items():
            if self._is_long(flag):
                found.setdefault(_spelling(flag), []).append((flag, action))
        return {form: pairs[0][0] for form, pairs in found.items() if len({id(a) for _, a in pairs}) == 1}

    def canonical(self, arg: str) -> str:
        """``arg`` with its flag part (before any '=') in the spelling it was defined with."""
        flag, eq, value = arg.partition("=")
        if flag in self._option_string_actions or not self._is_long(flag):
            return arg
        known = self.spellings().get(_spelling(flag))
        return known + eq + value if known else arg

    def _parse_optional(self, arg_string):
        # Every command-line token is classified here; answering with the defined spelling makes
        # actions see it too (BooleanOptionalAction tells --x from --no-x by its own spellings).
        return super()._parse_optional(self.canonical(arg_string))

    def suggestion(self, flag: str):
        """The flags ``flag`` abbreviates (up to three), else the closest known flag, else None."""
        flags = {_likeness(f): f for f in self._option_string_actions if f[:1] in self.prefix_chars}
        typed = _likeness(flag)
        longer = [f for key, f in flags.items() if key.startswith(typed)] if typed else []
        if 0 < len(longer) <= 3:
            return " or ".join(longer)
        close = difflib.get_close_matches(typed, list(flags), n=1, cutoff=0.6)
        return flags[close[0]] if close else None

    def unrecognized(self, extras) -> str:
        """One sentence about arguments nobody asked for, with a guess for the first unknown flag
        (values after an unknown flag are most likely its own, so only flags are named)."""
        flags = [a.partition("=")[0] for a in extras if a[:1] in self.prefix_chars and len(a) > 1]
        if not flags:
            return f"unrecognized argument{'s' if len(extras) > 1 else ''} {' '.join(extras)}"
        guess = self.suggestion(flags[0])
        message = f"unrecognized argument {flags[0]}" + (f"; did you mean {guess}?" if guess else "")
        if len(flags) > 1:
            message += f" (also unknown: {', '.join(flags[1:])})"
        return message

    def _action_of(self, arg: str):
        """The action a command-line token names as a flag (``--x``, ``--x=v``, ``-cVALUE``), or None."""
        if arg[:1] not in self.prefix_chars or arg in ("-", "--"):
            return None
        flag = self.canonical(arg).partition("=")[0]
        if flag in self._option_string_actions:
            return self._option_string_actions[flag]
        if not self._is_long(arg):
            return self._option_string_actions.get(arg[:2])  # a short flag with its value attached
        return None

    def repeated(self, args) -> str:
        """A sentence about the first flag given more than once (``--x a --x b``, or ``--x --no-x``),
        or '' when none is: a repeated flag means a command line that says two things."""
        seen = {}
        for arg in args:
            if arg == "--":
                break
            action = self._action_of(arg)
            if action is None or not action.option_strings:
                continue
            flag = self.canonical(arg).partition("=")[0]
            flag = flag if flag in self._option_string_actions else arg[:2]
            if id(action) in seen:
                first = seen[id(action)]
                name = next((f for f in action.option_strings if self._is_long(f)), action.option_strings[0])
                also = f" (as {first} and {flag})" if first != flag else ""
                return f"{name} is given twice{also}; give each flag once"
            seen[id(action)] = flag
        return ""

    def _check_repeats(self, args):
        message = self.repeated(sys.argv[1:] if args is None else list(args))
        if message:
            self._fail(message)

    def parse_args(self, args=None, namespace=None):
        self._check_repeats(args)
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self._fail(self.unrecognized(extras))
        return parsed

    def parse_intermixed_args(self, args=None, namespace=None):
        self._check_repeats(args)
        parsed, extras = self.parse_known_intermixed_args(args, namespace)
        if extras:
            self._fail(self.unrecognized(extras))
        return parsed

    def _fail(self, message: str):
        if getattr(self, "exit_on_error", True):
            self.error(message)
        raise argparse.ArgumentError(None, message)

    def error(self, message: str):
        """Print ``error: message`` (no usage; ``-h`` has it) and exit with code 2."""
        self.exit(2, f"error: {message}\n")

