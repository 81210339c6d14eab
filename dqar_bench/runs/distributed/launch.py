"""`dqar-bench run ... --nproc N`: the same command as N ranks under `torch.distributed.run`.

It is torchrun itself (its own argument parser and `run`, in this process), with
`--standalone` rendezvous on this machine, so what runs is exactly what

    python -m torch.distributed.run --nproc-per-node N --standalone -m dqar_bench run ...

runs. torchrun exits 1 whatever its workers did; `launch` returns the exit status of the
first rank that failed instead (2 for a bad suite, 1 for a failed case), so `--nproc`
keeps the command's meaning of its exit status. Several nodes are torchrun's (or srun's)
job, not this function's: docs/scaling.md shows the command.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Sequence

from dqar_bench.core.errors import DqarError
from dqar_bench.core.world import launched_by_torchrun
from dqar_bench.measure.records import RunDir


def torchrun_args(nproc: int, argv: Sequence[str]) -> list[str]:
    """torchrun's arguments for running `dqar-bench ARGV` as `nproc` ranks on this machine."""
    return ["--nproc-per-node", str(nproc), "--standalone", "-m", "dqar_bench", *argv]


def without_nproc(argv: Sequence[str]) -> list[str]:
    """`argv` less its `--nproc N` / `--nproc=N` (the ranks must not launch again)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def launch(nproc: int, argv: Sequence[str], threads: int = 1, outputs: Sequence[Path] = ()) -> int:
    """Run `dqar-bench ARGV` as `nproc` ranks here; the exit status of the first rank that failed, else 0.

    The ranks get OMP_NUM_THREADS=`threads` (the suite's) unless the user set it: given
    explicitly, torchrun does not print its 4-line banner about choosing it for them.
    `outputs`, the run directories the ranks will open, are checked for another run's lock
    first: refused in one line, exit 2, before any rank starts.
    """
    if nproc < 1:
        raise DqarError(f"--nproc must be at least 1, got {nproc}")
    if launched_by_torchrun():
        raise DqarError("--nproc starts torchrun itself; this process is already a rank of one (leave out --nproc, or torchrun)")
    for output in outputs:
        RunDir.check_free(output)
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    given = "OMP_NUM_THREADS" in os.environ
    if not given:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        run(parse_args(torchrun_args(nproc, argv)))
    except ChildFailedError as exc:
        codes = [int(f.exitcode) for f in exc.failures.values()]
        if 2 in codes:  # a rank refused its input: the others' "rank N died" follows from it
            return 2
        _, failure = exc.get_first_failure()
        code = int(failure.exitcode)
        return code if code > 0 else 128 + (-code or signal.SIGTERM)
    finally:
        if not given:
            del os.environ["OMP_NUM_THREADS"]
    return 0


def single_process_only(what: str) -> None:
    """Refuse to run `what` as one of several ranks: it would do all the work on every rank."""
    if launched_by_torchrun():
        rank, size = os.environ["RANK"], os.environ["WORLD_SIZE"]
        raise DqarError(f"{what} does not split its work across ranks (this is rank {rank} of {size}); run it as one process, without torchrun (only `dqar-bench run` takes several ranks)")
