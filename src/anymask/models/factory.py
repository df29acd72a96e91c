"""Your own model by name: `--model package.module:function` imports a factory and builds from it.

A factory has the signature of the zoo's builders, `function(num_classes, input_shape, width) ->
nn.Module` (input_shape is (channels, height, width)), and lives in a module importable from the
working directory or PYTHONPATH. Naming a factory runs its module's code, as `python -m` would: anymask
imports one only when a command line, a config file or a sweep file the user passes names it, never
because a run folder or report does.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from typing import Any

from torch import nn

from anymask.errors import AnymaskError

SEPARATOR = ":"
SIGNATURE = "function(num_classes, input_shape, width) -> nn.Module"


def is_factory_name(name: str) -> bool:
    """True for 'package.module:function' names, which are imported instead of looked up."""
    return SEPARATOR in name


def import_factory(name: str) -> Any:
    """The callable named 'package.module:function' (the function part may be dotted: 'mod:Class.build')."""
    module_name, _, attribute = name.partition(SEPARATOR)
    if not module_name or not attribute:
        raise AnymaskError(f"--model '{name}' names no factory; write it as package.module:function")
    _working_directory_importable()
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is not None and f"{module_name}.".startswith(f"{error.name}."):
            raise AnymaskError(
                f"--model '{name}': no module named '{error.name}' in the working directory ({os.getcwd()}) "
                "or on PYTHONPATH"
            ) from None
        raise AnymaskError(f"--model '{name}': importing {module_name} failed: {_one_line(error)}") from None
    except Exception as error:
        raise AnymaskError(f"--model '{name}': importing {module_name} failed: {_one_line(error)}") from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise AnymaskError(f"--model '{name}': {module_name} has no attribute '{attribute}'")
        target = getattr(target, part)
    if not callable(target):
        raise AnymaskError(f"--model '{name}' is a {type(target).__name__}, not a factory {SIGNATURE}")
    return target


def build(
    name: str, factory: Any, num_classes: int, input_shape: tuple[int, int, int], width: float
) -> nn.Module:
    """Call a factory, checking that it takes the three arguments and returns an nn.Module."""
    try:
        inspect.signature(factory).bind(num_classes, input_shape, width)
    except TypeError:
        raise AnymaskError(f"--model '{name}' must take three arguments: {SIGNATURE}") from None
    except ValueError:  # no signature to read (a builtin): let the call decide
        pass
    model = factory(num_classes, input_shape, width)
    if not isinstance(model, nn.Module):
        raise AnymaskError(
            f"--model '{name}' returned a {type(model).__name__}, not a torch.nn.Module; "
            f"a factory is {SIGNATURE}"
        )
    return model


def _working_directory_importable() -> None:
    """Put the working directory on sys.path, as `python -m` does (the `anymask` script does not).

    Sweep workers are spawned processes: they inherit this sys.path and import the factory again.
    """
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def _one_line(error: BaseException) -> str:
    if isinstance(error, SyntaxError):
        return f"SyntaxError: {error.msg} ({error.filename}, line {error.lineno})"
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
