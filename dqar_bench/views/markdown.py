"""GitHub markdown tables: the one renderer every printed table goes through.

Cells are escaped once here (a `|` inside a cell would otherwise end it), so a case named
`a|b` or an error message quoting a shell pipe cannot break a table's columns.
"""

from __future__ import annotations

from typing import Any, Sequence

RULES = {"l": "---", "r": "---:", "c": ":---:"}


def cell(value: Any) -> str:
    """One cell's text: `|` escaped, line breaks folded into spaces."""
    return " ".join(str(value).replace("|", "\\|").split("\n"))


def row(cells: Sequence[Any]) -> str:
    return "| " + " | ".join(cell(c) for c in cells) + " |"


def head(header: Sequence[str], align: str) -> list[str]:
    """The header line and the rule under it; `align` has one letter per column: l, r or c."""
    if len(align) != len(header) or set(align) - set(RULES):
        raise ValueError(f"align {align!r} must give one of l, r, c for each of the {len(header)} columns")
    return [row(header), "|" + "|".join(RULES[a] for a in align) + "|"]


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str) -> str:
    """A whole table; every row must have one cell per column."""
    for r in rows:
        if len(r) != len(header):
            raise ValueError(f"a row has {len(r)} cells for {len(header)} columns: {list(r)!r}")
    return "\n".join(head(header, align) + [row(r) for r in rows])


def left_then_right(columns: int, left: int) -> str:
    """The usual alignment: `left` text columns, then numbers right-aligned."""
    return "l" * left + "r" * (columns - left)
