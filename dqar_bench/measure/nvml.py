"""The GPU as the driver sees it: device and per-process memory, sampled in the background.

torch's allocator cannot see the CUDA context, cuBLAS workspaces or other processes; NVML
can. A thread polls every `interval_s` (10 ms by default) and keeps peaks. The device is
found by UUID (torch's `get_device_properties(i).uuid` against NVML's), never by index:
CUDA_VISIBLE_DEVICES and NVML number devices differently, and a MIG instance has no
index of its own. Everything that NVML cannot tell in a given setting degrades to None
with a note saying why, never to an exception:

- `usedGpuMemory` None (MIG, some drivers, no permission): no per-process figure;
- no process with our PID (in a container NVML reports host PIDs): no per-process figure;
- a MIG instance: device memory is the instance's; the energy counter is the whole GPU's,
  so no energy figure (see `energy`).

`pynvml` comes from the nvidia-ml-py package; tests pass a fake module in its place.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

import torch

MIG_ENABLED = 1  # NVML_DEVICE_MIG_ENABLE


def load(nvml: Any = None) -> tuple[Any | None, str | None]:
    """NVML, initialised; or None and why not."""
    if nvml is None:
        try:
            import pynvml as nvml  # nvidia-ml-py
        except ImportError:
            return None, "not available: nvidia-ml-py (pynvml) is not installed"
    try:
        nvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return None, f"not available: NVML did not start ({describe_error(exc)})"
    return nvml, None


def normalize_uuid(value: Any) -> str:
    """'GPU-8a1b...' (NVML), 'MIG-...' (NVML, MIG) and '8a1b...' (torch) to one form."""
    text = value.decode() if isinstance(value, (bytes, bytearray)) else str(value)
    text = text.strip().lower()
    for prefix in ("gpu-", "mig-"):
        if text.startswith(prefix):
            return text[len(prefix):]
    return text


def torch_uuid(device: torch.device, cuda: Any = None) -> str | None:
    """The UUID of torch's `device`, or None where torch does not expose one."""
    cuda = cuda if cuda is not None else torch.cuda
    index = device.index if device.index is not None else cuda.current_device()
    uuid = getattr(cuda.get_device_properties(index), "uuid", None)
    return normalize_uuid(uuid) if uuid else None


@dataclass
class NvmlDevice:
    """An NVML handle for the GPU (or MIG instance) torch is running on."""

    nvml: Any
    handle: Any
    uuid: str
    name: str
    mig: bool
    """True for a MIG instance, or a GPU in MIG mode: per-process and energy figures are
    not attributable to this process."""


def find_device(nvml: Any, uuid: str) -> NvmlDevice | None:
    """The NVML device (or MIG instance) whose UUID is `uuid`; None if there is none."""
    for index in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        migs = _mig_handles(nvml, handle)
        if normalize_uuid(nvml.nvmlDeviceGetUUID(handle)) == uuid:
            return NvmlDevice(nvml, handle, uuid, _name(nvml, handle), mig=_mig_mode(nvml, handle))
        for mig in migs:
            if normalize_uuid(nvml.nvmlDeviceGetUUID(mig)) == uuid:
                return NvmlDevice(nvml, mig, uuid, _name(nvml, handle) + " (MIG)", mig=True)
    return None


def open_device(device: torch.device, nvml: Any = None, cuda: Any = None) -> tuple[NvmlDevice | None, str | None]:
    """NVML's view of torch's `device`, or None and a note for the table."""
    if device.type != "cuda":
        return None, "n/a: no GPU"
    module, note = load(nvml)
    if module is None:
        return None, note
    try:
        uuid = torch_uuid(device, cuda)
    except Exception as exc:
        return None, f"not available: torch gave no device UUID ({describe_error(exc)})"
    if uuid is None:
        return None, "not available: torch gave no device UUID to match NVML's"
    try:
        found = find_device(module, uuid)
    except Exception as exc:
        return None, f"not available: NVML could not list devices ({describe_error(exc)})"
    if found is None:
        return None, f"not available: no NVML device has torch's UUID {uuid}"
    return found, None


def process_memory(device: NvmlDevice, pid: int) -> tuple[int | None, str | None]:
    """GPU memory NVML attributes to process `pid` on `device`, or None and why not."""
    nvml = device.nvml
    try:
        processes = nvml.nvmlDeviceGetComputeRunningProcesses(device.handle)
    except Exception as exc:
        return None, f"not available: NVML lists no processes here ({describe_error(exc)})"
    mine = [p for p in processes if getattr(p, "pid", None) == pid]
    if not mine:
        return None, "not available: NVML lists no process with this PID (in a container it reports host PIDs)"
    used = [getattr(p, "usedGpuMemory", None) for p in mine]
    if any(u is None for u in used):
        reason = "MIG" if device.mig else "the driver does not report it"
        return None, f"not available: NVML gives no per-process memory ({reason})"
    return int(sum(used)), None


class NvmlSampler:
    """Polls device memory (and this process's, where NVML reports it) on a thread."""

    def __init__(self, device: NvmlDevice, interval_s: float = 0.01, pid: int | None = None) -> None:
        self.device = device
        self.interval_s = interval_s
        self.pid = os.getpid() if pid is None else pid
        self.samples = 0
        self.device_used_peak: int | None = None
        self.process_peak: int | None = None
        self.process_note: str | None = None
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.sample()  # one sample before anything runs: even a short case has a figure
        self._thread = threading.Thread(target=self._loop, name="dqar-nvml-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.sample()
        return self.report()

    def sample(self) -> None:
        nvml, handle = self.device.nvml, self.device.handle
        try:
            used = int(nvml.nvmlDeviceGetMemoryInfo(handle).used)
            self.device_used_peak = used if self.device_used_peak is None else max(self.device_used_peak, used)
        except Exception as exc:  # never let the sampler take the run down
            self.error = self.error or f"device memory not read ({describe_error(exc)})"
        try:
            mine, note = process_memory(self.device, self.pid)
        except Exception as exc:
            mine, note = None, f"not available ({describe_error(exc)})"
        if mine is not None:
            self.process_peak = mine if self.process_peak is None else max(self.process_peak, mine)
        elif self.process_note is None:
            self.process_note = note
        self.samples += 1

    def report(self) -> dict[str, Any]:
        return {
            "gpu": self.device.name,
            "gpu_uuid": self.device.uuid,
            "mig": self.device.mig,
            "device_used_peak_bytes": self.device_used_peak,
            "process_peak_bytes": self.process_peak,
            "process_note": None if self.process_peak is not None else self.process_note,
            "nvml_samples": self.samples,
            "nvml_interval_s": self.interval_s,
            "nvml_note": self.error,
        }

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()


def driver_version(nvml: Any = None) -> str | None:
    module, _ = load(nvml)
    if module is None:
        return None
    try:
        version = module.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:
        return None
    finally:
        shutdown(module)


def shutdown(nvml: Any) -> None:
    try:
        nvml.nvmlShutdown()
    except Exception:
        pass


def _mig_handles(nvml: Any, handle: Any) -> list[Any]:
    if not _mig_mode(nvml, handle):
        return []
    handles = []
    try:
        count = int(nvml.nvmlDeviceGetMaxMigDeviceCount(handle))
    except Exception:
        return []
    for index in range(count):
        try:
            handles.append(nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, index))
        except Exception:  # NotFound: an empty slot
            continue
    return handles


def _mig_mode(nvml: Any, handle: Any) -> bool:
    try:
        current, _pending = nvml.nvmlDeviceGetMigMode(handle)
    except Exception:  # NotSupported on GPUs without MIG
        return False
    return current == MIG_ENABLED


def _name(nvml: Any, handle: Any) -> str:
    try:
        name = nvml.nvmlDeviceGetName(handle)
    except Exception:
        return "unknown GPU"
    return name.decode() if isinstance(name, bytes) else str(name)


def describe_error(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
