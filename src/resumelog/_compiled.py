"""The optional compiled kernels, :mod:`resumelog._native`, when built and current.

``pip install .`` compiles ``_native.c`` when a C compiler and Python's headers are
there (``hatch_build.py``); without them resumelog is pure Python and computes the same
results, more slowly. Each kernel is the C loop of one Python expression, and every
caller keeps that expression as its fallback (``property_tests/test_native.py`` checks
each kernel against it).

``RESUMELOG_NATIVE``: ``auto`` (default: use the module if it is importable and built
from the ``_native.c`` beside it), ``0`` (never use it: the path of an install without
a compiler) or ``1`` (require it: an :class:`ImportError` says why it cannot be used).
"""

from __future__ import annotations

import importlib
import os
import zlib
from collections.abc import MutableMapping
from typing import Any

__all__ = ["MODE", "native"]

MODE = os.environ.get("RESUMELOG_NATIVE", "auto").strip().lower() or "auto"
"""``RESUMELOG_NATIVE``: ``auto``, ``0`` or ``1``."""
if MODE not in ("auto", "0", "1"):
    raise ValueError(f"RESUMELOG_NATIVE must be auto, 0 or 1, not {MODE!r}")


def _load() -> tuple[Any, str]:
    """The module and ``""``, or ``None`` and why it is not used."""
    if MODE == "0":
        return None, "RESUMELOG_NATIVE=0"
    try:
        _native = importlib.import_module("resumelog._native")
    except ImportError as exc:
        return None, f"not built ({exc}); `pip install .` builds it where a C compiler is present"
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_native.c")
    try:
        with open(src, "rb") as f:
            digest = f"{zlib.crc32(f.read()):08x}"  # (as hatch_build.py compiles it in)
    except OSError:
        return _native, ""  # (an install without the source: nothing to compare)
    if digest != _native.SOURCE:
        return None, f"{_native.__file__} was built from another _native.c: reinstall (pip install -e .)"
    return _native, ""


native: Any
why_not: str
native, why_not = _load()
"""The module, or ``None`` (``why_not`` says why)."""
if native is None and MODE == "1":
    raise ImportError(f"RESUMELOG_NATIVE=1 but resumelog._native cannot be used: {why_not}")
if native is not None:
    MutableMapping.register(native.SourceMap)  # (a dict's behaviour: isinstance checks see a mapping)
