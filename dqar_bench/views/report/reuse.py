"""Reuse maps: where a strategy reused, as a blocks x steps grid of frequencies over the scored calls (one per seed).

A gate that reads data (entropy, SNR, residual change) may decide differently per seed, so a
cell is the share of scored calls in which that block reused at that step (`reuse_map` /
`reuse_map_calls` in the record). The grid is HTML (one coloured cell each, its count in the
tooltip), so it stays sharp at any size and the drawn counts can be checked against the
record: each map carries the total it drew in `data-reused`.
"""

from __future__ import annotations

from dqar_bench.views.report.markup import esc
from dqar_bench.views.report.runs import Entry, Run

MAX_COLUMNS = 200
"""Columns a map draws at most: longer schedules are drawn in bins of consecutive steps, so
the page stays small whatever the step count (a 100,000-step map made a 214 MB page)."""

RAMP = ((0.0, (241, 245, 249)), (0.5, (96, 165, 250)), (1.0, (30, 58, 138)))
"""Colour stops from never (light grey) to every call (deep blue)."""


def colour(share: float) -> str:
    share = min(1.0, max(0.0, share))
    for (x0, c0), (x1, c1) in zip(RAMP, RAMP[1:]):
        if share <= x1:
            f = (share - x0) / (x1 - x0)
            return "#" + "".join(f"{round(a + (b - a) * f):02x}" for a, b in zip(c0, c1))
    return "#%02x%02x%02x" % RAMP[-1][1]


def reuse_map(entry: Entry) -> str:
    """One case's map; the steps run left to right, block 0 (the first) is the top row."""
    counts = entry.record.reuse_map
    calls = int(entry.record.reuse_map_calls or 0)
    total_steps = len(counts)
    blocks = len(counts[0]) if total_steps else 0
    width = -(-total_steps // MAX_COLUMNS) if total_steps else 1  # steps per column
    bins = [range(start, min(start + width, total_steps)) for start in range(0, total_steps, width)]
    steps = len(bins)
    cell = max(6, min(14, 300 // max(steps, 1)))
    label_width = 8 * len(str(max(blocks - 1, 0))) + 6
    cells = []
    for block in range(blocks):
        cells.append(f'<span class="bl">{block}</span>')
        for span in bins:
            n = sum(counts[step][block] for step in span)
            of = calls * len(span)
            where = f"step {span[0]}" if len(span) == 1 else f"steps {span[0]}-{span[-1]}"
            cells.append(f'<i style="background:{colour(n / of if of else 0.0)}" title="{where}, block {block}: {n} of {of} calls"></i>')
    total = sum(map(sum, counts))
    ratio = entry.record.reuse_ratio
    share = f"reuse {ratio:.1%}" if isinstance(ratio, (int, float)) else ""
    grid = (
        f'<div class="rgrid" style="grid-template-columns:{label_width}px repeat({steps},{cell}px);'
        f'grid-auto-rows:{cell}px">{"".join(cells)}</div>'
    )
    axis = f'<div class="raxis" style="margin-left:{label_width}px;width:{steps * cell}px"><span>step 0</span><span>{total_steps - 1}</span></div>'
    return (
        f'<figure class="rmap" data-case="{esc(entry.label)}" data-reused="{total}" data-calls="{calls}">'
        f"<figcaption><b>{esc(entry.label)}</b><span>{share} · {calls} scored call{'' if calls == 1 else 's'}</span></figcaption>{grid}{axis}</figure>"
    )


def section(runs: list[Run]) -> str:
    maps, untracked, columns = [], [], []
    for run in runs:
        mine = []
        for entry in run.entries:
            if not entry.ok or not (entry.record.parts or entry.record.diffusers_hook):
                continue  # the untouched model reuses nothing; failures are in the table
            if entry.record.reuse_map:
                mine.append(reuse_map(entry))
            else:
                untracked.append(esc(entry.label))
        maps += mine
        if mine:  # with several runs, one column each, headed with its own model, sampler and steps
            columns.append(f'<div class="runcol" data-run="{esc(run.label)}"><h4>{esc(run.label)} <small>{esc(run.setting)}</small></h4>'
                           f'<div class="maps">{"".join(mine)}</div></div>')
    if not maps and not untracked:
        return '<p class="note">No reuse maps: no case with a strategy finished (the untouched model reuses nothing).</p>'
    legend = "".join(f'<i style="background:{colour(x / 10)}"></i>' for x in range(11))
    parts = [
        '<p class="lede">Rows are blocks (block 0, the first, on top), columns are denoising steps. '
        "A cell's colour is the share of scored calls (one per seed; the timed rounds repeat them) in which that block reused "
        "its cache at that step; hover for the count. Data-dependent gates can differ from seed to seed.</p>",
        f'<div class="legend"><span>never</span><span class="ramp">{legend}</span><span>every call</span></div>',
        f'<div class="maps">{"".join(maps)}</div>' if len(runs) == 1 else f'<div class="runcols">{"".join(columns)}</div>',
    ]
    if untracked:
        parts.append(f'<p class="note">No reuse map recorded (a run made before reuse maps were kept): {", ".join(untracked)}.</p>')
    return "\n".join(parts)
