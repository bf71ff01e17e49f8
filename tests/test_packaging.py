"""Packaging: one version, the licence, project URLs, the extras split, pytest options,
and what ``import resumelog`` costs (issue 21)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import resumelog
from resumelog.format import crc32c

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]


def test_version_is_written_once_and_the_cli_reports_it() -> None:
    assert "version" not in PROJECT and PROJECT["dynamic"] == ["version"]
    source = ROOT / PYPROJECT["tool"]["hatch"]["version"]["path"]
    assert source == ROOT / "src" / "resumelog" / "__init__.py"
    # hatchling's default version source: the one `__version__ = "..."` assignment
    found = re.findall(r'^__version__\s*=\s*"([^"]+)"', source.read_text(), re.M)
    assert found == [resumelog.__version__]
    assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?\w+)*", resumelog.__version__)
    out = subprocess.run(
        [sys.executable, "-m", "resumelog.cli", "--version"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"resumelog {resumelog.__version__}"


def test_hatchling_builds_the_version_from_the_source() -> None:
    if importlib.util.find_spec("hatchling") is None:
        pytest.skip("hatchling is not installed (pip builds in an isolated environment)")
    from hatchling.metadata.core import ProjectMetadata
    from hatchling.plugin.manager import PluginManager

    assert ProjectMetadata(str(ROOT), PluginManager()).version == resumelog.__version__


def test_licence_is_the_apache_2_text() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert PROJECT["license"] == {"text": "Apache-2.0"}
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "http://www.apache.org/licenses/" in text
    assert "END OF TERMS AND CONDITIONS" in text and "APPENDIX: How to apply the Apache License" in text
    sections = re.findall(r"^\s+(\d+)\. [A-Z][^.]+\.", text, re.M)
    assert sections == [str(i) for i in range(1, 10)]


def test_project_urls() -> None:
    urls = PROJECT["urls"]
    assert set(urls) >= {"Homepage", "Documentation", "Source", "Issues"}
    assert all(u.startswith("https://") for u in urls.values())
    assert urls["Issues"] == urls["Source"] + "/issues"


def test_extras_split_test_lint_docs_fast_and_dev_is_all_of_them() -> None:
    extras = PROJECT["optional-dependencies"]

    def names(reqs: list[str]) -> set[str]:
        return {re.split(r"[\[<>=~! ]", r, maxsplit=1)[0].lower() for r in reqs}

    assert extras["dev"] == ["resumelog[test,lint,docs,fast]"]
    assert names(extras["fast"]) == {"numpy"}  # the fold's fast path; `pip install .` runs the reference
    assert names(extras["lint"]) == {"ruff", "mypy"}
    assert names(extras["docs"]) == {"mkdocs", "mkdocs-material", "mkdocstrings"}
    test = names(extras["test"])
    assert {"pytest", "pytest-xdist", "pytest-timeout", "hypothesis", "ray", "pyarrow", "s3fs"} <= test
    assert not test & (names(extras["lint"]) | names(extras["docs"]))  # the suite needs neither


def test_pytest_uses_every_core_and_n_0_overrides_it() -> None:
    addopts = PYPROJECT["tool"]["pytest"]["ini_options"]["addopts"].split()
    assert addopts[addopts.index("-n") + 1] == "auto"
    env = {**os.environ, "PYTEST_ADDOPTS": ""}
    one = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "0", "-q", "tests/test_packaging.py", "-k", "project_urls"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env=env,
    )
    assert one.returncode == 0, one.stdout + one.stderr
    assert "1 passed" in one.stdout and "bringing up nodes" not in one.stdout


_IMPORT = """
import sys
before = set(sys.modules)
import resumelog
print(" ".join(sorted(set(sys.modules) - before)))
"""


def test_import_resumelog_reads_no_package_metadata() -> None:
    """``crc32c``'s ``__init__`` looks up its version with ``importlib.metadata``; resumelog
    loads only its C extension, and imports neither Ray, fsspec backends nor the CLI."""
    out = subprocess.run([sys.executable, "-c", _IMPORT], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    loaded = set(out.stdout.split())
    assert "resumelog" in loaded and "crc32c._crc32c" in loaded
    assert not loaded & {"importlib.metadata", "crc32c", "crc32c._cli", "argparse", "ray", "s3fs", "resumelog.cli"}


def test_crc32c_is_the_castagnoli_crc_of_the_crc32c_package() -> None:
    import crc32c as package

    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    data = bytes(range(256)) * 41
    assert crc32c(data) == package.crc32c(data)
    assert crc32c(data[100:], crc32c(data[:100])) == crc32c(data)
    assert crc32c(memoryview(data)[3:77]) == package.crc32c(data[3:77])


def test_docstrings_cite_the_repositorys_own_docs() -> None:
    """No citation of the design notes that live outside the repository; every
    ``docs/<page>.md`` a module cites exists."""
    cited = set()
    for path in sorted((ROOT / "src" / "resumelog").rglob("*.py")):
        text = path.read_text()
        assert "DESIGN" not in text, path
        cited |= set(re.findall(r"docs/([\w/-]+\.md)", text))
    assert cited >= {"concepts.md", "format.md", "guarantees.md"}
    assert all((ROOT / "docs" / page).is_file() for page in cited), cited


def _wheel(tmp_path: Path, **env: str) -> tuple[str, set[str]]:
    """Build a wheel of this tree (no isolation: hatchling from the test environment);
    its file name and the names in it."""
    pytest.importorskip("hatchling")
    import zipfile

    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **env},
    )
    assert out.returncode == 0, out.stderr
    (wheel,) = tmp_path.glob("resumelog-*.whl")
    return wheel.name, set(zipfile.ZipFile(wheel).namelist())


def test_without_a_c_compiler_the_wheel_is_pure_python(tmp_path: Path) -> None:
    """``pip install .`` on a machine with no compiler: the build hook skips the optional
    extension and the wheel is the pure-Python one (which folds the same: test_fold_paths)."""
    name, files = _wheel(tmp_path, CC=str(tmp_path / "no-such-cc"))
    assert name.endswith("-py3-none-any.whl")
    assert "resumelog/__init__.py" in files and "resumelog/_compiled.py" in files
    assert not [f for f in files if f.startswith("resumelog/_native") and not f.endswith((".c", ".pyi"))]


def test_with_a_c_compiler_the_wheel_holds_the_kernels(tmp_path: Path) -> None:
    import shutil
    import sysconfig

    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None and os.environ.get("CI") != "true":
        pytest.skip(f"no C compiler ({cc}) on this machine")
    name, files = _wheel(tmp_path)
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    assert f"resumelog/_native{suffix}" in files
    assert not name.endswith("-none-any.whl")  # a platform wheel
