#!/usr/bin/env python
"""Screenshot a report in headless Chromium (the README's picture), and say what its console said.

Usage: python scripts/screenshot_report.py REPORT.html OUT.png [--width 1280] [--height 2000] [--full-page] [--until CSS]

The README's picture: `dqar-bench run suites/ablations.yaml -o results/runs/ablations`, then
`python scripts/screenshot_report.py results/runs/ablations/report.html docs/report-ablations.png --until '#reuse'`.
Exits 1 when the page logged a console error.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

# Runnable from a plain checkout, without installing the package first.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from report_browser import Browser  # noqa: E402


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("report", type=Path)
    p.add_argument("output", type=Path)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=2000, help="window height (default 2000)")
    p.add_argument("--full-page", action="store_true", help="the whole page, not the first --height pixels")
    p.add_argument("--until", metavar="CSS", help="the whole page down to the bottom of this element (e.g. '#reuse')")
    args = p.parse_args(argv)
    if not args.report.is_file():
        print(f"error: {args.report}: no such report (dqar-bench run writes RUN_DIR/report.html)", file=sys.stderr)
        return 2
    bottom = f"document.querySelector({args.until!r}).getBoundingClientRect().bottom + window.scrollY" if args.until else "0"
    with Browser() as browser:
        visit = browser.visit(args.report.resolve().as_uri(), args.width, args.height, args.full_page or bool(args.until), evaluate=[bottom])
    data = visit.screenshot
    if args.until:
        from PIL import Image

        image = Image.open(io.BytesIO(data))
        cut = io.BytesIO()
        image.crop((0, 0, image.width, min(image.height, int(visit.values[0]) + 18))).save(cut, format="PNG", optimize=True)
        data = cut.getvalue()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(data)
    print(f"screenshot: {args.output} ({len(data) / 1024:.0f} KiB)")
    for error in visit.errors:
        print(f"console: {error}", file=sys.stderr)
    return 1 if visit.errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
