"""Your own model by name: `--model package.module:function` imports a factory and builds from it.

A factory has the signature of the zoo's builders, `function(num_classes, input_shape, width) ->
nn.Module` (input_shape is (channels, height, width)), and lives in a module importable from the
working directory or PYTHONPATH. Naming a factory runs its module's code, as `python -m` would: anymask
imports one only when a command line, a config file or a sweep file the user passes names it, never
because a run folder or report does.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from anymask.errors import AnymaskError
from anymask.imports import SEPARATOR, is_factory_name  # noqa: F401  (re-exported)
from anymask.imports import import_factory as import_named

SIGNATURE = "function(num_classes, input_shape, width) -> nn.Module"


def import_factory(name: str) -> Any:
    """The model factory named 'package.module:function' (the function part may be dotted)."""
    return import_named(name, "--model", f"a factory {SIGNATURE}")


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
