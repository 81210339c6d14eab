"""A progress bar over every sampling call of a run (cases x warmup and repeats), on stderr.

Shown only where stderr is a terminal (set DQAR_BENCH_PROGRESS=1 to force it, 0 to hide
it), so logs and tests get the runner's plain per-case lines and no control characters.
Lines printed while the bar is up go through `write`, which keeps the bar below them.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable


def enabled() -> bool:
    forced = os.environ.get("DQAR_BENCH_PROGRESS")
    if forced is not None:
        return forced not in ("", "0", "false", "no")
    return sys.stderr.isatty()


class Progress:
    def __init__(self, total: int, show: bool | None = None) -> None:
        self._bar: Any = None
        if enabled() if show is None else show:
            try:
                from tqdm import tqdm
            except ImportError:  # tqdm comes with diffusers; without it, no bar
                return
            self._bar = tqdm(total=total, unit="call", file=sys.stderr, leave=False, dynamic_ncols=True)

    def grow(self, total: int) -> None:
        """A run whose count of calls is known only as it goes (a trace) raises the total here."""
        if self._bar is not None and total != self._bar.total:
            self._bar.total = total
            self._bar.refresh()

    def case(self, name: str) -> None:
        if self._bar is not None:
            self._bar.set_description(name)

    def tick(self, calls: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(calls)

    def wrap(self, say: Callable[[str], Any]) -> Callable[[str], None]:
        """`say` for plain lines, routed around the bar when there is one."""
        if self._bar is None:
            return say  # type: ignore[return-value]
        from tqdm import tqdm

        def write(line: str) -> None:
            with tqdm.external_write_mode(file=sys.stderr):
                say(line)

        return write

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def eta(done: int, total: int, seconds: float) -> str:
    """The plain-line ETA, for logs and pipes where no bar is drawn: at the mean pace so far."""
    if done <= 0 or total <= done:
        return "0 s left" if total <= done else "time left unknown"
    left = seconds / done * (total - done)
    if left < 90:
        return f"about {left:.0f} s left"
    if left < 5400:
        return f"about {left / 60:.0f} min left"
    return f"about {left / 3600:.1f} h left"
