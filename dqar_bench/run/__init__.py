"""Running suites: the runner, one case's run, resume, policy traces, and torchrun.

The package is also the Python API's `run`: `from dqar_bench import run; run(suite)`
calls `dqar_bench.run.api.run`. A package and a function cannot both be `dqar_bench.run`
(importing the package sets that attribute), so the package itself is callable, and
every import form of its modules (`import dqar_bench.run.runner as r`) keeps working.

Imports: every other layer; only `cli`, `testing` and the package's API stand above it.
"""

from __future__ import annotations

import sys
import types
from typing import Any


class _CallablePackage(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run a suite and return its table: see `dqar_bench.run.api.run`."""
        # imported on call: it loads torch, which `import dqar_bench` must not
        from dqar_bench.run.api import run

        return run(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
