"""The fold's paths: NumPy is optional (a plain ``pip install .`` folds without it), and
``RESUMELOG_FOLD`` chooses; the compiled kernels (``resumelog._native``) are optional
too, and ``RESUMELOG_NATIVE`` chooses. Each case runs in a fresh interpreter, where
``sys.modules["numpy"] = None`` makes NumPy unimportable as on a machine without it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")

NO_NUMPY = "import sys; sys.modules['numpy'] = None\n"

FOLD = """
import resumelog, tempfile
from resumelog import _fastfold
print("enabled", _fastfold.ENABLED)
ck = resumelog.open(tempfile.mkdtemp(), run_id="r1")
with ck.writer("w") as w:
    for i in range(300):
        w.emit(f"s{i}")
        w.record(f"0_s{i}_0", f"s{i}", 1)
        if i % 3:
            w.record(f"0_s{i}_0_0", f"s{i}", -2)
ck.compact()
fresh = resumelog.open(ck.store.url, create=False)
print("completed", len(fresh.completed), fresh.is_completed("s0"), fresh.is_completed("s1"))
"""


def run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    src = env.pop("src", SRC)
    e = {k: v for k, v in os.environ.items() if not k.startswith(("RESUMELOG_FOLD", "RESUMELOG_NATIVE"))}
    e.update(env, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, timeout=120)


def test_without_numpy_the_reference_path_folds():
    out = run(NO_NUMPY + FOLD)
    assert out.returncode == 0, out.stderr
    assert "enabled False" in out.stdout
    assert "completed 200 False True" in out.stdout


@pytest.mark.parametrize("mode", ["python", "numpy", "auto"])
def test_each_mode_folds_the_same(mode):
    pytest.importorskip("numpy")
    out = run(FOLD, RESUMELOG_FOLD=mode, RESUMELOG_FOLD_MIN_RECORDS="0")
    assert out.returncode == 0, out.stderr
    assert f"enabled {mode != 'python'}" in out.stdout
    assert "completed 200 False True" in out.stdout


def test_numpy_required_but_missing_is_a_clear_error():
    out = run(NO_NUMPY + "import resumelog", RESUMELOG_FOLD="numpy")
    assert out.returncode != 0
    assert "resumelog[fast]" in out.stderr


def test_an_unknown_mode_is_refused():
    out = run("import resumelog", RESUMELOG_FOLD="turbo")
    assert out.returncode != 0
    assert "RESUMELOG_FOLD must be auto, numpy or python" in out.stderr


NATIVE = "from resumelog import _compiled\nprint('native', _compiled.native is not None)\n"


@pytest.mark.parametrize("native", ["0", "auto"])
def test_with_and_without_the_compiled_kernels_the_fold_is_the_same(native):
    pytest.importorskip("numpy")
    out = run(NATIVE + FOLD, RESUMELOG_NATIVE=native, RESUMELOG_FOLD_MIN_RECORDS="0")
    assert out.returncode == 0, out.stderr
    assert "completed 200 False True" in out.stdout
    if native == "0":
        assert "native False" in out.stdout


WHY = {
    "changed": "was built from another _native.c: reinstall",
    "missing": "cannot be used: not built (No module named 'resumelog._native')",
}


@pytest.mark.parametrize("case", sorted(WHY))
def test_a_module_that_cannot_be_used_is_left_aside(tmp_path, case):
    """``changed``: an editable install whose ``_native.c`` changed since it was
    compiled; ``missing``: an install on a machine without a compiler. ``auto`` folds
    the same without the module, ``1`` says why it cannot be used."""
    from resumelog import _compiled

    if case == "changed" and _compiled.native is None:
        pytest.skip(f"resumelog._native is not in use: {_compiled.why_not}")
    tree = tmp_path / "src"
    left_out = ("__pycache__", "_native*.so", "_native*.pyd") if case == "missing" else ("__pycache__",)
    shutil.copytree(SRC, tree, ignore=shutil.ignore_patterns(*left_out))
    if case == "changed":
        with open(tree / "resumelog" / "_native.c", "a") as f:
            f.write("/* changed */\n")
    out = run(NATIVE + FOLD, src=str(tree))
    assert out.returncode == 0, out.stderr
    assert "native False" in out.stdout and "completed 200 False True" in out.stdout
    out = run(NATIVE, src=str(tree), RESUMELOG_NATIVE="1")
    assert out.returncode != 0
    assert WHY[case] in out.stderr


def test_an_unknown_native_mode_is_refused():
    out = run("import resumelog", RESUMELOG_NATIVE="maybe")
    assert out.returncode != 0
    assert "RESUMELOG_NATIVE must be auto, 0 or 1" in out.stderr
