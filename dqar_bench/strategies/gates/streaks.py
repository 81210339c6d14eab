"""A cap on consecutive reuse, shared by the signal gates (`entropy`, `snr`, `dqar`).

Those gates read signals taken when a block last computed, so a block that starts
reusing keeps the very signal that let it reuse: without a cap it reuses until the SNR
leaves the window (or for good), giving back features from many steps ago. `max_reuse`
forces a compute after that many reuse steps in a row, which refreshes both the cache
and the block's entropy. 0 means no cap (the plain rule of the DQAR seed).
"""

from __future__ import annotations


class Streaks:
    """Each block's run of consecutive reuse steps in the current sampling call."""

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"parameter 'max_reuse' must be >= 0 (0 = no cap), got {limit}")
        self.limit = limit
        self._runs: list[int] = []
        self._last_step = -1

    def reset(self, num_blocks: int) -> None:
        self._runs = [0] * num_blocks
        self._last_step = -1

    def cap(self, step: int, reuse: list[bool]) -> list[bool]:
        """`reuse`, minus the blocks whose run has reached the cap; records the outcome."""
        if len(self._runs) != len(reuse) or step != self._last_step + 1:
            # Steps the gate was not asked about were computed by every block.
            self._runs = [0] * len(reuse)
        if self.limit:
            reuse = [r and n < self.limit for r, n in zip(reuse, self._runs)]
        self._runs = [n + 1 if r else 0 for r, n in zip(reuse, self._runs)]
        self._last_step = step
        return reuse
