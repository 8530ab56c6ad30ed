"""What the three command lines share: one-line argparse errors, plain warnings, the wording of
library errors as command-line messages, exit statuses."""

from __future__ import annotations

import argparse
import functools
import math
import re
import sys
import warnings
from fractions import Fraction

from ..errors import (
    ConfigError,
    OutputError,
    OutputWriteError,
    PyframepredError,
    TrainingDiverged,
    WorkerDied,
)

EXIT_OK, EXIT_USAGE, EXIT_DIVERGED, EXIT_WORKER_DIED, EXIT_WRITE_FAILED = 0, 2, 3, 4, 5
EXIT_INTERRUPTED = 130
EXIT_PEER_FAILED = 6  # under torchrun: another process of the run failed

# Library exception -> exit status (the first match wins; CheckpointError and the data
# errors are PyframepredErrors: bad input, status 2).
_EXIT_CODES = (
    (TrainingDiverged, EXIT_DIVERGED),
    (WorkerDied, EXIT_WORKER_DIED),
    (OutputWriteError, EXIT_WRITE_FAILED),
    (ConfigError, EXIT_USAGE),
    (OutputError, EXIT_USAGE),
    (PyframepredError, EXIT_USAGE),
)


class OneLineParser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line (not the whole usage text), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (--help lists the options)\n")


def flag_wording(text: str, parser: argparse.ArgumentParser) -> str:
    """A library message as the command line says it: each backquoted setting that is one of
    ``parser``'s options becomes its flag (```batch_size``` -> ``--batch-size``); other
    backquoted names lose their quotes."""
    flags = {a.dest: a.option_strings[0] for a in parser._actions if a.option_strings}

    def sub(m):
        return flags.get(m.group(1), m.group(1))

    return re.sub(r"`([A-Za-z_][A-Za-z0-9_]*)`", sub, text)


def exit_code(exc: BaseException) -> int:
    for cls, code in _EXIT_CODES:
        if isinstance(exc, cls):
            return code
    raise TypeError(f"no exit status for {type(exc).__name__}")


def report(exc: BaseException, parser: argparse.ArgumentParser, hint: str = "") -> int:
    """Print ``error: <message>`` (one line, flags named as on the command line); the status."""
    print(f"error: {flag_wording(str(exc), parser)}{hint}", file=sys.stderr)
    return exit_code(exc)


def plain_warnings(main=None, *, parser=None):
    """Decorates a CLI ``main``: warnings print as ``warning: <message>`` lines on stderr, without
    the source file and line Python's default format adds (that is for developers, not users);
    ``parser``: a function giving the command's parser, whose flags name the settings in the
    warnings (:func:`flag_wording`). Use as ``@plain_warnings`` or
    ``@plain_warnings(parser=build_parser)``."""
    if main is None:
        return functools.partial(plain_warnings, parser=parser)

    def show(message, category, filename, lineno, file=None, line=None):
        text = str(message) if parser is None else flag_wording(str(message), parser())
        print(f"warning: {text}", file=file if file is not None else sys.stderr)

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        with warnings.catch_warnings():  # restores showwarning afterwards
            warnings.showwarning = show
            return main(*args, **kwargs)

    return wrapper


def parse_fps(text: str) -> float:
    """argparse type of --fps: a positive number or fraction N/D (e.g. 25, 29.97, 30000/1001)."""
    try:
        value = float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(
            f"--fps takes a positive number or a fraction N/D (e.g. 30000/1001), got {text!r}"
        ) from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"--fps must be a positive number or a fraction N/D, got {text!r}")
    return value


def interruptible(run, parser: argparse.ArgumentParser, args) -> int:
    """``run(parser, args, written)``, where Ctrl-C is one line and :data:`EXIT_INTERRUPTED`,
    not a traceback (``written``: the outputs ``run`` has finished, each written atomically)."""
    written: list = []
    try:
        return run(parser, args, written)
    except KeyboardInterrupt:
        print("\ninterrupted" + ("" if written else "; nothing written"), file=sys.stderr)
        return EXIT_INTERRUPTED


def check_positive(args, names) -> None:
    """``ConfigError`` for the first of the integer arguments ``names`` that is below 1."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"`{name}` must be >= 1, got {value}")
