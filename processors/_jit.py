"""Compiled kernels: the one module that imports numba.

``@kernel`` marks a function written in the numba subset (scalars, numpy arrays,
loops) as a compiled kernel: ``numba.njit(cache=True, nogil=True,
error_model="numpy")``. No ``fastmath``: kernels must give the same floats as
the plain-Python references (IEEE operations in source order), and
``error_model="numpy"`` makes a float division by zero give inf/NaN like numpy
instead of raising.

Lazy: importing a module with kernels neither imports numba (~0.4 s) nor
compiles anything, so commands that never run a detector start as fast as
before. The first call of any kernel imports numba and turns every kernel
defined so far into a numba dispatcher, also replacing the module-level names
of the kernels in the modules that define kernels (a kernel may call another
kernel defined in, or imported into, such a module; later calls skip the
proxy). Each kernel is compiled on its first call for the argument types it
gets, or loaded from numba's on-disk cache; callers pass fixed dtypes and
Python ``float``/``int``/``bool`` scalars so there is one signature per kernel.

Cache: next to the sources (``processors/__pycache__``) when that directory is
writable, otherwise numba's user-wide cache directory (``~/.cache/numba``, or
``$XDG_CACHE_HOME/numba``); ``NUMBA_CACHE_DIR`` overrides both (read-only
installs, containers).
"""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Callable
from typing import Any, Final, TypeVar, cast

__all__ = ["kernel", "numba_version", "typed_kernel"]

F = TypeVar("F", bound=Callable[..., Any])

#: Kernels not yet handed to numba: (proxy, explicit signature or None, function).
_PENDING: Final[list[tuple[Callable[..., Any], str | None, Callable[..., Any]]]] = []
#: id(proxy) -> numba dispatcher, once materialised.
_DISPATCHERS: Final[dict[int, Callable[..., Any]]] = {}
_MODULES: Final[set[str]] = set()
_LOCK: Final = threading.Lock()
_OPTIONS: Final[dict[str, Any]] = {"cache": True, "nogil": True, "error_model": "numpy"}


def kernel(fn: F) -> F:
    """Mark ``fn`` as a compiled kernel (see the module docstring)."""
    return _register(fn, None)


def typed_kernel(signature: str) -> Callable[[F], F]:
    """A kernel with one explicit numba signature: compiled once, arguments
    converted to it (for helpers called from kernels with varying argument
    types, which would otherwise be compiled once per combination)."""

    def wrap(fn: F) -> F:
        return _register(fn, signature)

    return wrap


def _register(fn: F, signature: str | None) -> F:

    @functools.wraps(fn)
    def first_call(*args: Any, **kwargs: Any) -> Any:
        _materialise()
        return _DISPATCHERS[id(first_call)](*args, **kwargs)

    with _LOCK:
        _PENDING.append((first_call, signature, fn))
        _MODULES.add(fn.__module__)
    return cast(F, first_call)


def _materialise() -> None:
    with _LOCK:
        if not _PENDING:
            return
        import numba  # lazy on purpose, see the module docstring

        made = {id(proxy): (proxy, numba.njit(**_OPTIONS)(fn)) for proxy, _, fn in _PENDING}
        typed = [(made[id(proxy)][1], sig) for proxy, sig, _ in _PENDING if sig is not None]
        _PENDING.clear()
        _DISPATCHERS.update({k: disp for k, (_, disp) in made.items()})
        for module in _MODULES:
            namespace = vars(sys.modules[module])
            for key, value in list(namespace.items()):
                entry = made.get(id(value))
                if entry is not None and entry[0] is value:
                    namespace[key] = entry[1]
        # like ``njit(signature)``: one compiled signature, others converted to it
        for disp, sig in typed:
            disp.compile(sig)
            disp.disable_compile()


def numba_version() -> str:
    """The numba version in use (imports numba)."""
    import numba

    return str(numba.__version__)
