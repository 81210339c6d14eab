"""Peak resident memory of this process, per case where the kernel allows it.

Linux keeps the peak (VmHWM) since process start; writing "5" to /proc/self/clear_refs
resets it, which makes a per-case peak possible with the standard library alone. Where that
is refused (another OS, a locked-down container) the figure is the process-lifetime peak
from `resource.getrusage`, and its scope says so.
"""

from __future__ import annotations

import sys
from pathlib import Path

CLEAR_REFS = Path("/proc/self/clear_refs")
STATUS = Path("/proc/self/status")


def reset_peak() -> str:
    """Start a new peak; return the scope the next `peak_bytes` will cover: 'case' or 'process'."""
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return "process"
    return "case" if _vm_hwm() is not None else "process"


def peak_bytes() -> int | None:
    """Peak resident set size in bytes (since `reset_peak`, where it worked)."""
    hwm = _vm_hwm()
    if hwm is not None:
        return hwm
    try:
        import resource
    except ImportError:  # not on this platform
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB elsewhere


def _vm_hwm() -> int | None:
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
