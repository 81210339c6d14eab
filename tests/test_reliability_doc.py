"""docs/reliability.md is true: every test it names exists, in the file it names."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "reliability.md"


def named_tests() -> list[tuple[str, str]]:
    """(file, test) for every `tests/x.py::name` and every `::name` after it in the same cell."""
    found = []
    for line in DOC.read_text().splitlines():
        current = None
        for file, name in re.findall(r"`(tests/\w+\.py)?(?:::(\w+))?", line):
            current = file or current
            if name and current:
                found.append((current, name))
    return found


def test_every_test_the_page_names_exists():
    tests = named_tests()
    assert len(tests) >= 25
    missing = [f"{file}::{name}" for file, name in tests if not re.search(rf"^def {name}\(", (ROOT / file).read_text(), re.M)]
    assert not missing, missing
