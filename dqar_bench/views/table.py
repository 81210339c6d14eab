"""Views over records: a pandas frame (one row per case) and its markdown rendering.

Every figure is derived here from what the record keeps, raw samples included, so a
table can be rebuilt (and re-judged) from `records.jsonl` alone. Speedup is against the
baseline of the same run, and only where the two were measured alike (same batch,
steps, sampler, device, dtype, execution mode). Where the record has rounds (`round_s`
and the baseline's `baseline_round_s` in the same rounds) the speedup is the median of
per-round ratios with a bootstrap interval over them (`measure.stats.paired_speedup`);
older records without rounds fall back to both cases' raw samples (`measure.stats.speedup`).
The FLOP speedup is the baseline's FLOPs per call over the case's (`measure.flops`).
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from dqar_bench.measure.case_record import CaseRecord
from dqar_bench.measure.flops import per_call as flops_per_call
from dqar_bench.measure.rounds import paired_ratios
from dqar_bench.measure.stats import SPEEDUP_METHOD, Measurement, paired_speedup, speedup
from dqar_bench.views import markdown
from dqar_bench.views.columns import FRAME_COLUMNS, IMPLAUSIBLE_SPEEDUP, NOISE_TIP, headers

COLUMNS = FRAME_COLUMNS
"""The frame's columns, in order (`views.columns`: each one's name, unit and meaning)."""

# A speedup compares like with like: these must match between a case and the baseline.
COMPARABLE = ("batch", "steps", "sampler", "guidance_scale", "device", "dtype", "execution_mode")


def parts_label(parts: dict[str, Any], hook: dict[str, Any] | None = None) -> str:
    """`gate / cache / quantizer / scheduler` with parameters, or `diffusers:<hook>(config)`; the untouched model says so."""
    if hook:
        inner = ", ".join(f"{k}={v}" for k, v in (hook.get("config") or {}).items())
        library = "" if hook["name"] == "cache-dit" else "diffusers:"  # a `cache-dit` case is labelled by its library
        return f"{library}{hook['name']}({inner})" if inner else f"{library}{hook['name']}"
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


def parallel_label(parallel: dict[str, int] | None) -> str | None:
    """`ulysses=2` for a case whose calls are split over ranks (`parallel` in its record); None for one device per call."""
    if not parallel:
        return None
    return ", ".join(f"{mode}={degree}" for mode, degree in parallel.items())


def results_frame(records: list[CaseRecord], baseline: str) -> pd.DataFrame:
    """One row per case (its latest record); speedup against the baseline of the same run.

    A record names its own baseline (`baseline_case`: the baseline in its execution mode)
    when the suite runs several modes; `baseline` is the fallback for older records.
    """
    latest: dict[str, CaseRecord] = {}
    for record in records:
        latest[record.case] = record
    rows = []
    for record in latest.values():
        own = record.baseline_case or baseline
        base = latest.get(own)
        base_ok = base is not None and base.ok and bool(base.latency_s)
        row: dict[str, Any] = {c: None for c in COLUMNS}
        row.update(case=record.case, status=record.status, parts=parts_label(record.parts, record.diffusers_hook),
                   error=record.error or "", is_baseline=record.case == own,
                   execution=record.execution_mode, parallel=parallel_label(record.parallel))
        ok = record.ok
        if ok:
            _timing(row, record)
            _speed(row, record, base if base_ok else None, own)
            _memory(row, record)
            _quality(row, record)
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def _timing(row: dict[str, Any], record: CaseRecord) -> None:
    samples = record.latency_s or []
    batch = record.batch or 1
    median = record.median_s
    row.update(
        median_ms=median * 1000 if median is not None else None,
        per_image_ms=record.per_image_s * 1000 if record.per_image_s is not None else None,
        reuse_ratio=record.reuse_ratio,
        cache_mib=(record.cache_bytes or 0) / 2**20,
        timer=record.timer,
        timing_order=record.timing_order,
        rounds=record.rounds,
    )
    flops = flops_per_call(record.flops)
    if flops is not None:
        row["tflop_per_call"] = flops / 1e12
    if samples:
        m = Measurement.of(samples).scaled(1000)
        row.update(n=m.n, mean_ms=m.mean, p10_ms=m.p10, p90_ms=m.p90, iqr_ms=m.iqr, noise=m.noise)
        row["median_ms"] = m.median
        row["per_image_ms"] = m.median / batch
    if record.cold_s is not None:
        row["cold_ms"] = record.cold_s * 1000
    steps = [s for call in record.step_s or [] for s in call]
    if steps:
        row["step_ms"] = Measurement.of(steps).median * 1000


def _speed(row: dict[str, Any], record: CaseRecord, base: CaseRecord | None, baseline: str) -> None:
    if base is None:
        row["speedup_note"] = f"no finished baseline '{baseline}' in this run"
        return
    differ = [k for k in COMPARABLE if getattr(record, k) != getattr(base, k)]
    if differ:
        row["speedup_note"] = f"not comparable with '{baseline}': {', '.join(differ)} differ"
        return
    flops, base_flops = flops_per_call(record.flops), flops_per_call(base.flops)
    if flops and base_flops:
        row["flop_speedup"] = base_flops / flops
    rounds = record.round_s
    if paired_ratios(rounds, record.baseline_round_s) is not None:
        s = paired_speedup(record.baseline_round_s, rounds)
    elif rounds:
        row["speedup_note"] = f"no rounds of '{baseline}' to pair with"
        return
    else:  # a record from before rounds: both cases' raw samples
        samples = record.latency_s or []
        if not samples:
            return
        s = speedup(base.latency_s, samples)
    row.update(speedup=s.value, speedup_low=s.low, speedup_high=s.high, speedup_method=s.method, implausible=implausible(record, s.value))


def implausible(record: CaseRecord, value: float) -> str | None:
    """Why `value` cannot be the speedup of this case, if it cannot: a strategy that reused
    nothing in its scored calls (a never-reuse case such as `harness_overhead`) computes every
    block the baseline does, plus its hooks, so it cannot be faster beyond noise."""
    if value <= IMPLAUSIBLE_SPEEDUP or record.reused != 0 or not (record.parts or record.diffusers_hook):
        return None
    return (f"{value:.2f}x is implausible: the case reused nothing (0 of {record.evaluations or 0} block evaluations), so it does "
            "strictly more work than the baseline; the gain is drift or noise of the machine, not the strategy's")


def _memory(row: dict[str, Any], record: CaseRecord) -> None:
    memory = record.memory or {}
    energy = record.energy or {}
    row.update(
        gpu_peak_mib=_mib(memory.get("device_used_peak_bytes")),
        process_mib=_mib(memory.get("process_peak_bytes")),
        torch_alloc_mib=_mib(memory.get("torch_peak_allocated_bytes")),
        torch_reserved_mib=_mib(memory.get("torch_peak_reserved_bytes")),
        rss_mib=_mib(memory.get("peak_rss_bytes")),
        rss_scope=memory.get("peak_rss_scope"),
        memory_note=memory.get("nvml_note"),
        process_note=memory.get("process_note"),
        joules_per_image=energy.get("joules_per_image"),
        energy_note=energy.get("energy_note"),
    )


def _quality(row: dict[str, Any], record: CaseRecord) -> None:
    quality = record.quality or {}
    if quality:
        row.update(
            psnr_db=math.inf if quality.get("psnr_db") is None and quality.get("identical") else quality.get("psnr_db"),
            max_abs=quality.get("max_abs"),
            mse=quality.get("mse"),
            space=quality.get("space", "latent"),
            ssim=quality.get("ssim"),
            lpips=quality.get("lpips"),
            lpips_note=quality.get("lpips_note"),
        )
    row.update(class_accuracy=record.class_accuracy, clip_score=(record.clip or {}).get("clip_score"))
    fidelity = record.fidelity or {}
    if fidelity:
        row.update(fid=fidelity.get("fid"), isc=fidelity.get("isc_mean"), kid=fidelity.get("kid_mean"),
                   fidelity_n=fidelity.get("n"), fidelity_note=fidelity.get("note"))


def render_markdown(frame: pd.DataFrame) -> str:
    """The comparison as GitHub markdown: time, memory and energy, quality, then notes."""
    rows = frame.to_dict("records")
    ok = [r for r in rows if r["status"] == "ok"]
    sections = [_time_table(rows)]
    if ok:
        sections.append("**Memory and energy**\n\n" + _memory_table(ok))
        sections.append("**Quality against the baseline (same seeds)**\n\n" + _quality_table(ok))
    notes = _notes(ok)
    if notes:
        sections.append("\n".join(f"- {n}" for n in notes))
    return "\n\n".join(sections)


def _time_table(rows: list[dict[str, Any]]) -> str:
    header = headers("case", "parts", "median_ms", "mean_ms", "p10_ms", "p90_ms", "iqr_ms", "noise", "per_image_ms", "speedup",
                     "tflop_per_call", "flop_speedup", "reuse_ratio", "cache_mib", "psnr_db")
    lines = _head(header, left=2)
    for row in rows:
        parts = f"{row['parts']} [{row['parallel']}]" if isinstance(row.get("parallel"), str) else row["parts"]
        if row["status"] == "unsupported":
            cells = [row["case"], parts, row["error"]] + [""] * (len(header) - 3)
        elif row["status"] != "ok":
            cells = [row["case"], parts, f"failed: {row['error']}"] + [""] * (len(header) - 3)
        else:
            cells = [
                row["case"], parts, _num(row["median_ms"], "{:.1f}"), _num(row["mean_ms"], "{:.1f}"),
                _num(row["p10_ms"], "{:.1f}"), _num(row["p90_ms"], "{:.1f}"), _num(row["iqr_ms"], "{:.2f}"),
                row["noise"] or "n/a", _num(row["per_image_ms"], "{:.2f}"), _speedup(row),
                _num(row["tflop_per_call"], "{:.4g}"), _num(row["flop_speedup"], "{:.2f}x"), _num(row["reuse_ratio"], "{:.1%}"), _num(row["cache_mib"], "{:.3f}"),
                "(reference)" if row["is_baseline"] else _psnr(row["psnr_db"]),
            ]
        lines.append(_line(cells))
    return "\n".join(lines)


def _memory_table(rows: list[dict[str, Any]]) -> str:
    header = headers("case", "gpu_peak_mib", "process_mib", "torch_alloc_mib", "joules_per_image", "rss_mib", "cold_ms", "step_ms")
    lines = _head(header, left=1)
    for row in rows:
        torch_mem = "n/a" if row["torch_alloc_mib"] is None else f"{row['torch_alloc_mib']:.1f} / {row['torch_reserved_mib']:.1f}"
        lines.append(_line([
            row["case"], _num(row["gpu_peak_mib"], "{:.1f}"), _num(row["process_mib"], "{:.1f}"), torch_mem,
            _num(row["joules_per_image"], "{:.3f}"), _num(row["rss_mib"], "{:.1f}"), _num(row["cold_ms"], "{:.1f}"),
            _num(row["step_ms"], "{:.2f}"),
        ]))
    return "\n".join(lines)


def _quality_table(rows: list[dict[str, Any]]) -> str:
    has_lpips = any(_present(r["lpips"]) for r in rows)
    has_fid = any(_present(r["fid"]) or _present(r["isc"]) or _present(r["kid"]) for r in rows)
    has_accuracy = any(_present(r["class_accuracy"]) for r in rows)
    has_clip = any(_present(r["clip_score"]) for r in rows)
    header = headers("case", "space", "psnr_db", "ssim", "mse", "max_abs")
    header += headers("lpips") if has_lpips else []
    header += headers("class_accuracy") if has_accuracy else []
    header += headers("clip_score") if has_clip else []
    header += headers("fid", "isc", "kid", "fidelity_n") if has_fid else []
    lines = _head(header, left=2)
    for row in rows:
        base = row["is_baseline"]
        cells = [
            row["case"], "(reference)" if base else (_texts([row], "space") or ["n/a"])[0], "(reference)" if base else _psnr(row["psnr_db"]),
            "(reference)" if base else _num(row["ssim"], "{:.4f}"), _num(row["mse"], "{:.3g}"), _num(row["max_abs"], "{:.3g}"),
        ]
        if has_lpips:
            cells.append("(reference)" if base else _num(row["lpips"], "{:.4f}"))
        if has_accuracy:
            cells.append(_num(row["class_accuracy"], "{:.1%}"))
        if has_clip:
            cells.append(_num(row["clip_score"], "{:.2f}"))
        if has_fid:
            cells += [_num(row["fid"], "{:.3f}"), _num(row["isc"], "{:.3f}"), _num(row["kid"], "{:.4f}"), _num(row["fidelity_n"], "{:d}")]
        lines.append(_line(cells))
    return "\n".join(lines)


def _notes(rows: list[dict[str, Any]]) -> list[str]:
    methods = _texts(rows, "speedup_method") or [SPEEDUP_METHOD]
    notes = [f"speedup: {m}; against the baseline of this run, measured with the same batch, steps and mode." for m in methods]
    if any(r.get("timing_order") == "blocked" for r in rows):
        notes.append("(blocked): the case's repeats ran back to back (a strong execution mode keeps its compiled programs "
                     "alive, or timing.order is blocked); its rounds pair with the baseline's by position, not in time.")
    if _texts(rows, "parallel"):
        notes.append("[ulysses=N], [ring=N]: each call split over N ranks by context parallelism; its ms are rank 0's wall time of one "
                     "whole call, every rank starting it together; its speedup is against the baseline on one device per rank, in the "
                     "same rounds (the N devices' gain and the strategy's together), unless the baseline is split alike; its TFLOP are "
                     "the whole call's, over all ranks.")
    notes.append("TFLOP / call: exact FLOPs of one sampling call (torch FlopCounterMode: matrix products, convolutions, "
                 "attention; probes included), mean over seeds; FLOP speedup: the baseline's over the case's.")
    notes.append(f"noise: {NOISE_TIP}.")
    notes += [f"{r['case']}: {r['implausible']}." for r in rows if isinstance(r.get("implausible"), str) and r["implausible"]]
    timers = _texts(rows, "timer")
    if timers:
        notes.append(f"timer: {', '.join(timers)}; the cold call is the first warmup call (compilation included, if any).")
    by_text: dict[str, list[str]] = {}
    for key, label in (("memory_note", "GPU memory"), ("process_note", "process GPU memory"), ("energy_note", "energy")):
        for text in _texts(rows, key):
            by_text.setdefault(text, []).append(label)
    for text, labels in by_text.items():
        notes.append(f"{', '.join(labels)}: {text}.")
    scopes = set(_texts(rows, "rss_scope"))
    if "process" in scopes:
        notes.append("peak RSS: process-lifetime peak (this system does not allow a per-case reset).")
    if rows and not any(_present(r["lpips"]) for r in rows):
        reasons = _texts(rows, "lpips_note")
        if reasons:
            notes.append(f"LPIPS column left out: {'; '.join(reasons)}.")
    if any(_present(r["clip_score"]) for r in rows):
        notes.append("CLIP score: 100 x max(cos, 0) of each image's CLIP embedding with its prompt's (Hessel et al. 2021), "
                     "mean over the case's images (a video: over its frames); not paired: the baseline has its own.")
    fid_notes = _texts(rows, "fidelity_note")
    if fid_notes:
        notes.append(f"FID / IS / KID: {'; '.join(fid_notes)}.")
    return notes


def _texts(rows: list[dict[str, Any]], key: str) -> list[str]:
    """The distinct non-empty strings in column `key` (pandas turns missing ones into NaN)."""
    return sorted({r[key] for r in rows if isinstance(r.get(key), str) and r[key]})


def _head(header: list[str], left: int) -> list[str]:
    return markdown.head(header, markdown.left_then_right(len(header), left))


def _line(cells: list[Any]) -> str:
    return markdown.row(cells)


def _speedup(row: dict[str, Any]) -> str:
    if not _present(row["speedup"]):
        return "n/a"
    blocked = " (blocked)" if row.get("timing_order") == "blocked" else ""
    blocked += " (implausible)" if isinstance(row.get("implausible"), str) and row["implausible"] else ""
    if _present(row["speedup_low"]) and _present(row["speedup_high"]):
        return f"{row['speedup']:.2f}x [{row['speedup_low']:.2f}, {row['speedup_high']:.2f}]{blocked}"
    return f"{row['speedup']:.2f}x{blocked}"


def _mib(value: Any) -> float | None:
    return None if value is None else value / 2**20


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _num(value: Any, fmt: str) -> str:
    if not _present(value):
        return "n/a"
    if fmt == "{:d}":
        return str(int(value))
    return fmt.format(value)


def _psnr(value: Any) -> str:
    if not _present(value):
        return "n/a"
    return "identical" if math.isinf(value) else f"{value:.1f}"
