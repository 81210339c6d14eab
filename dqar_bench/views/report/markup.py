"""Small HTML helpers: escaping, embedded PNGs and number formats shared by the report's sections."""

from __future__ import annotations

import base64
import html
import io
import math
from typing import Any

import numpy as np


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def png_uri(data: bytes) -> str:
    """An embedded PNG: the report is one file and fetches nothing."""
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def array_png(pixels: np.ndarray) -> bytes:
    """An RGB (H, W, 3) or grey (H, W) array of floats in [0, 1] as PNG bytes."""
    from PIL import Image

    image = Image.fromarray((np.clip(pixels, 0, 1) * 255).round().astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def figure_png(fig: Any, dpi: int = 144) -> bytes:
    """A matplotlib figure as PNG bytes; the figure is closed."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()


def present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def sort_value(value: Any) -> str:
    """A cell's raw value for the page's sort script (`data-v`): infinity sorts above every number."""
    if isinstance(value, bool) or not present(value):
        return ""
    if isinstance(value, (int, float)):
        return "1e308" if math.isinf(value) else repr(float(value))
    return esc(value)


def num(value: Any, fmt: str, missing: str = "–") -> str:
    return fmt.format(value) if present(value) else missing


def psnr(value: Any) -> str:
    if not present(value):
        return "–"
    return "identical" if math.isinf(value) else f"{value:.1f} dB"


def speedup(value: Any) -> str:
    return f"{value:.2f}×" if present(value) else "–"
