"""Everything measured around one case besides time: memory peaks and energy.

Entering a `CaseMeter` (before the case's warmup) resets the allocator and RSS peaks and
starts the NVML sampler; leaving stops the sampler. `timed_section` brackets a stretch of
timed calls for the energy counter, inside the `with` or (interleaved rounds) after it,
when it opens NVML for the stretch itself; the stretches add up. Nothing here runs inside a timed call except the
sampler thread, which takes the GIL for a few microseconds every interval.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from dqar_bench.measure import nvml as nvml_mod
from dqar_bench.measure import rss, torch_memory
from dqar_bench.measure.energy import EnergyMeter


class CaseMeter:
    def __init__(self, device: torch.device, nvml_interval_s: float = 0.01, nvml: Any = None, cuda: Any = None) -> None:
        self.device = device
        self.nvml_interval_s = nvml_interval_s
        self._nvml_module = nvml
        self._cuda = cuda
        self._sampler: nvml_mod.NvmlSampler | None = None
        self._nvml_device: nvml_mod.NvmlDevice | None = None
        self._note: str | None = None if device.type == "cuda" else "n/a: no GPU"
        self._energy = EnergyMeter(None, "n/a: no GPU")
        self._rss_scope = "process"
        self._nvml_report: dict[str, Any] | None = None
        self._inside = False

    def __enter__(self) -> "CaseMeter":
        self._inside = True
        torch_memory.reset(self.device, self._cuda)
        self._rss_scope = rss.reset_peak()
        if self.device.type == "cuda":
            self._nvml_device, self._note = nvml_mod.open_device(self.device, self._nvml_module, self._cuda)
            self._energy = EnergyMeter(self._nvml_device, self._note)
            if self._nvml_device is not None:
                self._sampler = nvml_mod.NvmlSampler(self._nvml_device, self.nvml_interval_s)
                self._sampler.start()
        return self

    @contextlib.contextmanager
    def timed_section(self) -> Iterator[None]:
        opened = None
        if not self._inside and self._nvml_device is not None:
            opened, note = nvml_mod.open_device(self.device, self._nvml_module, self._cuda)
            self._energy.device, self._energy.note = opened, note or self._energy.note
        self._energy.start()
        try:
            yield
        finally:
            self._energy.stop()
            if opened is not None:
                nvml_mod.shutdown(opened.nvml)

    def __exit__(self, *exc: object) -> None:
        self._inside = False
        if self._sampler is not None:
            self._nvml_report = self._sampler.stop()
            self._sampler = None
        if self._nvml_device is not None:
            nvml_mod.shutdown(self._nvml_device.nvml)

    def report(self, images: int) -> dict[str, Any]:
        """`memory` and `energy` fields of the record; `images` made in the timed section."""
        gpu = self._nvml_report or {
            "device_used_peak_bytes": None,
            "process_peak_bytes": None,
            "process_note": self._note,
            "nvml_note": self._note,
            "nvml_samples": 0,
        }
        memory = {
            **gpu,
            **torch_memory.peaks(self.device, self._cuda),
            "peak_rss_bytes": rss.peak_bytes(),
            "peak_rss_scope": self._rss_scope,
        }
        return {"memory": memory, "energy": self._energy.report(images)}
