"""Mutants cannot go stale: every mutant of ``mutants.py`` still applies to the code.

The full kill run (``python property_tests/mutants.py``) takes minutes; this check takes
milliseconds and runs with the suite, so a refactoring that moves a mutant's target
text fails here, naming the mutant, instead of silently shrinking the mutation table.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mutants import MUTANTS, Mutant

SRC = Path(__file__).resolve().parents[1] / "src" / "resumelog"


def test_mutant_names_are_unique():
    names = [m.name for m in MUTANTS]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name)
def test_mutant_applies_once_and_changes_the_code(mutant: Mutant):
    text = (SRC / mutant.path).read_text()
    assert text.count(mutant.old) == 1, (
        f"mutant {mutant.name}: its target text occurs {text.count(mutant.old)} times in {mutant.path}; "
        "update the mutant to the code it reverts"
    )
    mutated = text.replace(mutant.old, mutant.new)
    assert mutated != text
    if mutant.path.endswith(".py"):
        compile(mutated, str(SRC / mutant.path), "exec")  # the mutant is valid Python
    else:  # (a mutant of _native.c: compiled by the mutation run itself, seconds each)
        assert mutant.path == "_native.c", mutant.path
