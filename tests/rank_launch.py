"""Starting a command as several ranks with torchrun's environment (no torchrun: seconds saved).

Every two-process test starts its ranks the same way: one free loopback port, RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT set as torchrun sets them, and the
project on PYTHONPATH; and waits the same way, killing whatever is still running so a
failed test leaves no rank behind.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_ranks(
    args: Sequence[str], world_size: int = 2, paths: Sequence[Path] = (), stdout: Any = subprocess.PIPE,
    stderr: Any = subprocess.PIPE, **env: str,
) -> list[subprocess.Popen]:
    """`python ARGS` as `world_size` ranks of one gloo world; `paths` go on PYTHONPATH after the project."""
    port, procs = free_port(), []
    for rank in range(world_size):
        environ = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), **env)
        environ["PYTHONPATH"] = os.pathsep.join(str(p) for p in (ROOT, *paths))
        procs.append(subprocess.Popen([sys.executable, *map(str, args)], env=environ, stdout=stdout, stderr=stderr, text=True))
    return procs


def wait_ranks(procs: list[subprocess.Popen], timeout: float = 300) -> tuple[list[int], list[tuple[str, str]]]:
    """Every rank's exit code and (stdout, stderr); ranks still running afterwards are killed."""
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=timeout))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [p.returncode for p in procs], outputs
