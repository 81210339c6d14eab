"""Measurement: how each number dqar-bench prints is taken, summarised and compared.

One module per source of numbers: `stats` (summaries, speedup intervals, Mann-Whitney U),
`nvml` and `energy` (the GPU as the driver sees it), `torch_memory` and `rss` (allocator
and host peaks), `meter` (all of them around one case), `environment` (what the run ran on),
`fidelity`, `clip_score` and `lpips` (distributional, text-image and perceptual quality), `instruments` (the
kit a run measures with), `compare` (the CI gate), `plot` and `progress` (views), and
`synthetic` (a model of known cost that checks the timer). The timer itself is
`dqar_bench.timing`, paired quality `dqar_bench.quality`. Nothing here imports a GPU
library at import time.
"""
