"""A calibration's signals per step, as one small HTML page: what a threshold would cut.

Each gate's signal gets a chart over the sampling steps (entropy per block, schedule SNR on
a log axis, block 0's residual change, TeaCache's modulation and output change, MagCache's
ratios per CFG branch), so a user sees where a threshold falls before choosing it. The
charts are inline SVG drawn here: the page is one file that fetches nothing, and it needs
no plotting library (matplotlib is optional for the rest of the views, and a calibration
should not depend on it). An undefined value (a first step, a block never probed) is a gap
in its line, not a zero.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from dqar_bench.core.files import write_atomic
from dqar_bench.measure.signal_trace import SignalTrace, Value
from dqar_bench.views.report.markup import esc

WIDTH, HEIGHT = 560, 220
LEFT, RIGHT, TOP, BOTTOM = 64, 150, 28, 34
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def write_signal_page(trace: SignalTrace, path: str | Path, title: str) -> Path:
    """Write the page for `trace` to `path` (atomically) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, signal_page(trace, title))
    return path


def signal_page(trace: SignalTrace, title: str) -> str:
    """The page's HTML."""
    charts = [
        ("attention entropy (H / log N_keys), per block: the entropy and dqar gates",
         {f"block {b}": [row[b] for row in trace.entropy] for b in range(trace.blocks)}, False),
        ("schedule SNR: the snr and dqar gates", {"SNR": trace.snr}, True),
        ("residual change of block 0 (relative L1): residual-change, dbcache", {"residual change": trace.residual_change}, False),
    ]
    if trace.modulation_change is not None:
        charts.append(("modulation change of block 0's input, and the output's (relative L1): teacache",
                       {"modulation change": trace.modulation_change, "output change": trace.output_change}, False))
    else:
        charts.append(("output change (relative L1); this family has no modulated input for teacache",
                       {"output change": trace.output_change}, False))
    names = ["cond", "uncond"] if trace.branches == 2 else ["ratio"]
    charts.append(("MagCache magnitude ratios, per CFG branch: magnitude",
                   {n: list(r) for n, r in zip(names, trace.branch_ratios)}, False))
    seeds = f", seeds {', '.join(map(str, trace.seeds))}" if trace.seeds else ""
    body = "\n".join(f"<section><h2>{esc(heading)}</h2>\n{chart(series, log)}</section>" for heading, series, log in charts)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>body{{font-family:sans-serif;margin:1.5em;max-width:60em}}h2{{font-size:1em;margin:1.2em 0 .3em}}
svg text{{font-size:11px;font-family:sans-serif}}</style></head>
<body><h1>{esc(title)}</h1>
<p>{trace.steps} steps, {trace.blocks} blocks, {trace.branches} CFG branch(es){esc(seeds)}; measured on the untouched
model, per step (step 0 first). A gap is a step where the signal is undefined.</p>
{body}
</body></html>
"""


def chart(series: dict[str, Sequence[Value]], log: bool = False) -> str:
    """One SVG line chart over the steps: a line per series, a legend, the y range at the axis."""
    points = [v for values in series.values() for v in values if _drawable(v, log)]
    steps = max((len(v) for v in series.values()), default=0)
    if not points or steps == 0:
        return '<p class="empty">nothing measured</p>'
    scale = (lambda v: math.log10(v)) if log else (lambda v: v)  # noqa: E731
    low, high = min(map(scale, points)), max(map(scale, points))
    if high - low < 1e-12:
        low, high = low - 0.5, high + 0.5
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(step: int) -> float:
        return LEFT + inner_w * (step / max(steps - 1, 1))

    def y(value: float) -> float:
        return TOP + inner_h * (1 - (scale(value) - low) / (high - low))

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img">',
             f'<rect x="{LEFT}" y="{TOP}" width="{inner_w}" height="{inner_h}" fill="none" stroke="#999"/>']
    label = (lambda v: f"{10 ** v:.3g}") if log else (lambda v: f"{v:.4g}")  # noqa: E731
    parts.append(f'<text x="{LEFT - 4}" y="{TOP + 4}" text-anchor="end">{label(high)}</text>')
    parts.append(f'<text x="{LEFT - 4}" y="{TOP + inner_h}" text-anchor="end">{label(low)}</text>')
    parts.append(f'<text x="{LEFT}" y="{HEIGHT - 10}" text-anchor="middle">0</text>')
    parts.append(f'<text x="{LEFT + inner_w}" y="{HEIGHT - 10}" text-anchor="middle">{steps - 1}</text>')
    parts.append(f'<text x="{LEFT + inner_w / 2}" y="{HEIGHT - 10}" text-anchor="middle">step</text>')
    for index, (name, values) in enumerate(series.items()):
        colour = COLOURS[index % len(COLOURS)]
        dash = ' stroke-dasharray="5,3"' if index % 2 else ""  # lines that coincide (two CFG branches) stay visible
        for run in _runs(values, log):
            coords = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in run)
            if len(run) == 1:
                (t, v), = run
                parts.append(f'<circle cx="{x(t):.1f}" cy="{y(v):.1f}" r="2.5" fill="{colour}"/>')
            else:
                parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5"{dash} points="{coords}"/>')
        legend_y = TOP + 8 + 16 * index
        parts.append(f'<line x1="{WIDTH - RIGHT + 10}" y1="{legend_y}" x2="{WIDTH - RIGHT + 28}" y2="{legend_y}" stroke="{colour}" stroke-width="2"{dash}/>')
        parts.append(f'<text x="{WIDTH - RIGHT + 32}" y="{legend_y + 4}">{esc(name)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _runs(values: Sequence[Value], log: bool) -> list[list[tuple[int, float]]]:
    """The stretches of consecutive drawable values: a line breaks where a value is undefined."""
    runs: list[list[tuple[int, float]]] = [[]]
    for step, value in enumerate(values):
        if _drawable(value, log):
            runs[-1].append((step, float(value)))  # type: ignore[arg-type]
        elif runs[-1]:
            runs.append([])
    return [r for r in runs if r]


def _drawable(value: Value, log: bool) -> bool:
    return value is not None and math.isfinite(value) and (value > 0 or not log)
