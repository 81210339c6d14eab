"""Measurement: how each number dqar-bench records is taken and summarised.

One module per source of numbers: `timing` (the timer and its clocks), `rounds` (timed
repeats in rotated order, paired speedups), `stats` (summaries, speedup intervals,
Mann-Whitney U), `nvml` and `energy` (the GPU as the driver sees it), `torch_memory` and
`rss` (allocator and host peaks), `meter` (all of them around one case), `environment`
(what the run ran on), `flops` (exact FLOP counts), `quality` (paired quality against the
baseline), `fidelity`, `clip_score` and `lpips` (distributional, text-image and
perceptual quality), `instruments` (the kit a run measures with), `records` (the record
of each case and the run directory it lives in), `progress` (what a run prints as it
goes), `signal_trace` (every gate's signal per step, as a calibration recorded it). Nothing here imports a GPU library at import time.

Imports: `core` only.
"""
