"""Views over records: a pandas frame (one row per case) and its markdown rendering."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd


COLUMNS = ["case", "status", "parts", "median_ms", "per_image_ms", "speedup", "reuse_ratio", "cache_mib", "psnr_db", "max_abs", "mse", "error", "is_baseline"]


def parts_label(parts: dict[str, Any]) -> str:
    """`gate / cache / quantizer / scheduler` with parameters; the untouched model says so."""
    if not parts:
        return "(untouched model)"
    labels = []
    for kind in ("gate", "cache", "quantizer", "scheduler"):
        spec = parts.get(kind)
        if spec is None:
            continue
        params = spec.get("params") or {}
        inner = ", ".join(f"{k}={v}" for k, v in params.items())
        labels.append(f"{spec['name']}({inner})" if inner else spec["name"])
    return " / ".join(labels)


def results_frame(records: list[dict[str, Any]], baseline: str) -> pd.DataFrame:
    """One row per case (its latest record); speedup against the baseline of the same run."""
    latest: dict[str, dict[str, Any]] = {}
    for record in records:
        latest[record["case"]] = record
    base = latest.get(baseline)
    base_median = base.get("median_s") if base and base.get("status") == "ok" else None
    rows = []
    for record in latest.values():
        ok = record.get("status") == "ok"
        quality = record.get("quality") or {}
        median = record.get("median_s") if ok else None
        rows.append(
            {
                "case": record["case"],
                "status": record.get("status"),
                "parts": parts_label(record.get("parts") or {}),
                "median_ms": median * 1000 if median is not None else None,
                "per_image_ms": record["per_image_s"] * 1000 if ok else None,
                "speedup": base_median / median if (median and base_median) else None,
                "reuse_ratio": record.get("reuse_ratio") if ok else None,
                "cache_mib": record.get("cache_bytes", 0) / 2**20 if ok else None,
                "psnr_db": (math.inf if quality.get("identical") else quality.get("psnr_db")) if quality else None,
                "max_abs": quality.get("max_abs") if quality else None,
                "mse": quality.get("mse") if quality else None,
                "error": record.get("error") or "",
                "is_baseline": record["case"] == baseline,
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)


def render_markdown(frame: pd.DataFrame) -> str:
    """The comparison table as GitHub markdown (no extra dependency)."""
    header = ["case", "parts (gate / cache / quantizer / scheduler)", "median ms", "ms / image", "speedup", "reuse", "cache MiB", "PSNR dB"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
    for row in frame.to_dict("records"):
        if row["status"] != "ok":
            cells = [row["case"], row["parts"], f"failed: {row['error']}"] + [""] * (len(header) - 3)
        else:
            cells = [
                row["case"],
                row["parts"],
                _num(row["median_ms"], "{:.1f}"),
                _num(row["per_image_ms"], "{:.2f}"),
                _num(row["speedup"], "{:.2f}x"),
                _num(row["reuse_ratio"], "{:.1%}"),
                _num(row["cache_mib"], "{:.3f}"),
                "(reference)" if row["is_baseline"] else _psnr(row["psnr_db"]),
            ]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def _num(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return fmt.format(value)


def _psnr(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return "identical" if math.isinf(value) else f"{value:.1f}"
