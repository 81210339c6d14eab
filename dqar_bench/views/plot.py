"""The Pareto view of a run: speedup against quality (PSNR to the baseline), one PNG.

Up is faster, right is closer to the baseline; the baseline sits at (reference, 1.0x)
and is marked. Cases identical to the baseline (infinite PSNR) are drawn on a separate
'identical' position at the right edge rather than left out. Speedup intervals are drawn
as error bars. matplotlib (Agg backend, no display) is optional: without it the plot is
skipped with a note.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import pandas as pd

from dqar_bench.core.files import write_atomic


def plot_run(frame: pd.DataFrame, path: Path, title: str = "") -> Path | str:
    """Write the plot to `path`; return the path, or a note saying why there is none."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "skipped: matplotlib is not installed"
    rows = [r for r in frame.to_dict("records") if r["status"] == "ok" and _finite(r.get("speedup"))]
    if not rows:
        return "skipped: no case has a speedup"
    finite = [r["psnr_db"] for r in rows if _finite(r.get("psnr_db"))]
    gap = max(5.0, 0.15 * (max(finite) - min(finite))) if finite else 5.0
    right = (max(finite) if finite else 0.0) + gap  # where 'identical' (and the baseline) sit

    def x_of(row: dict) -> float | None:
        if row["is_baseline"]:
            return right
        value = row.get("psnr_db")
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        return right if math.isinf(value) else value

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    names = []
    for row in rows:
        x = x_of(row)
        if x is None:
            continue
        y = row["speedup"]
        if row["is_baseline"]:
            ax.scatter([x], [y], marker="*", s=220, color="black", zorder=3, label="baseline")
        else:
            err = None
            if _finite(row.get("speedup_low")) and _finite(row.get("speedup_high")):
                err = [[max(0.0, y - row["speedup_low"])], [max(0.0, row["speedup_high"] - y)]]
            ax.errorbar([x], [y], yerr=err, fmt="o", color="tab:blue", capsize=3, zorder=2)
        names.append(ax.annotate(plain(row["case"]), (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7))
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ticks = [t for t in ax.get_xticks() if t < right - 0.6 * gap]
    ax.set_xticks(ticks + [right])
    ax.set_xticklabels([f"{t:g}" for t in ticks] + ["identical"])
    ax.set_xlabel("PSNR to the baseline, dB (higher: closer)")
    ax.set_ylabel("speedup over the baseline (x)")
    ax.set_title(plain(f"{title}: speed against quality" if title else "speed against quality"))
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles[:1], labels[:1], loc="best", fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    _spread(fig, names)
    path.parent.mkdir(parents=True, exist_ok=True)
    png = io.BytesIO()
    fig.savefig(png, format="png")
    plt.close(fig)
    write_atomic(path, png.getvalue())
    return path


OFFSETS = [(5, 4), (5, -11), (5, 15), (5, -22), (5, 26), (-8, 4), (-8, -11), (5, -33), (5, 37)]
"""Where a label may sit beside its point (points, right then left of it), nearest first."""


def _spread(fig: object, labels: list) -> None:
    """Move each label to the first of OFFSETS where it overlaps no label placed before it.

    Cases of similar speed and quality sit close together, and labels at one fixed offset
    then print over each other. A label that finds no free place keeps its first.
    """
    fig.canvas.draw()  # type: ignore[attr-defined]
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    placed = []
    for label in sorted(labels, key=lambda a: (-a.xy[1], a.xy[0])):
        for dx, dy in OFFSETS:
            label.set_horizontalalignment("right" if dx < 0 else "left")
            label.xyann = (dx, dy)
            box = label.get_window_extent(renderer).expanded(1.05, 1.1)
            if not any(box.overlaps(other) for other in placed):
                break
        else:
            label.set_horizontalalignment("left")
            label.xyann = OFFSETS[0]
            box = label.get_window_extent(renderer)
        placed.append(box)


def plain(label: str) -> str:
    """A name as plain text in a figure: matplotlib reads `$...$` as math and fails the whole
    figure on what it cannot parse (a case named `$\\frac{$`); `\\$` is a literal dollar."""
    return str(label).replace("$", r"\$")


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not math.isnan(value) and not math.isinf(value)
