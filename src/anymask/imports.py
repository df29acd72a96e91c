"""Importing a user's callable named 'package.module:function' (models, datasets), as `python -m` would.

Naming a callable runs its module's code: anymask imports one only when a command line, a config file or a
sweep file the user passes names it, never because a run folder or report does.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from anymask.errors import AnymaskError

SEPARATOR = ":"


def is_factory_name(name: str) -> bool:
    """True for 'package.module:function' names, which are imported instead of looked up."""
    return SEPARATOR in name


def import_factory(name: str, flag: str = "--model", signature: str = "a factory") -> Any:
    """The callable named 'package.module:function' (the function part may be dotted: 'mod:Class.build');
    `flag` and `signature` word the one-line errors."""
    module_name, _, attribute = name.partition(SEPARATOR)
    if not module_name or not attribute:
        raise AnymaskError(f"{flag} '{name}' names no factory; write it as package.module:function")
    _working_directory_importable()
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is not None and f"{module_name}.".startswith(f"{error.name}."):
            raise AnymaskError(
                f"{flag} '{name}': no module named '{error.name}' in the working directory ({os.getcwd()}) "
                "or on PYTHONPATH"
            ) from None
        raise AnymaskError(f"{flag} '{name}': importing {module_name} failed: {one_line(error)}") from None
    except Exception as error:
        raise AnymaskError(f"{flag} '{name}': importing {module_name} failed: {one_line(error)}") from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise AnymaskError(f"{flag} '{name}': {module_name} has no attribute '{attribute}'")
        target = getattr(target, part)
    if not callable(target):
        raise AnymaskError(f"{flag} '{name}' is a {type(target).__name__}, not {signature}")
    return target


def _working_directory_importable() -> None:
    """Put the working directory on sys.path, as `python -m` does (the `anymask` script does not).

    Sweep workers are spawned processes: they inherit this sys.path and import the factory again.
    """
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def one_line(error: BaseException) -> str:
    if isinstance(error, SyntaxError):
        return f"SyntaxError: {error.msg} ({error.filename}, line {error.lineno})"
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
