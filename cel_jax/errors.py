"""User errors: what the `cel-jax` command line reports as one `error: ...` line (exit 2), no traceback.

The library raises plain `ValueError` / `FileNotFoundError` / `NotADirectoryError` for bad input (config
values, data rows, paths); the command line treats those, and `UserError`, as the user's to fix. Any other
exception is a bug and keeps its traceback. `--verbose` (or CEL_JAX_VERBOSE=1) prints the traceback too.
"""

from __future__ import annotations

import sys
import traceback

EXIT_USER_ERROR = 2  # like argparse and most command-line tools: usage / input errors
VERBOSE_HINT = "(run with --verbose for the traceback)"


class UserError(ValueError):
    """Bad input the user can fix (flag, config key or value, file); the message says what and how."""


USER_ERRORS = (UserError, ValueError, FileNotFoundError, NotADirectoryError)


def one_line(exc: BaseException) -> str:
    """`exc`'s message on one line; an embedded traceback (config files) gives its last line."""
    text = str(exc)
    if isinstance(exc, FileNotFoundError | NotADirectoryError) and exc.filename and exc.strerror:
        text = f"{exc.strerror}: {exc.filename}"  # "[Errno 2] ..." -> "No such file or directory: x"
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    if "Traceback (most recent call last):" in lines:
        return lines[-1]
    return " ".join(lines)


def report(exc: BaseException, verbose: bool, file=None) -> int:
    """Print `exc` as the command line's error (traceback first when verbose); return the exit code."""
    file = sys.stderr if file is None else file
    if verbose:
        traceback.print_exception(exc, file=file)
    hint = "" if verbose or isinstance(exc, UserError) else f" {VERBOSE_HINT}"
    print(f"error: {one_line(exc)}{hint}", file=file, flush=True)
    return EXIT_USER_ERROR
