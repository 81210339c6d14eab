"""The report's matplotlib figures: per-step time lines and the Pareto plot, as embedded PNGs."""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import pandas as pd

from dqar_bench.measure.case_record import CaseRecord
from dqar_bench.views.plot import plain, plot_run
from dqar_bench.views.report.markup import esc, figure_png, png_uri
from dqar_bench.views.report.runs import Run

MAX_PANELS = 48
"""Cases drawn in the per-step figure at most: a bounded figure (the table holds every case)."""


def step_medians(step_s: list[list[float]]) -> list[float]:
    """Median time of each step over the timed calls, in ms (calls of another length are left out)."""
    calls = [c for c in step_s if c]
    if not calls:
        return []
    length = statistics.mode(len(c) for c in calls)
    calls = [c for c in calls if len(c) == length]
    return [statistics.median(c[i] for c in calls) * 1000 for i in range(length)]


def reuse_share(record: CaseRecord) -> list[float] | None:
    """The share of block evaluations reused at each step, over the timed calls (from the reuse map)."""
    counts, calls = record.reuse_map, record.reuse_map_calls
    if not counts or not calls or not counts[0]:
        return None
    return [sum(row) / (calls * len(row)) for row in counts]


def timeline_section(runs: list[Run], columns: int = 4) -> str:
    """Small multiples: each case's per-step time over its own baseline's, reuse shaded behind."""
    panels = []
    for run in runs:
        by_case = {e.case: e for e in run.entries}
        for entry in run.entries:
            if not entry.ok or not entry.record.step_s:
                continue
            base = by_case.get(entry.baseline_case)
            base_ms = step_medians(base.record.step_s or []) if base is not None and base.ok else []
            panels.append((entry, step_medians(entry.record.step_s), base_ms))
    panels = [p for p in panels if p[1]]
    left_out = len(panels) - MAX_PANELS
    panels = panels[:MAX_PANELS]  # a bounded figure, whatever the number of cases
    if not panels:
        return '<p class="note">No per-step times in this run (per-step timing is off, or the cases ran compiled or as CUDA graphs).</p>'
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    columns = min(columns, len(panels))
    rows = -(-len(panels) // columns)
    top = 1.08 * max(max(ms + base) for _, ms, base in panels)
    # one scale set on each panel, not shared axes: matplotlib propagates every limit over all shared
    # axes, which made the report's time grow with the square of the number of cases
    fig, axes = plt.subplots(rows, columns, figsize=(3.0 * columns, 1.9 * rows + 0.3), squeeze=False)
    right = max(len(ms) for _, ms, _ in panels) - 0.5
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (entry, ms, base_ms) in zip(axes.flat, panels):
        share = reuse_share(entry.record)
        if share and any(share):
            ax.bar(range(len(share)), [s * top for s in share], width=1.0, color="#bfdbfe", linewidth=0, zorder=0)
        if base_ms and not entry.is_baseline:
            ax.plot(range(len(base_ms)), base_ms, color="#94a3b8", linewidth=1.0, zorder=1)
        ax.plot(range(len(ms)), ms, color="black" if entry.is_baseline else "#1d4ed8", linewidth=1.4, zorder=2)
        ax.set_title(plain(f"{entry.label}  (median {statistics.median(ms):.1f} ms)"), fontsize=8.5, loc="left")
        ax.set_ylim(0, top)
        ax.set_xlim(-0.5, right)
        ax.tick_params(labelbottom=False, labelleft=any(ax is first for first in axes[:, 0]))
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.25, linewidth=0.6)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    for index in range(max(0, len(panels) - columns), len(panels)):  # the lowest panel of each column
        ax = axes.flat[index]
        ax.xaxis.set_tick_params(labelbottom=True)
        ax.set_xlabel("step", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("ms", fontsize=8)
    axes.flat[0].xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole; the x axis is shared
    fig.tight_layout(h_pad=0.6, w_pad=0.8)
    return (
        '<p class="lede">The median time of each denoising step over the timed calls (the whole batch, classifier-free '
        "guidance included): each case in blue over its baseline in grey, on one scale. The shading is the share of "
        "blocks that reused at that step (full height: all of them), so a reuse should show as a dip.</p>"
        f'<img class="figure" src="{png_uri(figure_png(fig))}" alt="per-step time of each case">'
        + (f'<p class="note">The first {MAX_PANELS} cases are drawn; {left_out} more are in the table.</p>' if left_out > 0 else "")
    )


def pareto_section(runs: list[Run]) -> str:
    frames = []
    for run in runs:
        frame = run.frame.copy()
        if len(runs) > 1:
            frame["case"] = [f"{run.label}: {c}" for c in frame["case"]]
        frames.append(frame)
    title = str(runs[0].first.suite or runs[0].label) if len(runs) == 1 else "runs compared"
    with tempfile.TemporaryDirectory() as tmp:
        made = plot_run(pd.concat(frames, ignore_index=True), Path(tmp) / "pareto.png", title)
        if not isinstance(made, Path):
            return f'<p class="note">No Pareto plot: {esc(made)}.</p>'
        data = made.read_bytes()
    return (
        '<p class="lede">Speedup against PSNR to the baseline; up is faster, right is closer to the baseline, '
        "bars are the 95 % intervals of the speedup.</p>"
        f'<img class="figure pareto" src="{png_uri(data)}" alt="speedup against PSNR">'
    )
