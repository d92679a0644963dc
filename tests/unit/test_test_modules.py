"""The test tree itself: every test module's basename is unique.

The test directories have no ``__init__.py`` (pytest's default import mode
imports each module by its basename), so two modules of the same name in
tests/unit, tests/lab and lab/tests make the second one fail to collect
("import file mismatch"), and with it every test it holds.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TEST_DIRS = ("tests/unit", "tests/lab", "lab/tests")


def test_test_module_basenames_are_unique() -> None:
    names = Counter(
        path.name for folder in TEST_DIRS for path in (ROOT / folder).glob("test_*.py")
    )
    assert len(names) > 50, names  # the directories are the right ones
    assert not [name for name, count in names.items() if count > 1]
