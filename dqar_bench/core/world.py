"""The process group of a distributed run, and the few collectives the harness needs.

A run started by `torchrun` (or `srun ... torchrun`, or anything that sets the env://
variables RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) is one rank of a
`World`; a plain process is a World of one with no process group, where every collective
returns what it was given, so the harness has one code path for both.

Each rank runs on its own device: `cuda:LOCAL_RANK` with NCCL on GPUs, the CPU with gloo
otherwise. Python objects (records, check results, FID features) always travel over a
gloo group, also beside NCCL: they are few, on the host already, and gloo's
`monitored_barrier` is what names a rank that hung or died instead of waiting for ever. A failed collective becomes one
`RankError` line, never a traceback or a hang.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist

from dqar_bench.core.errors import DqarError

DEFAULT_TIMEOUT_S = 1800.0
"""How long a collective waits for the slowest rank. FID images are made between two
collectives, so ranks may arrive far apart; a hang is still found, just that late."""

PROBE_TAG, PROBE_TIMEOUT_S = 0x0DEAD, 1.0
"""The message that asks, after a failed collective, which ranks are gone (see `World._dead_peers`)."""
REDUCE_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}


class RankError(DqarError):
    """A rank died, hung, or disagrees with the others; the run cannot go on as one."""

    exit_code = 1


class Echo(DqarError):
    """Another rank's error, raised here too so that this rank stops as well; rank 0 prints it, the others do not."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def launched_by_torchrun() -> bool:
    """Whether this process is one of several ranks of an env:// rendezvous (torchrun's RANK, WORLD_SIZE > 1)."""
    return all(v in os.environ for v in ("RANK", "WORLD_SIZE")) and int(os.environ["WORLD_SIZE"]) > 1


CLOSE_WAIT_S = 30.0
"""How long a rank waits for the others before it leaves the process group."""


@dataclass
class World:
    """This process's place in a run: rank, size, device; the collectives the harness uses."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None
    """'gloo' or 'nccl'; None for a single process (no process group)."""
    timeout_s: float = DEFAULT_TIMEOUT_S
    _objects: Any = field(default=None, repr=False)
    """The gloo group that carries objects and monitored barriers."""

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes the run directory."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    def gather(self, obj: Any, what: str = "gather") -> list[Any] | None:
        """Every rank's `obj` on rank 0, in rank order (None on the others).

        A monitored barrier comes first, so a rank that is gone or hung is named.
        """
        if not self.distributed:
            return [obj]
        self.barrier(what)
        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        with self._failing(what):
            dist.gather_object(obj, out, dst=0, group=self._objects)
        return out

    def broadcast(self, obj: Any = None, what: str = "broadcast") -> Any:
        """Rank 0's `obj` on every rank (what the others pass is ignored)."""
        if not self.distributed:
            return obj
        box = [obj if self.is_main else None]
        with self._failing(what):
            dist.broadcast_object_list(box, src=0, group=self._objects)
        return box[0]

    def all_gather(self, obj: Any, what: str = "all_gather") -> list[Any]:
        """Every rank's `obj` on every rank, in rank order."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        with self._failing(what):
            dist.all_gather_object(out, obj, group=self._objects)
        return out

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum", what: str = "all_reduce") -> torch.Tensor:
        """Reduce `tensor` in place over all ranks ('sum', 'max', 'min') and return it.

        The tensor stays on its device: NCCL reduces GPU tensors, gloo CPU ones.
        """
        if not self.distributed:
            return tensor
        with self._failing(what):
            dist.all_reduce(tensor, op=REDUCE_OPS[op])
        return tensor

    def broadcast_tensor(self, tensor: torch.Tensor, what: str = "broadcast") -> torch.Tensor:
        """Rank 0's `tensor` on every rank, in place, on its device (NCCL carries GPU tensors)."""
        if not self.distributed:
            return tensor
        with self._failing(what):
            dist.broadcast(tensor, src=0)
        return tensor

    def barrier(self, what: str = "barrier", timeout_s: float | None = None) -> None:
        """Wait for every rank; raise a `RankError` naming the ranks that did not arrive in time."""
        if not self.distributed:
            return
        timeout = _dt.timedelta(seconds=timeout_s if timeout_s is not None else self.timeout_s)
        try:
            dist.monitored_barrier(group=self._objects, timeout=timeout, wait_all_ranks=True)
        except RuntimeError as exc:
            missing = _missing_ranks(str(exc))
            if missing:
                who = ", ".join(str(r) for r in missing)
                raise RankError(
                    f"rank {who} did not reach '{what}' within {timeout.total_seconds():g} s (it hung or died; see its own output)"
                ) from None
            raise self._error(what, exc) from None

    def require_same(self, value: Any, what: str) -> Any:
        """`value`, if every rank has the same; else a `RankError` listing each rank's."""
        values = self.all_gather(value, f"compare {what}")
        if any(v != values[0] for v in values):
            listed = "; ".join(f"rank {r}: {v}" for r, v in enumerate(values))
            raise RankError(f"the ranks disagree on {what} ({listed}); a run needs the same on every rank")
        return value

    def shard(self, items: Sequence[Any]) -> list[Any]:
        """This rank's share: every `world_size`-th item starting at `rank` (position i goes to rank i % world_size)."""
        return list(items[self.rank :: self.world_size])

    def close(self) -> None:
        """Leave the process group, after every rank has come to leave it.

        Rank 0 hosts the group's store: a rank still tearing down its connections when rank 0
        has already gone can abort ('terminate called without an active exception', seen with
        gloo under load). The wait is bounded, so a rank that died holds nobody for long."""
        if self.distributed and dist.is_initialized():
            try:
                if dist.get_backend() == "gloo":
                    dist.monitored_barrier(timeout=_dt.timedelta(seconds=CLOSE_WAIT_S))
                else:
                    dist.barrier()
            except Exception:  # noqa: BLE001 - a rank already gone: nothing left to wait for
                pass
            dist.destroy_process_group()
        self.backend = None

    @contextlib.contextmanager
    def _failing(self, what: str) -> Iterator[None]:
        """A backend error inside a collective becomes one RankError line."""
        try:
            yield
        except RuntimeError as exc:  # torch.distributed's DistBackendError and gloo's errors are RuntimeErrors
            raise self._error(what, exc) from None

    def _error(self, what: str, exc: BaseException) -> RankError:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        dead = self._dead_peers()
        if dead:
            who = ", ".join(str(r) for r in dead)
            return RankError(f"rank {who} died: '{what}' cannot complete (rank {self.rank} lost its connection to it; see rank {who}'s own output)")
        return RankError(f"rank {self.rank}: '{what}' failed, another rank is gone or hung ({first})")

    def _dead_peers(self) -> list[int]:
        """Ranks whose connection to this one is closed: a message to each, and which ones the transport refuses.

        gloo says 'Connection closed by peer' for a process that is gone, and times out for
        one that is alive but elsewhere (a stray message to it no longer matters: the run stops).
        """
        dead = []
        probe = torch.zeros(1)
        for peer in range(self.world_size):
            if peer == self.rank:
                continue
            try:
                dist.isend(probe, dst=peer, group=self._objects, tag=PROBE_TAG).wait(timeout=_dt.timedelta(seconds=PROBE_TIMEOUT_S))
            except RuntimeError as exc:
                if any(word in str(exc).lower() for word in ("closed", "reset", "broken pipe")):
                    dead.append(peer)
        return dead


def _missing_ranks(message: str) -> list[int]:
    """The ranks gloo's monitored barrier names ('Ranks 1, 3 failed to pass monitoredBarrier')."""
    found = re.search(r"Ranks? ([\d, ]+) failed to pass monitoredBarrier", message)
    return [int(r) for r in re.findall(r"\d+", found.group(1))] if found else []


def init_world(device: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> World:
    """Join the process group torchrun set up, or be a World of one.

    `device` is the suite's: 'auto' and 'cuda' give each rank `cuda:LOCAL_RANK` (NCCL) when
    CUDA is there, else the CPU (gloo); a fixed 'cuda:N' cannot serve several ranks.
    """
    if not launched_by_torchrun():
        return World(device=_single_device(device), timeout_s=timeout_s)
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise DqarError(f"a distributed run needs {' and '.join(missing)} in the environment; start it with torchrun (or `dqar-bench run ... --nproc N`)")
    target = _rank_device(device, local_rank, world_size)
    backend = "nccl" if target.type == "cuda" else "gloo"
    timeout = _dt.timedelta(seconds=timeout_s)
    if target.type == "cuda":
        torch.cuda.set_device(target)
    try:
        if dist.is_initialized():
            raise DqarError("a process group is already initialised in this process; init_world joins it only once")
        kwargs: dict[str, Any] = {"backend": backend, "init_method": "env://", "rank": rank, "world_size": world_size, "timeout": timeout}
        if backend == "nccl":
            kwargs["device_id"] = target
        dist.init_process_group(**kwargs)
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RankError(f"rank {rank}: could not join the process group at {os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} ({first})") from None
    objects = dist.new_group(backend="gloo", timeout=timeout) if backend == "nccl" else dist.group.WORLD
    return World(rank, world_size, local_rank, target, backend, timeout_s, objects)


def _single_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _rank_device(name: str, local_rank: int, world_size: int) -> torch.device:
    wanted = torch.device("cuda" if name == "auto" and torch.cuda.is_available() else ("cpu" if name == "auto" else name))
    if wanted.type != "cuda":
        return wanted
    if wanted.index is not None:
        raise DqarError(f"device '{name}' names one GPU but the run has {world_size} ranks; set 'device: cuda' (each rank takes cuda:LOCAL_RANK)")
    if not torch.cuda.is_available():
        raise DqarError(f"device '{name}' was asked for but no CUDA device is available; set 'device: cpu' or 'auto'")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise DqarError(f"local rank {local_rank} has no GPU of its own (this node has {count}); start at most {count} processes per node")
    return torch.device("cuda", local_rank)
