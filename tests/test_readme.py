"""The README's promises: its two commands, its usage example, the demo."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def readme_commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", README, re.S)
    assert block is not None and README.index(block.group(0)) < 40, "commands must open the README"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_starts_with_exactly_two_commands():
    cmds = readme_commands()
    assert cmds == [
        "pip install . && resumelog demo",
        "pip install -e '.[dev]' && pip install --no-deps 'nemo-curator==1.4.0' 'cosmos-xenna==0.2.0' && python -m pytest",
    ]
    ci = (ROOT / ".ci" / "run").read_text()
    assert cmds[1] in ci


def test_readme_usage_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = re.search(r"```python\n(.*?)```", README, re.S)
    assert code is not None
    out = subprocess.run([sys.executable, "-c", code.group(1)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["100", "True"]


def test_demo_console_script(tmp_path):
    exe = shutil.which("resumelog")
    cmd = [exe] if exe else [sys.executable, "-m", "resumelog.cli"]
    out = subprocess.run(
        [*cmd, "demo", "--path", str(tmp_path / "demo"), "--sources", "80", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    fig = json.loads(out.stdout)
    assert fig["completed"] == fig["sources"] == 80 and fig["missing"] == 0
    assert 0 < fig["redone"] < 80  # the SIGKILLed worker's unfinished sources, and only those
    assert fig["completed_run1"] + fig["redone"] == 80


def test_demo_refuses_a_foreign_directory(tmp_path):
    (tmp_path / "precious.txt").write_text("x")
    out = subprocess.run(
        [sys.executable, "-m", "resumelog.demo", "--path", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2 and "not a resumelog checkpoint" in out.stderr
    assert (tmp_path / "precious.txt").exists()


@pytest.mark.slow
def test_first_readme_command_in_a_fresh_virtualenv(tmp_path):
    """A new user's path: clean clone, new venv, the README's first command."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    # the clone holds what is committed; overlay the working tree so uncommitted edits are tested too
    for rel in ["pyproject.toml", "README.md"]:
        shutil.copy(ROOT / rel, clone / rel)
    shutil.rmtree(clone / "src")
    shutil.copytree(ROOT / "src", clone / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", "VIRTUAL_ENV": str(venv)}
    env.pop("PYTHONPATH", None)
    out = subprocess.run(
        readme_commands()[0] + " --sources 40",
        shell=True,
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "OK: all 40 sources complete" in out.stdout
    assert (clone / "resumelog-demo" / "meta.msgpack").exists()
