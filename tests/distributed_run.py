"""One rank of `dqar-bench` for the two-process run tests (`test_distributed_runs.py` starts them as torchrun would).

    RANK=r WORLD_SIZE=2 ... python tests/distributed_run.py run SUITE -o DIR

`DQAR_TEST_DIE=CASE` asks for one fault: rank 1 exits at once, with no goodbye (as a killed
process does), when it starts the scored calls of CASE.
"""

from __future__ import annotations

import os
import sys

from dqar_bench import cli
from dqar_bench.case_run import CaseRun

DIE = os.environ.get("DQAR_TEST_DIE")

if DIE and os.environ.get("RANK") == "1":
    scored_calls = CaseRun._scored_calls

    def dying(self, forward, mode):  # type: ignore[no-untyped-def]
        if self.case.name == DIE:
            os._exit(3)
        return scored_calls(self, forward, mode)

    CaseRun._scored_calls = dying  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))
