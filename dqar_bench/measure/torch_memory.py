"""torch's CUDA caching-allocator peaks (allocated and reserved), reset between cases.

Allocated is what tensors held at most; reserved is what the allocator took from the
driver, and is what another process could not have. Before a case the cache is emptied
(outside any timed region) so the reserved peak is the case's own, not what the previous
case left behind.
"""

from __future__ import annotations

import gc
from typing import Any

import torch


def reset(device: torch.device, cuda: Any = None) -> None:
    if device.type != "cuda":
        return
    cuda = cuda if cuda is not None else torch.cuda
    gc.collect()
    cuda.synchronize(device)
    cuda.empty_cache()
    cuda.reset_peak_memory_stats(device)


def peaks(device: torch.device, cuda: Any = None) -> dict[str, int | None]:
    """Peak allocated and reserved bytes since `reset`; None on devices without the allocator."""
    if device.type != "cuda":
        return {"torch_peak_allocated_bytes": None, "torch_peak_reserved_bytes": None}
    cuda = cuda if cuda is not None else torch.cuda
    return {
        "torch_peak_allocated_bytes": int(cuda.max_memory_allocated(device)),
        "torch_peak_reserved_bytes": int(cuda.max_memory_reserved(device)),
    }
