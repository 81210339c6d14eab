"""The column catalogue: one definition of each figure the views show, its unit and its meaning.

The results frame (`views.table.results_frame`) has one column per entry, in this order, and
`results.csv` is that frame; the markdown and terminal tables, `compare`'s table and the
HTML report's summary take their headings and tooltips from here, so a column cannot be
called one thing in one view and another elsewhere, nor explained two ways. `noise` in
particular is the spread of a case's timed calls in every view (`measure.stats.Measurement.noise`).
"""

from __future__ import annotations

from dataclasses import dataclass

from dqar_bench.measure.stats import NOISY, PAIRED_SPEEDUP_METHOD, UNRELIABLE

IMPLAUSIBLE_SPEEDUP = 1.05
"""A speedup above this for a case that reused nothing (it does at least the baseline's work,
plus its hooks) cannot be real: it is drift or noise, and the views say so."""


@dataclass(frozen=True)
class Column:
    key: str
    """The frame's (and the CSV's) column."""
    name: str
    """What the tables call it (and `compare`, as 'name base -> new')."""
    unit: str = ""
    """Of the frame's value: 'ms', 'MiB', 'dB', 'x' (a ratio), '%' (a fraction shown as a percentage), or none."""
    tip: str = ""
    """What it means: the report's header tooltip."""
    heading: str = ""
    """The tables' heading where the cell says more than the name (an interval, say)."""

    @property
    def header(self) -> str:
        return self.heading or self.name


NOISE_TIP = f"IQR / median of the case's timed calls: over {NOISY:.0%} noisy, over {UNRELIABLE:.0%} unreliable"

_ALL = [
    Column("case", "case"),
    Column("status", "status", tip="ok, failed or unsupported"),
    Column("parts", "parts (gate / cache / quantizer / scheduler)", tip="the parts as the suite gave them"),
    Column("median_ms", "median ms", "ms", "median time of one sampling call"),
    Column("per_image_ms", "ms / image", "ms", "median time of one sampling call divided by the batch"),
    Column("speedup", "speedup", "x",
           f"against the baseline of the same run and mode: {PAIRED_SPEEDUP_METHOD} (baseline's time / case's time in the same round)",
           heading="speedup [95% CI]"),
    Column("reuse_ratio", "reuse", "%", "reused block evaluations / all block evaluations of the scored calls (one per seed)"),
    Column("cache_mib", "cache MiB", "MiB", "the most bytes the cache held during a call"),
    Column("psnr_db", "PSNR dB", "dB", "to the baseline's outputs on the same seeds"),
    Column("max_abs", "max abs (latents)", tip="largest absolute difference to the baseline's latents"),
    Column("mse", "MSE (latents)", tip="mean squared difference to the baseline's latents"),
    Column("error", "error", tip="why the case failed or is unsupported"),
    Column("is_baseline", "is baseline"),
    Column("n", "timed calls", tip="every timed call, over all rounds and seeds"),
    Column("mean_ms", "mean ms", "ms", "mean time of one sampling call"),
    Column("p10_ms", "p10 ms", "ms", "10th percentile of the timed calls"),
    Column("p90_ms", "p90 ms", "ms", "90th percentile of the timed calls"),
    Column("iqr_ms", "IQR ms", "ms", "interquartile range of the timed calls"),
    Column("noise", "noise", tip=NOISE_TIP),
    Column("speedup_low", "speedup low", "x", "lower end of the speedup's 95% interval"),
    Column("speedup_high", "speedup high", "x", "upper end of the speedup's 95% interval"),
    Column("speedup_note", "speedup note", tip="why there is no speedup"),
    Column("cold_ms", "cold call ms", "ms", "the first warmup call (compilation or capture included)"),
    Column("step_ms", "step ms (median)", "ms", "median time of one denoising step"),
    Column("timer", "timer", tip="the clock the calls were timed with"),
    Column("gpu_peak_mib", "GPU used peak MiB (NVML)", "MiB", "NVML device memory peak"),
    Column("process_mib", "process MiB (NVML)", "MiB", "this process's GPU memory peak (NVML)"),
    Column("torch_alloc_mib", "torch alloc / reserved MiB", "MiB", "torch allocator peaks: allocated / reserved"),
    Column("torch_reserved_mib", "torch reserved MiB", "MiB", "torch allocator peak reserved"),
    Column("rss_mib", "peak RSS MiB", "MiB", "resident memory peak of the process"),
    Column("rss_scope", "RSS scope", tip="case: reset per case; process: the process's lifetime peak"),
    Column("joules_per_image", "J / image", "J", "energy of the timed calls per image"),
    Column("memory_note", "GPU memory note"),
    Column("process_note", "process GPU memory note"),
    Column("energy_note", "energy note"),
    Column("space", "PSNR / SSIM on", tip="latent: on the latents; image: on the decoded images"),
    Column("ssim", "SSIM", tip="to the baseline's outputs on the same seeds"),
    Column("lpips", "LPIPS", tip="to the baseline's decoded images"),
    Column("lpips_note", "LPIPS note"),
    Column("fid", "FID", tip="Frechet distance of the case's images to the reference set"),
    Column("isc", "IS", tip="Inception score"),
    Column("kid", "KID", tip="kernel inception distance"),
    Column("fidelity_n", "images", tip="images scored for FID / IS / KID"),
    Column("fidelity_note", "FID note"),
    Column("execution", "mode", tip="execution mode"),
    Column("class_accuracy", "class accuracy", "%", "share of outputs a classifier reads as their label"),
    Column("clip_score", "CLIP score", tip="image-text agreement"),
    Column("tflop_per_call", "TFLOP / call", "TFLOP", "floating-point operations of one sampling call"),
    Column("flop_speedup", "FLOP speedup", "x", "baseline FLOPs / case FLOPs per sampling call"),
    Column("timing_order", "timing order", tip="interleaved rounds, or blocked (repeats back to back)"),
    Column("rounds", "rounds", tip="timed rounds"),
    Column("speedup_method", "speedup method"),
    Column("parallel", "parallel", tip="context parallelism of the case's calls"),
    Column("implausible", "implausible", tip=f"why a speedup above {IMPLAUSIBLE_SPEEDUP:.2f}x cannot be real"),
]

CATALOGUE: dict[str, Column] = {c.key: c for c in _ALL}
FRAME_COLUMNS: list[str] = [c.key for c in _ALL]


def column(key: str) -> Column:
    return CATALOGUE[key]


def headers(*keys: str) -> list[str]:
    """The tables' headings of these columns."""
    return [CATALOGUE[k].header for k in keys]
