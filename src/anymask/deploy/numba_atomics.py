"""Atomic counters for numba code, so threads can share the work of one step and wait for each other.

numba has no CPU atomics of its own; these intrinsics emit LLVM's atomic instructions, which order the
plain loads and stores around them too (a thread that sees a counter's new value also sees every write
made before it was raised). `relax` gives the core away while a thread waits for one that is not
running (a busy machine), through the C library's `sched_yield`, where there is one. Imported only
when numba is installed; compiled functions that use these still cache on disk.
"""

from __future__ import annotations

import sys

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_HAS_SCHED_YIELD = sys.platform != "win32"


def _element_pointer(context, builder, signature, args):  # type: ignore[no-untyped-def]
    array_type = signature.args[0]
    array = context.make_array(array_type)(context, builder, args[0])
    return cgutils.get_item_pointer(context, builder, array_type, array, [args[1]])


@intrinsic
def fetch_add(typingctx, counters, index, value):  # type: ignore[no-untyped-def]
    """counters[index] += value atomically (sequentially consistent); returns the old value."""
    signature = types.int64(counters, types.intp, types.int64)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        pointer = _element_pointer(context, builder, signature, args)
        return builder.atomic_rmw("add", pointer, args[2], "seq_cst")

    return signature, codegen


@intrinsic
def load_acquire(typingctx, counters, index):  # type: ignore[no-untyped-def]
    """counters[index], read atomically; later reads see what was written before it was raised."""
    signature = types.int64(counters, types.intp)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        pointer = _element_pointer(context, builder, signature, args)
        return builder.load_atomic(pointer, "acquire", 8)

    return signature, codegen


@intrinsic
def relax(typingctx):  # type: ignore[no-untyped-def]
    """Let another thread run on this core (sched_yield; nothing where the C library has none)."""
    signature = types.int32()

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        int32 = ir.IntType(32)
        if not _HAS_SCHED_YIELD:
            return int32(0)
        function = cgutils.get_or_insert_function(builder.module, ir.FunctionType(int32, []), "sched_yield")
        return builder.call(function, [])

    return signature, codegen
