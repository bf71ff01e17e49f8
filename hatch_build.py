"""Build hook: compile the optional extension ``resumelog._native`` when possible.

The extension (``src/resumelog/_native.c``: C loops of the fold and of layer encoding)
is built with the compiler and flags Python was built with (``sysconfig``), and only
if both are there: on a machine without a C compiler or without Python's headers the
hook prints why and the wheel is the pure-Python one, which computes the same results
(``RESUMELOG_NATIVE=0`` skips the build on purpose). A regular wheel gets the module
and a platform tag; an editable install gets it compiled into ``src/resumelog``, where
the editable import path finds it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zlib
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCE = os.path.join("src", "resumelog", "_native.c")


def compile_native(root: str, out_dir: str) -> str | None:
    """Compile the extension into ``out_dir``; its path, or ``None`` (with the reason
    printed) if it cannot be built here."""
    src = os.path.join(root, SOURCE)
    include = sysconfig.get_paths().get("include") or ""
    if not os.path.exists(os.path.join(include, "Python.h")):
        print(f"resumelog: no Python.h in {include!r}: building without resumelog._native", file=sys.stderr)
        return None
    cc = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
    out = os.path.join(out_dir, "_native" + (sysconfig.get_config_var("EXT_SUFFIX") or ".so"))
    with open(src, "rb") as f:
        digest = f"{zlib.crc32(f.read()):08x}"
    # (the source's CRC-32, checked at import: a module left from an older source is not used)
    cmd = [*cc, "-O2", "-fPIC", "-shared", "-std=c99", f"-I{include}", f'-DRESUMELOG_NATIVE_SOURCE="{digest}"']
    cmd += [src, "-o", out]
    if sys.platform == "darwin":
        cmd[1:1] = ["-undefined", "dynamic_lookup"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"resumelog: no C compiler ({exc}): building without resumelog._native", file=sys.stderr)
        return None
    if done.returncode != 0:
        print(f"resumelog: compiling resumelog._native failed, building without it:\n{done.stderr}", file=sys.stderr)
        return None
    return out


class NativeBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    """Adds ``resumelog._native`` to wheels (and editable installs) when it compiles."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel" or os.environ.get("RESUMELOG_NATIVE", "1") == "0":
            return
        self._tmp = tempfile.mkdtemp(prefix="resumelog-native-")
        built = compile_native(self.root, self._tmp)
        if version == "editable":  # found through the editable path; the wheel stays pure
            target = os.path.join(
                self.root, "src", "resumelog", "_native" + (sysconfig.get_config_var("EXT_SUFFIX") or ".so")
            )
            if built is None:
                if os.path.exists(target):
                    os.remove(target)  # (not one built from an older source)
            else:
                shutil.move(built, target)
            return
        if built is None:
            return
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        build_data["force_include"][built] = "resumelog/" + os.path.basename(built)

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        """Remove the build's temporary directory (the module is in the wheel by now)."""
        tmp = getattr(self, "_tmp", None)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
