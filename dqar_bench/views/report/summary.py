"""The summary table: one row per case, the columns of the results frame that the run has.

Columns come from a known list (their headings and tooltips from the one catalogue,
`views.columns`) and show only when the frame has that column with a value in some row, so
figures another part of the harness adds to the frame (FLOP counts, say) appear here once
they exist. Failed and unsupported cases keep their row, with the reason.
Each cell carries its raw value in `data-v` for the page's small sort script.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from dqar_bench.views.columns import column
from dqar_bench.views.report.markup import esc, num, present, psnr, sort_value
from dqar_bench.views.report.runs import Entry, Run

Format = Callable[[Any, dict[str, Any]], str]


def _fmt(pattern: str) -> Format:
    return lambda value, row: num(value, pattern)


def _speedup(value: Any, row: dict[str, Any]) -> str:
    """The speedup, green when its whole interval is above 1x, red when below (a slowdown)."""
    if not present(value):
        return "–"
    low, high = row.get("speedup_low"), row.get("speedup_high")
    reason = row.get("implausible")
    flag = f' <b class="err" title="{esc(reason)}">implausible</b>' if isinstance(reason, str) and reason else ""
    if not (present(low) and present(high)) or row.get("is_baseline"):
        return f"{value:.2f}×{flag}"
    verdict = "even" if flag else "faster" if low > 1 else "slower" if high < 1 else "even"
    return f'<span class="{verdict}">{value:.2f}×</span> <small>[{low:.2f}, {high:.2f}]</small>{flag}'



def _psnr(value: Any, row: dict[str, Any]) -> str:
    return "reference" if row.get("is_baseline") else psnr(value)


def _noise(value: Any, row: dict[str, Any]) -> str:
    if not present(value):
        return "–"
    return f'<span class="badge {esc(value)}">{esc(value)}</span>'


def _torch_memory(value: Any, row: dict[str, Any]) -> str:
    reserved = row.get("torch_reserved_mib")
    return f"{num(value, '{:.1f}')} / {num(reserved, '{:.1f}')}" if present(reserved) else num(value, "{:.1f}")


FORMATS: list[tuple[str, Format]] = [
    # the frame's columns the summary shows, in order, and how each cell reads; headings and
    # tooltips are the catalogue's (`views.columns`)
    ("speedup", _speedup),
    ("flop_speedup", _fmt("{:.2f}×")),
    ("tflop_per_call", _fmt("{:.4g}")),
    ("per_image_ms", _fmt("{:.2f}")),
    ("noise", _noise),
    ("reuse_ratio", _fmt("{:.1%}")),
    ("cache_mib", _fmt("{:.3f}")),
    ("psnr_db", _psnr),
    ("ssim", _fmt("{:.4f}")),
    ("lpips", _fmt("{:.4f}")),
    ("class_accuracy", _fmt("{:.1%}")),
    ("clip_score", _fmt("{:.2f}")),
    ("fid", _fmt("{:.2f}")),
    ("isc", _fmt("{:.2f}")),
    ("kid", _fmt("{:.4f}")),
    ("gpu_peak_mib", _fmt("{:.0f}")),
    ("torch_alloc_mib", _torch_memory),
    ("joules_per_image", _fmt("{:.3f}")),
    ("cold_ms", _fmt("{:.0f}")),
]

COLUMNS: list[tuple[str, str, Format, str]] = [(key, column(key).header, fmt, column(key).tip) for key, fmt in FORMATS]
"""(frame column, heading, cell format, tooltip)."""


def shown_columns(rows: list[dict[str, Any]]) -> list[tuple[str, str, Format, str]]:
    """The known columns that some row has a value in (a column the frame lacks is never shown)."""
    return [c for c in COLUMNS if any(c[0] in r and present(r[c[0]]) for r in rows)]


def _case_cell(entry: Entry) -> str:
    description = entry.record.description or ""
    title = f' title="{esc(description)}"' if description else ""
    status = "" if entry.ok else f' <span class="badge {esc(entry.status)}">{esc(entry.status)}</span>'
    return (
        f'<td data-v="{esc(entry.label)}"{title}><b>{esc(entry.label)}</b>{status}'
        f'<div class="parts">{esc(entry.row.get("parts") or "")}</div></td>'
    )


def _notes(entry: Entry) -> str:
    notes = []
    if not entry.ok:
        notes.append(f'<span class="err">{esc(entry.record.error or entry.status)}</span>')
    for key in ("speedup_note", "implausible", "fidelity_note"):
        value = entry.row.get(key)
        if isinstance(value, str) and value:
            notes.append(esc(value))
    return "<br>".join(notes)


def section(runs: list[Run]) -> str:
    entries = [e for run in runs for e in run.entries]
    rows = [e.row for e in entries if e.ok]
    columns = shown_columns(rows)
    modes = {e.row.get("execution") for e in entries}
    head = ['<th data-v="case">case <small>parts: gate / cache / quantizer / scheduler</small></th>']
    if len(modes) > 1:
        head.append('<th title="execution mode">mode</th>')
    head += [f'<th class="num" title="{esc(tip)}">{esc(header)}</th>' for _, header, _, tip in columns]
    notes = {e.label: _notes(e) for e in entries}
    if any(notes.values()):
        head.append("<th>notes</th>")
    body = []
    for entry in entries:
        cells = [_case_cell(entry)]
        if len(modes) > 1:
            cells.append(f'<td data-v="{esc(entry.row.get("execution"))}">{esc(entry.row.get("execution"))}</td>')
        for key, _, fmt, _ in columns:
            value = entry.row.get(key) if entry.ok else None
            if key == "psnr_db" and entry.is_baseline:
                value = math.inf  # sorts with the identical ones
            cells.append(f'<td class="num" data-v="{sort_value(value)}">{fmt(value, entry.row) if entry.ok else "–"}</td>')
        if any(notes.values()):
            cells.append(f'<td class="notes">{notes[entry.label]}</td>')
        body.append(f'<tr class="{esc(entry.status)}{" base" if entry.is_baseline else ""}" data-case="{esc(entry.label)}">{"".join(cells)}</tr>')
    return (
        '<div class="scroll"><table class="sortable summary"><thead><tr>'
        + "".join(head)
        + "</tr></thead><tbody>"
        + "\n".join(body)
        + '</tbody></table></div><p class="hint">Click a column to sort; hover a header for its meaning.</p>'
    )
