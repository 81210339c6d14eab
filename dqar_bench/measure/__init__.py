"""Measurement: how each number dqar-bench prints is taken, summarised and compared.

One module per source of numbers: `stats` (summaries, speedup intervals, Mann-Whitney U),
`nvml` and `energy` (the GPU as the driver sees it), `torch_memory` and `rss` (allocator
and host peaks), `meter` (all of them around one case), `environment` (what the run ran on),
`fidelity` and `clip_score` (distributional and text-image quality), `compare` (the CI
gate), `plot` and `progress` (views). Nothing here imports a GPU library at import time.
"""
