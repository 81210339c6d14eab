"""What the runner needs to run a suite as several ranks, one code path with a single process.

Rank 0 alone decides what every rank must agree on (the run directory, what a resume
keeps) and alone writes the run directory; the other ranks write into an `Outbox` that
stands in for it. Under data parallelism (the default) their outbox stays empty: rank 0
records every case. Under `--shard cases` each rank runs its own cases (and every
baseline, so its speedups pair with a baseline timed on its own device in its own rounds)
and sends its outbox to rank 0 at the end; a context-parallel case is every rank's, not
spread (`dqar_bench.runs.distributed.teams`), and rank 0 records it.

A user's mistake found by rank 0 stops every rank with the same line (`Echo`), printed once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import torch

from dqar_bench.core.errors import DqarError
from dqar_bench.core.world import Echo, World
from dqar_bench.measure.case_record import CaseRecord, environment_file

T = TypeVar("T")


def decide(world: World, fn: Callable[[], T], what: str) -> T:
    """`fn()` run on rank 0 alone, its result on every rank; its `DqarError` stops every rank with the same line."""
    outcome: Any = None
    if world.is_main:
        try:
            outcome = ("ok", fn())
        except DqarError as exc:
            if not world.distributed:
                raise
            world.broadcast(("error", str(exc), exc.exit_code), what)
            raise
    outcome = world.broadcast(outcome, what)
    if outcome[0] == "error":
        raise Echo(outcome[1], outcome[2])
    return outcome[1]


def together(world: World, fn: Callable[[], T], what: str) -> T:
    """`fn()` on every rank; a `DqarError` on any rank stops every rank (rank 0 says which rank, and why)."""
    try:
        value, failure = fn(), None
    except DqarError as exc:
        if not world.distributed:
            raise
        value, failure = None, (str(exc), exc.exit_code)
    world.barrier(what)  # names a rank that hung in `fn`
    failures = [(rank, f) for rank, f in enumerate(world.all_gather(failure, what)) if f is not None]
    if failures:
        rank, (message, code) = failures[0]
        shown = message if rank == 0 else f"rank {rank}: {message}"
        raise DqarError(shown) if world.is_main else Echo(shown, code)
    return value  # type: ignore[return-value]


def device_kind(device: torch.device) -> str:
    """What a speedup depends on: the device type, and for a GPU its model."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


def check_devices(world: World, device: torch.device) -> None:
    """Refuse, in one line on every rank, a timed run whose ranks are on different kinds of device."""
    kinds = world.all_gather(device_kind(device), "device types")
    if len(set(kinds)) > 1:
        listed = ", ".join(f"rank {r}: {k}" for r, k in enumerate(kinds))
        message = (
            f"mixed device types in one timed run ({listed}); each speedup pairs a case with a baseline on its own device, "
            "and the ranks' figures are read as one: start every rank on the same kind of device"
        )
        raise DqarError(message) if world.is_main else Echo(message)


def my_cases(names: Sequence[str], everywhere: set[str], world: World, shard: bool) -> list[str]:
    """The cases this rank prepares and times: all of them (data parallel), or under `--shard cases`
    the cases every rank runs (`everywhere`: the baselines, and the context-parallel cases, whose
    calls span the ranks) and every N-th other case (the i-th other case goes to rank i mod N)."""
    if not shard:
        return list(names)
    others = [n for n in names if n not in everywhere]
    mine = set(world.shard(others))
    return [n for n in names if n in everywhere or n in mine]


class Outbox:
    """A run directory for a rank that does not write one: what it would write, kept to send to rank 0."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: list[CaseRecord] = []
        self.outputs: dict[str, dict[int, torch.Tensor]] = {}
        self.previews: dict[str, tuple[dict[int, torch.Tensor], dict[str, str] | None]] = {}
        self.environments: dict[str, dict[str, Any]] = {}

    fid_reference_path = None
    rounds_path = None

    def append(self, record: CaseRecord) -> None:
        self.records.append(record)

    def save_outputs(self, case: str, outputs: dict[int, torch.Tensor]) -> None:
        self.outputs[case] = outputs

    def outputs_path(self, case: str) -> Path:
        from dqar_bench.measure.records import outputs_file_name

        return self.path / "outputs" / outputs_file_name(case)

    def save_previews(self, case: str, previews: dict[int, torch.Tensor], meta: dict[str, str] | None = None) -> None:
        self.previews[case] = (previews, meta)

    def write_text(self, name: str, text: str) -> None:
        """The run's own files (suite, environment) are rank 0's to write."""

    def save_environment(self, environment: dict[str, Any]) -> str:
        """This rank's environment, sent with its records (`--shard cases`), for rank 0 to keep;
        the file name its records give."""
        name = environment_file(environment)
        self.environments[name] = environment
        return name

    def contents(self) -> dict[str, Any]:
        return {"records": self.records, "outputs": self.outputs, "previews": self.previews, "environments": self.environments}


def deliver(run: Any, log: Any, contents: dict[str, Any], rounds: list[dict[str, Any]]) -> None:
    """Write another rank's outbox and round lines into the run directory (rank 0): rounds first, then outputs, then records."""
    for line in rounds:
        log.append(line)
    for case, outputs in contents["outputs"].items():
        run.save_outputs(case, outputs)
    for case, (previews, meta) in contents["previews"].items():
        run.save_previews(case, previews, meta)
    for environment in contents["environments"].values():
        run.save_environment(environment)
    for record in contents["records"]:
        run.append(record)
