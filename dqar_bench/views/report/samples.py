"""Images side by side: per seed, the baseline's output next to every case's, speedup and PSNR under each.

What is drawn depends on what the run kept: previews decoded by the VAE at run time; else
the saved outputs, as pixels (pixel-space models, [-1, 1]) or, for latents without a VAE,
one grey panel per channel on the baseline's scale for that seed, so every case in a row is
drawn alike. A batch is a grid of its items; a video is a row of frames per item. Under each
row, optionally, the absolute difference to the baseline, on one scale for the whole row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from dqar_bench.views.report.markup import array_png, esc, png_uri, psnr, speedup
from dqar_bench.views.report.previews import MAX_ITEMS, shrink
from dqar_bench.views.report.runs import Entry, Run

DISPLAY_WIDTH = 176
"""Target width in CSS pixels of one case's picture; small outputs are enlarged by whole pixels."""

KINDS = {
    "decoded": "decoded by the model's VAE when the case ran",
    "pixels": "the model's outputs are pixels (from [-1, 1])",
    "latents": "latents without a VAE: one grey panel per channel, on the baseline's range for each seed",
}


@dataclass
class Shown:
    kind: str
    tensors: dict[int, torch.Tensor]
    """Per seed: images in [0, 1] ([items, C, H, W] or [items, C, F, H, W]) or raw latents."""


def shown(entry: Entry) -> Shown | None:
    """What can be drawn of a case: its decoded previews, else its outputs; None if neither was kept."""
    kept = entry.previews()
    if kept:
        return Shown("decoded", {seed: t.float() / 255 for seed, t in kept[0].items()})
    outputs = entry.outputs()
    if not outputs:
        return None
    sample = next(iter(outputs.values()))
    decoded_by_vae = (entry.record.quality or {}).get("space") == "image"
    if sample.shape[1] in (1, 3) and not decoded_by_vae:
        return Shown("pixels", {seed: shrink(((t.float() + 1) / 2).clamp(0, 1)) for seed, t in outputs.items()})
    return Shown("latents", {seed: t[:MAX_ITEMS].float() for seed, t in outputs.items()})


def displayed(item: Shown, seed: int, scale: float) -> torch.Tensor | None:
    """Images in [0, 1]; latents become a strip of channels (a video's: channel 0's frames)."""
    t = item.tensors.get(seed)
    if t is None or item.kind != "latents":
        return t
    t = ((t / scale + 1) / 2).clamp(0, 1)
    t = t[:, :1] if t.dim() == 5 else t.unsqueeze(1)  # [items, 1, panels, H, W]
    return shrink(t)


def compose(images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """One picture of a batch (RGB floats) and the mask of where the items are (the rest is gap).

    Single images go in a grid about 2.5 times wider than tall; items with several panels
    (frames, channels) are one row each.
    """
    t = images if images.dim() == 5 else images.unsqueeze(2)  # [items, C, panels, H, W]
    t = t.expand(-1, 3, -1, -1, -1) if t.shape[1] == 1 else t[:, :3]
    items, _, panels, height, width = t.shape
    if panels == 1:
        rows = max(1, round(math.sqrt(items / 2.5)))
        cols = math.ceil(items / rows)
        places = [(i // cols, i % cols, i, 0) for i in range(items)]
    else:
        rows, cols = items, panels
        places = [(i, p, i, p) for i in range(items) for p in range(panels)]
    gap = 1 if max(height, width) < 32 else 2
    canvas = np.ones((rows * (height + gap) - gap, cols * (width + gap) - gap, 3), dtype=np.float32)
    mask = np.zeros(canvas.shape[:2], dtype=bool)
    array = t.permute(0, 2, 3, 4, 1).numpy()  # [items, panels, H, W, 3]
    for row, col, item, panel in places:
        y, x = row * (height + gap), col * (width + gap)
        canvas[y:y + height, x:x + width] = array[item, panel]
        mask[y:y + height, x:x + width] = True
    return canvas, mask


def difference(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> np.ndarray | None:
    """Mean absolute difference over colour channels, where both pictures have content."""
    if a[0].shape != b[0].shape:
        return None
    diff = np.abs(a[0] - b[0]).mean(axis=2)
    diff[~(a[1] & b[1])] = np.nan
    return diff


def heat(diff: np.ndarray, top: float) -> np.ndarray:
    """A difference map in the magma colours, 0 black and `top` bright; gaps stay white."""
    from matplotlib import colormaps

    rgb = colormaps["magma"](np.nan_to_num(diff / top if top > 0 else diff * 0, nan=0.0))[..., :3]
    rgb[np.isnan(diff)] = 1.0
    return rgb


def _img(pixels: np.ndarray, alt: str, attrs: str = "") -> str:
    height, width = pixels.shape[:2]
    if width * 2 <= DISPLAY_WIDTH:  # small outputs (8x8 digits): enlarged by whole pixels, kept sharp
        zoom, css = float(DISPLAY_WIDTH // width), "pix"
    else:
        zoom, css = min(1.0, 1.5 * DISPLAY_WIDTH / width), "smooth"
    w, h = round(width * zoom), round(height * zoom)
    return f'<img class="{css}" src="{png_uri(array_png(pixels))}" width="{w}" height="{h}" alt="{esc(alt)}"{attrs}>'


def section(runs: list[Run], max_seeds: int = 4) -> str:
    entries = [e for run in runs for e in run.entries]
    drawable: dict[str, Shown] = {}
    missing: list[str] = []
    for entry in entries:
        if not entry.ok:
            missing.append(f"{esc(entry.label)} ({esc(entry.status)})")
            continue
        item = shown(entry)
        if item is None:
            missing.append(f"{esc(entry.label)} (no outputs saved)")
        else:
            drawable[entry.label] = item
    if not drawable:
        why = "no case finished" if not any(e.ok for e in entries) else "the run kept no outputs"
        return f'<p class="note">No images: {why}.</p>'
    seeds = [int(s) for s in runs[0].first.seeds or sorted(next(iter(drawable.values())).tensors)][:max_seeds]
    by_case = {(e.run.label, e.case): e for e in entries}
    kinds = sorted({item.kind for item in drawable.values()})
    parts = [
        '<p class="lede">Each picture is one case\'s output for the seed: its batch, or the first items of a large one; '
        f"{'; '.join(esc(KINDS[k]) for k in kinds)}. "
        "Under each: speedup over the baseline and PSNR to it (of all seeds, as in the table).</p>"
    ]
    for seed in seeds:
        parts.append(_seed_row(entries, drawable, by_case, seed))
    if missing:
        parts.append(f'<p class="note">Not shown: {", ".join(missing)}.</p>')
    return "\n".join(parts)


def _seed_row(entries: list[Entry], drawable: dict[str, Shown], by_case: dict[tuple[str, str], Entry], seed: int) -> str:
    """One seed: every case's picture in a row, then (folded) each one's difference to its baseline."""
    figures: list[tuple[Entry, str]] = []
    diffs, pictures = [], {}
    for entry in entries:
        item = drawable.get(entry.label)
        if item is None:
            continue
        base = by_case.get((entry.run.label, entry.baseline_case))
        image = displayed(item, seed, _scale(drawable.get(base.label, item) if base else item, seed))
        if image is None:
            continue
        pictures[entry.label] = picture = compose(image)
        caption = "reference" if entry.is_baseline else f"{speedup(entry.row.get('speedup'))} · {psnr(entry.row.get('psnr_db'))}"
        figures.append((entry, (
            f'<figure class="sample{" base" if entry.is_baseline else ""}" data-case="{esc(entry.label)}" data-seed="{seed}">'
            f'{_img(picture[0], f"{entry.label}, seed {seed}")}'
            f"<figcaption><b>{esc(entry.case if entry.prefix else entry.label)}</b><span>{esc(caption)}</span></figcaption></figure>"
        )))
        if not entry.is_baseline and base is not None and base.label in pictures:
            diff = difference(picture, pictures[base.label])
            if diff is not None:
                diffs.append((entry.label, diff))
    row = f'<h3>seed {seed}</h3>{_by_run(entries, figures)}'
    if not diffs:
        return row
    top = max(_largest(d) for _, d in diffs)
    cells = "".join(
        f'<figure class="diffmap" data-diff="{esc(label)}" data-seed="{seed}">'
        f'{_img(heat(d, top), f"difference of {label} to the baseline, seed {seed}")}'
        f"<figcaption><b>{esc(label)}</b><span>max {_largest(d):.3f}</span></figcaption></figure>"
        for label, d in diffs
    )
    return (
        f"{row}<details><summary>Absolute difference to the baseline, seed {seed} "
        f"(black 0, brightest {top:.3f} on the [0, 1] scale of the pictures)</summary>"
        f'<div class="strip">{cells}</div></details>'
    )


def _by_run(entries: list[Entry], figures: list[tuple[Entry, str]]) -> str:
    """One strip; with several runs, one column per run side by side, each headed with its own model, sampler and steps."""
    runs = list(dict.fromkeys(e.run.label for e in entries))
    if len(runs) == 1:
        return f'<div class="strip">{"".join(html for _, html in figures)}</div>'
    columns = []
    for label in runs:
        shown = [(e, html) for e, html in figures if e.run.label == label]
        if shown:
            run = shown[0][0].run
            columns.append(
                f'<div class="runcol" data-run="{esc(label)}"><h4>{esc(label)} <small>{esc(run.setting)}</small></h4>'
                f'<div class="strip">{"".join(html for _, html in shown)}</div></div>'
            )
    return f'<div class="runcols">{"".join(columns)}</div>'


def _largest(diff: np.ndarray) -> float:
    return float(np.nanmax(diff)) if np.isfinite(diff).any() else 0.0


def _scale(item: Shown, seed: int) -> float:
    """The range latents are drawn on: the largest magnitude of the baseline's output for the seed."""
    t = item.tensors.get(seed)
    if item.kind != "latents" or t is None:
        return 1.0
    return float(t.abs().max()) or 1.0
