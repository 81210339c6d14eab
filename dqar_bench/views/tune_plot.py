"""The Pareto plot of a `dqar-bench tune` search: every trial's speedup against its quality.

Feasible trials (they meet the floors) are filled dots, infeasible ones hollow; the front is
a line through its trials; each floor is a dashed line. Trials identical to the baseline
(infinite PSNR) sit on an 'identical' position past the highest finite value, as in the run
plot (`views.plot`). Labels are plain text (no mathtext), so any metric name draws.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence


def plot_front(rows: list[dict[str, Any]], front: list[dict[str, Any]], path: Path, quality: str, floors: Sequence[Any],
               title: str = "", objective: str = "flops") -> Path | str:
    """Write the plot to `path`; return the path, or a note saying why there is none."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "skipped: matplotlib is not installed"
    ok = [r for r in rows if r.get("status") == "ok"]
    if not ok:
        return "skipped: no trial finished"
    finite = [r[quality] for r in ok if not math.isinf(r[quality])]
    top = max(finite) if finite else 0.0
    identical = top + max(1.0, 0.1 * (top - min(finite))) if finite else 1.0

    def y(row: dict[str, Any]) -> float:
        return identical if math.isinf(row[quality]) else row[quality]

    plt.rcParams["text.usetex"] = False
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    feasible = [r for r in ok if r.get("feasible", True)]
    infeasible = [r for r in ok if not r.get("feasible", True)]
    ax.scatter([r["speedup"] for r in feasible], [y(r) for r in feasible], color="tab:blue", label="feasible trial", zorder=3)
    if infeasible:
        ax.scatter([r["speedup"] for r in infeasible], [y(r) for r in infeasible], facecolors="none", edgecolors="tab:red",
                   label="infeasible trial", zorder=3)
    if front:
        ax.plot([r["speedup"] for r in front], [y(r) for r in front], color="tab:green", label="Pareto front", zorder=2)
    for floor in floors:
        if floor.metric == quality:
            ax.axhline(floor.value, color="grey", linestyle="--", linewidth=1)
            ax.text(0.01, floor.value, floor.label, transform=ax.get_yaxis_transform(), fontsize=8, color="grey", va="bottom", parse_math=False)
    if any(math.isinf(r[quality]) for r in ok):
        ax.axhline(identical, color="lightgrey", linewidth=0.8)
        ax.text(0.01, identical, "identical to the baseline", transform=ax.get_yaxis_transform(), fontsize=8, color="grey", va="bottom")
    ax.set_xlabel(f"{'FLOP' if objective == 'flops' else 'timed'} speedup over the baseline (x)", parse_math=False)
    ax.set_ylabel(f"{quality} against the baseline", parse_math=False)
    ax.set_title(title, parse_math=False, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
