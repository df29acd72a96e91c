"""Reading files that may come from anyone, without running code they hold.

`torch.load(weights_only=True)` unpickles tensors, numbers, strings and plain containers only; a pickle
that names any other global (the way a pickle runs code) is refused. Every failure here is one
`AnymaskError` line of our own words: PyTorch's message advises `weights_only=False`, which is wrong
for a corrupt file and dangerous for a hostile one.
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from anymask.errors import AnymaskError

_GLOBAL = re.compile(r"GLOBAL (\S+)")


def load_torch_file(path: str | Path, what: str = "file") -> Any:
    """The contents of a torch.save file, read with weights_only=True; errors are one line."""
    path = Path(path)
    try:
        with warnings.catch_warnings():  # "pickle protocol 4 ..." notes are not the user's business
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise AnymaskError(f"cannot read {what} {path}: {refusal_reason(error)}") from None
    except Exception as error:  # a truncated zip, random bytes: torch raises many types
        raise AnymaskError(
            f"cannot read {what} {path}: the file is truncated or corrupt ({first_sentence(error)})"
        ) from None


def refusal_reason(error: Exception) -> str:
    """Why the safe unpickler refused a file, without PyTorch's advice to load it unsafely."""
    match = _GLOBAL.search(str(error))
    if match:
        return (
            f"it holds a reference to {match.group(1)}, and anymask loads only tensors and plain "
            "values (loading anything else could run code); the file is corrupt or not from anymask"
        )
    return "it is not a PyTorch tensor file, or it is corrupt"


def first_sentence(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text.split(". ")[0].rstrip(".")[:200]
