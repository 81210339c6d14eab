"""dqar-bench: an honest benchmark harness for training-free DiT inference acceleration.

Two audiences import from here:

- plugin authors, for the part base classes and the hook marker
  (`from dqar_bench import Gate, StepContext, hookimpl`);
- Python users, to run suites without the command line
  (`from dqar_bench import Case, Suite, run`; see `dqar_bench.runs.api`).

Every name is imported when first used (PEP 562 `__getattr__`), so `import dqar_bench`
and `dqar-bench --help` stay fast: torch, diffusers and pandas load only when a name
that needs them is touched. The targets are named as strings, which keeps this module
out of every part's code digest (`dqar_bench.config.code_hash` follows the names'
defining modules instead).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY: dict[str, tuple[str, str]] = {
    "Cache": ("dqar_bench.core.parts", "Cache"),
    "Gate": ("dqar_bench.core.parts", "Gate"),
    "Quantizer": ("dqar_bench.core.parts", "Quantizer"),
    "Scheduler": ("dqar_bench.core.parts", "Scheduler"),
    "StaticGate": ("dqar_bench.core.parts", "StaticGate"),
    "StepContext": ("dqar_bench.core.context", "StepContext"),
    "hookimpl": ("dqar_bench.core.hookspecs", "hookimpl"),
    "Suite": ("dqar_bench.config.schema", "SuiteSpec"),
    "Case": ("dqar_bench.config.schema", "CaseSpec"),
    "run": ("dqar_bench.runs.api", "run"),
}

__all__ = ["Cache", "Case", "Gate", "Quantizer", "Scheduler", "StaticGate", "StepContext", "Suite", "__version__", "hookimpl", "run"]

if TYPE_CHECKING:  # for type checkers and editors; at run time `__getattr__` imports them
    from dqar_bench.config.schema import CaseSpec as Case
    from dqar_bench.config.schema import SuiteSpec as Suite
    from dqar_bench.core.context import StepContext
    from dqar_bench.core.hookspecs import hookimpl
    from dqar_bench.core.parts import Cache, Gate, Quantizer, Scheduler, StaticGate
    from dqar_bench.runs.api import run


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'dqar_bench' has no attribute '{name}'")
    module = importlib.import_module(target[0])
    value = getattr(module, target[1]) if target[1] else module
    globals()[name] = value  # once imported, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
