#!/usr/bin/env python
"""Screenshot a report in headless Chromium (the README's picture), and say what its console said.

Usage: python scripts/screenshot_report.py REPORT.html OUT.png [--width 1280] [--height 2000] [--full-page]

The README's picture: `dqar-bench run suites/ablations.yaml -o results/runs/ablations`, then
`python scripts/screenshot_report.py results/runs/ablations/report.html docs/report-ablations.png`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Runnable from a plain checkout, without installing the package first.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dqar_bench.report.browser import screenshot  # noqa: E402


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("report", type=Path)
    p.add_argument("output", type=Path)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=2000)
    p.add_argument("--full-page", action="store_true", help="the whole page, not the first --height pixels")
    args = p.parse_args(argv)
    if not args.report.is_file():
        print(f"error: {args.report}: no such report (dqar-bench run writes RUN_DIR/report.html)", file=sys.stderr)
        return 2
    visit = screenshot(args.report, args.output, args.width, args.height, args.full_page)
    print(f"screenshot: {args.output} ({len(visit.screenshot) / 1024:.0f} KiB)")
    for error in visit.errors:
        print(f"console: {error}", file=sys.stderr)
    return 1 if visit.errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
