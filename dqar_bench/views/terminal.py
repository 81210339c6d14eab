"""Markdown tables cut to a terminal's width: the columns that matter most, padded into line.

The full tables go to files (`table.md`); a terminal gets each table with as many of its
columns as fit in `WIDTH` characters, most telling first (`FIRST`, then left to right), in
their own order, and a line naming the ones left out. Working on the rendered markdown
keeps this apart from how the tables are built (`views/table.py`, `views/compare.py`).
"""

from __future__ import annotations

import re
import textwrap

WIDTH = 120
"""Characters per line: a terminal of the usual size, side by side with another, or a CI log."""

MAX_CELL = 44
"""Longer cells (part labels with all their parameters, error messages) end in an ellipsis."""

FIRST = ("case", "speedup [95% CI]", "median ms", "PSNR dB", "reuse", "noise", "FLOP speedup")
"""Headers shown before any other once `case` is in: what a reader of a run looks at first."""

_SPLIT = re.compile(r"(?<!\\)\|")


def fit_tables(text: str, width: int = WIDTH) -> str:
    """`text` with every markdown table in it fitted to `width`, and longer prose lines wrapped."""
    out: list[str] = []
    block: list[str] = []
    for line in [*text.split("\n"), None]:
        if line is not None and line.startswith("|") and line.rstrip().endswith("|"):
            block.append(line)
            continue
        if block:
            out += [wrapped for fitted in fit_table(block, width) for wrapped in _wrap(fitted, width)]
            block = []
        if line is not None:
            out += _wrap(line, width)
    return "\n".join(out)


def _wrap(line: str, width: int) -> list[str]:
    """A long prose line (a note, a bullet) folded at spaces; a bullet's lines keep under its text."""
    if len(line) <= width or line.startswith("|"):
        return [line]
    indent = "  " if line.startswith("- ") else ""
    return textwrap.wrap(line, width, subsequent_indent=indent, break_long_words=False, break_on_hyphens=False) or [line]


def fit_table(lines: list[str], width: int = WIDTH) -> list[str]:
    """One table (header, rule, rows) as padded lines of at most `width` characters where it can be."""
    rows = [[c.strip() for c in _SPLIT.split(line.strip())[1:-1]] for line in lines]
    if len(rows) < 2 or any(len(r) != len(rows[0]) for r in rows):
        return lines  # not a table this reader understands: leave it whole
    header, rule, body = rows[0], rows[1], rows[2:]
    cells = [[_cut(c) for c in r] for r in [header, *body]]
    widths = [max(3, *(len(r[i]) for r in cells)) for i in range(len(header))]
    order = sorted(range(len(header)), key=lambda i: (FIRST.index(header[i]) if header[i] in FIRST else len(FIRST), i))
    shown: list[int] = []
    for i in order:
        if not shown or 1 + sum(widths[j] + 3 for j in [*shown, i]) <= width:
            shown.append(i)
    shown.sort()
    right = [rule[i].endswith(":") for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "| " + " | ".join(r[i].rjust(widths[i]) if right[i] else r[i].ljust(widths[i]) for i in shown) + " |"

    result = [line(cells[0]), "|" + "|".join(("-" * (widths[i] + 1) + ":") if right[i] else "-" * (widths[i] + 2) for i in shown) + "|"]
    result += [line(r) for r in cells[1:]]
    left_out = [header[i] for i in range(len(header)) if i not in shown]
    if left_out:
        result.append(f"(not shown at {width} columns: {', '.join(left_out)}; the full table is in table.md)")
    return result


def _cut(cell: str) -> str:
    return cell if len(cell) <= MAX_CELL else cell[: MAX_CELL - 1].rstrip().rstrip("\\") + "…"  # never half of an escaped `\|`
