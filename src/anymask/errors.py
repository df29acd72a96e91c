"""The one exception type users see: a single line naming the problem and the fix."""

from __future__ import annotations

import sys
from typing import Any


class AnymaskError(Exception):
    """An error caused by the user's input (flags, files, data).

    The command-line tool prints its message as one line on stderr and exits non-zero, without a
    traceback. Library users catch it like any exception. Messages say what was wrong and what to do.
    """


def one_line_warning(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> None:
    """`warnings.showwarning` for users: one line, no file name or source line (set by the CLI and in
    sweep workers)."""
    text = " ".join(str(message).split()) or category.__name__
    print(f"anymask: warning: {text}", file=sys.stderr)
