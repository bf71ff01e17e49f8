"""CRC-32C (Castagnoli) without the import cost of the ``crc32c`` package's ``__init__``.

``import crc32c`` (2.x) imports ``importlib.metadata`` and its e-mail parser to look up
its own ``__version__``, and its argparse command line: on a cold start that was about
half of ``import resumelog``. Only the C function is needed, so this module loads the
extension module ``crc32c._crc32c`` straight from the installed package and registers
it under that name (a later ``import crc32c`` reuses it). Should the package's layout
change, it falls back to ``from crc32c import crc32c``.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["crc32c"]

_EXT = "crc32c._crc32c"


def _load() -> Callable[..., int]:
    mod: Any = sys.modules.get(_EXT)
    if mod is None:
        try:
            pkg = importlib.util.find_spec("crc32c")  # finds the package without running its __init__
            locations = list(pkg.submodule_search_locations or []) if pkg is not None else []
            spec = importlib.machinery.PathFinder.find_spec(_EXT, locations)
            if spec is None or not isinstance(spec.loader, importlib.machinery.ExtensionFileLoader):
                raise ImportError(f"no extension module {_EXT} in {locations}")
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            sys.modules[_EXT] = mod
        except ImportError:
            from crc32c import crc32c as fn

            return fn  # type: ignore[no-any-return]
    return mod.crc32c  # type: ignore[no-any-return]


crc32c: Callable[..., int] = _load()
"""``crc32c(data, value=0) -> int``: the CRC-32C of ``data`` (bytes-like), continuing from ``value``."""
