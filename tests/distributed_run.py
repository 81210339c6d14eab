"""One rank of `dqar-bench` for the two-process run tests (`test_distributed_runs.py` starts them as torchrun would).

    RANK=r WORLD_SIZE=2 ... python tests/distributed_run.py run SUITE -o DIR

Two faults can be asked for, both on rank 1 when it starts the scored calls of CASE:
`DQAR_TEST_DIE=CASE` exits at once, with no goodbye (as a killed process does);
`DQAR_TEST_HANG=CASE` sleeps for ten minutes (as a rank stuck in a driver call does).
"""

from __future__ import annotations

import os
import sys
import time

from dqar_bench import cli
from dqar_bench.runs.case_run import CaseRun

DIE, HANG = os.environ.get("DQAR_TEST_DIE"), os.environ.get("DQAR_TEST_HANG")

if (DIE or HANG) and os.environ.get("RANK") == "1":
    scored_calls = CaseRun._scored_calls

    def faulty(self, forward, mode):  # type: ignore[no-untyped-def]
        if self.case.name == DIE:
            os._exit(3)
        if self.case.name == HANG:
            time.sleep(600)
        return scored_calls(self, forward, mode)

    CaseRun._scored_calls = faulty  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))
