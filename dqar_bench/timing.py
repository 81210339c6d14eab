"""Wall-clock timing of one sampling call.

On a GPU: CUDA events around the call and one synchronisation after it, so the figure is
GPU time end to end and the timer adds no sync inside the loop. On the CPU:
`time.perf_counter`.
"""

from __future__ import annotations

import time
from typing import Callable, TypeVar

import torch

T = TypeVar("T")


def timed(fn: Callable[[], T], device: torch.device) -> tuple[float, T]:
    """Run `fn` once; return (seconds, its result)."""
    if device.type == "cuda":
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        result = fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0, result
    begin = time.perf_counter()
    result = fn()
    return time.perf_counter() - begin, result
