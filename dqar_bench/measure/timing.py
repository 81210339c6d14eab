"""Timing of sampling calls, and of the steps inside them.

On a GPU: CUDA events around each call and exactly one synchronisation after it, so the
figure is device time end to end; per-step events are recorded (never waited on) by a
forward pre-hook on the transformer, so the hot path gains no sync. On the CPU:
`time.perf_counter` at the same points, or, with the suite's `timing: {clock: cpu}`,
`time.process_time`: the CPU time of this process. On a CPU shared with other jobs, wall
time also counts the time the scheduler gives the others (ratios spread 0.44x-1.8x at load
3-9); CPU time counts only this process's work, so the same calls stay within a few
percent. It counts every thread of the process, so it equals the work of the call at the
suite's thread count (one thread: the call's own thread time). Step marks are reset on every call, and the first
step is timed like the others: step i runs from the start of model call i to the start of
model call i + 1 (the last one to the end of the call), so the scheduler update of a step
is counted in that step and only the set-up before the first model call is left outside.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

import torch

from dqar_bench.core.errors import DqarError

T = TypeVar("T")

_clock: Callable[[], float] = time.perf_counter
"""The CPU clock; a test swaps in a virtual one to check the arithmetic exactly."""
_cpu_clock: Callable[[], float] = time.process_time
"""The CPU-time clock of `clock: cpu`."""

CLOCKS = ("wall", "cpu")
"""What a suite may time calls with (`timing.clock`)."""


@dataclass
class CallTiming:
    """One timed call: its total, and one duration per model call inside it."""

    seconds: float
    steps: list[float] = field(default_factory=list)


class CallTimer:
    """Times whole sampling calls on `device`; with a `model`, each of its forward calls too.

    Use as a context manager: entering puts the step hook on the model, leaving removes it
    (the model is left exactly as it was).
    """

    def __init__(self, device: torch.device, model: torch.nn.Module | None = None, cuda: Any = None, clock: str = "wall") -> None:
        if clock not in CLOCKS:
            raise ValueError(f"clock '{clock}' is not one of {', '.join(CLOCKS)}")
        self.device = device
        self.gpu = device.type == "cuda"
        if clock == "cpu" and self.gpu:
            raise DqarError("timing.clock: cpu times the CPU's work, not a GPU's; use clock: wall on a CUDA device")
        self.cpu_time = clock == "cpu"
        self._cuda = cuda if cuda is not None else torch.cuda
        self._model = model
        self._handle: Any = None
        self._events: list[Any] = []  # a pool, reused call after call
        self._cpu_marks: list[float] = []
        self._used = 0
        self._stream: Any = None

    @property
    def method(self) -> str:
        """The clock, as tables and `compare` name it: cuda-events, perf_counter (wall) or process_time (CPU)."""
        return "cuda-events" if self.gpu else "process_time" if self.cpu_time else "perf_counter"

    def __enter__(self) -> "CallTimer":
        if self._model is not None:
            self._handle = self._model.register_forward_pre_hook(self._mark)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def time(self, fn: Callable[[], T]) -> tuple[CallTiming, T]:
        """Run `fn` once; return its timing and its result."""
        self._used = 0
        self._cpu_marks.clear()
        if not self.gpu:
            clock = _cpu_clock if self.cpu_time else _clock
            begin = clock()
            result = fn()
            end = clock()
            marks = self._cpu_marks[: self._used]
            bounds = marks + [end]
            return CallTiming(end - begin, [b - a for a, b in zip(bounds, bounds[1:])]), result
        cuda = self._cuda
        cuda.synchronize(self.device)  # outside the timed region: nothing earlier leaks in
        self._stream = cuda.current_stream(self.device)
        start = cuda.Event(enable_timing=True)
        stop = cuda.Event(enable_timing=True)
        start.record(self._stream)
        result = fn()
        stop.record(self._stream)
        stop.synchronize()  # the one synchronisation
        bounds = self._events[: self._used] + [stop]
        steps = [a.elapsed_time(b) / 1000.0 for a, b in zip(bounds, bounds[1:])]
        return CallTiming(start.elapsed_time(stop) / 1000.0, steps), result

    def _mark(self, module: torch.nn.Module, args: Any) -> None:
        if self.gpu:
            if self._used == len(self._events):
                self._events.append(self._cuda.Event(enable_timing=True))
            self._events[self._used].record(self._stream)
        else:
            self._cpu_marks.append(_cpu_clock() if self.cpu_time else _clock())
        self._used += 1
