"""Optional features live in pip extras; asking for one whose package is missing is one line naming it."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from anymask.errors import AnymaskError


def missing_extra(module: str, extra: str, feature: str) -> AnymaskError:
    return AnymaskError(
        f"{feature} needs the '{module.split('.')[0]}' package, which is not installed; "
        f"install it with: pip install 'anymask[{extra}]'"
    )


def check_installed(module: str, extra: str, feature: str) -> None:
    """Fail before anything is written, without paying for the import."""
    if importlib.util.find_spec(module.split(".")[0]) is None:
        raise missing_extra(module, extra, feature)


def require(module: str, extra: str, feature: str) -> ModuleType:
    """`module`, imported; a missing package is an `AnymaskError` naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        if error.name is None or module.split(".")[0] != error.name.split(".")[0]:
            raise  # the package is there but broken: its own error says more
        raise missing_extra(module, extra, feature) from None
