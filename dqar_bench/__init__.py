"""dqar-bench: an honest benchmark harness for training-free DiT inference acceleration."""

from dqar_bench.core.context import StepContext
from dqar_bench.core.hookspecs import hookimpl
from dqar_bench.core.parts import Cache, Gate, Quantizer, Scheduler, StaticGate

__version__ = "0.1.0"

__all__ = ["Cache", "Gate", "Quantizer", "Scheduler", "StaticGate", "StepContext", "hookimpl", "__version__"]
