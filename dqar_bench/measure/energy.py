"""Energy per image from NVML's cumulative energy counter.

`nvmlDeviceGetTotalEnergyConsumption` counts millijoules since the driver loaded (Volta
and newer). The harness reads it just before and just after each stretch of a case's
timed calls (one per round when rounds are interleaved), adds the deltas, and divides
the sum by the images those calls made. It is the whole board's energy,
idle draw included, which is what a user pays for. A MIG instance shares the board, so
its energy is not attributable and is reported as not available.
"""

from __future__ import annotations

from typing import Any

from dqar_bench.measure.nvml import NvmlDevice, describe_error


class EnergyMeter:
    def __init__(self, device: NvmlDevice | None, note: str | None = None) -> None:
        self.device = device
        self.note = note
        self._start: int | None = None
        self._total_mj = 0
        self._stretches = 0
        self._missed = False

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> None:
        end = self._read() if self._start is not None else None
        if self._start is None or end is None:
            self._missed = True  # one unread stretch makes the sum wrong: report none
        else:
            self._total_mj += end - self._start
            self._stretches += 1
        self._start = None

    def report(self, images: int) -> dict[str, Any]:
        if self._missed or not self._stretches:
            return {"joules": None, "joules_per_image": None, "energy_note": self.note or "not available"}
        joules = self._total_mj / 1000.0
        return {"joules": joules, "joules_per_image": joules / images if images else None, "energy_note": None}

    def _read(self) -> int | None:
        if self.device is None:
            return None
        if self.device.mig:
            self.note = "not available: a MIG instance shares the GPU's energy counter"
            return None
        try:
            return int(self.device.nvml.nvmlDeviceGetTotalEnergyConsumption(self.device.handle))
        except Exception as exc:  # NotSupported before Volta
            self.note = f"not available: NVML has no energy counter here ({describe_error(exc)})"
            return None
