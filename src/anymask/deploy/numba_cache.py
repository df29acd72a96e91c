"""numba's on-disk cache, keyed on every source file a compiled function depends on.

numba keys a cached function on its own file (a stamp) and its own bytecode. The program's loop
(`program_loop`) has the kernels of `program_kernels` and `numba_atomics` compiled into it, and the
kernels have constants of `program_run`; after a change to those files alone, numba would load the
old machine code (seen while the kernels were built: a checkout that changed `program_kernels.py`
but not `program_loop.py` ran the old kernels). `key_on_sources` adds a fingerprint of all of them
to each function's cache key, so such a change compiles afresh.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

SOURCES = ("numba_atomics.py", "program_kernels.py", "program_loop.py", "program_run.py")
"""The files (beside this one) whose code or constants the program's compiled functions contain."""


def sources_fingerprint(names: Iterable[str] = SOURCES) -> str:
    digest = hashlib.sha256()
    for name in names:
        digest.update((Path(__file__).parent / name).read_bytes())
    return digest.hexdigest()


def key_on_sources(module: ModuleType, fingerprint: str | None = None) -> None:
    """Key the cache of every numba function defined in `module` on `fingerprint` as well (default:
    that of SOURCES). numba's cache internals differ between versions: where they are not found,
    functions keep numba's own key."""
    fingerprint = fingerprint or sources_fingerprint()
    for value in list(vars(module).values()):
        cache = getattr(value, "_cache", None)
        own_key = getattr(cache, "_index_key", None)
        if getattr(value, "__module__", None) != module.__name__ or own_key is None:
            continue
        if getattr(cache, "anymask_fingerprint", None) is not None:
            continue  # keyed already

        def index_key(signature: object, codegen: object, own_key=own_key) -> tuple:  # type: ignore[no-untyped-def]
            return (*own_key(signature, codegen), fingerprint)

        cache._index_key = index_key
        cache.anymask_fingerprint = fingerprint
