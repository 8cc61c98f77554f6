"""The errors the command line turns into exit codes (design.md, "Exit codes").

Raise `InputError` (or `ModelError`) for anything the user can fix by changing a flag or the input:
the CLI prints the message and exits 2, so the message must name the flag, path, column, row or
value. `GateError` is a quality gate refusing to publish (exit 3). Anything else is a bug or an
infrastructure failure: traceback and exit 1.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad arguments or bad input; the CLI exits with code 2 and this message."""

    exit_code = 2


class InputError(UserError):
    """A flag, path, column, row or value the job cannot work with."""


class ModelError(UserError):
    """The model argument names nothing loadable."""


class GateError(RuntimeError):
    """A quality gate refused to publish; nothing was published (exit 3)."""

    exit_code = 3
