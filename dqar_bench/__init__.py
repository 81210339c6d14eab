"""dqar-bench: an honest benchmark harness for training-free DiT inference acceleration.

The names below load on first use (PEP 562), not at import: `dqar-bench --help` imports
this package, and importing torch here would cost it seconds of start-up time.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "StepContext": "dqar_bench.core.context",
    "hookimpl": "dqar_bench.core.hookspecs",
    "Cache": "dqar_bench.core.parts",
    "Gate": "dqar_bench.core.parts",
    "Quantizer": "dqar_bench.core.parts",
    "Scheduler": "dqar_bench.core.parts",
    "StaticGate": "dqar_bench.core.parts",
}

__all__ = ["Cache", "Gate", "Quantizer", "Scheduler", "StaticGate", "StepContext", "hookimpl", "__version__"]

if TYPE_CHECKING:
    from dqar_bench.core.context import StepContext
    from dqar_bench.core.hookspecs import hookimpl
    from dqar_bench.core.parts import Cache, Gate, Quantizer, Scheduler, StaticGate


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'dqar_bench' has no attribute '{name}'")
    value = getattr(import_module(_LAZY[name]), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
