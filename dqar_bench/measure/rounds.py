"""Interleaved timing: the timed repeats of a suite run in rounds, and speedups pair rounds.

In a round every case being timed runs once per seed, in an order shuffled per round
from a recorded seed, so that drift on a shared machine (a neighbour's job, thermal
state, frequency scaling) hits every case alike. A case's speedup is then the median of
per-round ratios against the baseline of its execution mode timed in the same round
(`measure.stats.paired_speedup`), not a ratio of two medians taken minutes apart.

Each finished round is appended, flushed and fsynced, to `rounds.jsonl` in the run
directory: a crash loses at most the round in flight, and `--resume` goes on from the
rounds already there. A line:

    {"round": 3, "session": "...", "timing_order": "interleaved", "round_seed": 0,
     "order": ["iv", "baseline"], "cases": {"iv": {"case_key": "<sha256>", "calls_s": [...],
     "steps_s": [[...], ...] | null}, "baseline": {...}}}

A case's rounds are those under its name with its `case_key` (a round of an edited case
never counts for the new definition).

Cases that are timed blocked (their repeats back to back: `timing.order: blocked`, or
strong execution modes, which keep compiled programs alive) write one line per round with
only themselves in it; their rounds pair with the baseline's by position, and the record
and table say they did not run together.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dqar_bench.measure.records import append_line, read_lines


def paired_ratios(case: list[float] | None, baseline: list[float] | None) -> list[float] | None:
    """`baseline[r] / case[r]` for every round (a record's `baseline_round_s` and `round_s`), or
    None without usable rounds (none recorded, no complete pairing, a non-finite or zero time):
    the one rule the table and `compare` use for a paired speedup."""
    if not (isinstance(case, list) and isinstance(baseline, list)) or not case or len(case) != len(baseline):
        return None
    if not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in case + baseline):
        return None
    return [b / c for b, c in zip(baseline, case)]


def round_order(names: list[str], round_seed: int, round_index: int) -> list[str]:
    """The order of a round: `names` shuffled by `random.Random`, seeded per round."""
    order = list(names)
    random.Random(round_seed * 1_000_003 + round_index).shuffle(order)
    return order


class RoundLog:
    """`rounds.jsonl` of a run directory (or, with no path, kept in memory only)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._memory: list[dict[str, Any]] = []

    def entries(self) -> list[dict[str, Any]]:
        """Every complete round, in order; a torn last line (a crash mid-write) is skipped."""
        if self.path is None:
            return list(self._memory)
        return read_lines(self.path, lambda e: isinstance(e.get("cases"), dict) and isinstance(e.get("round"), int))

    def next_round(self) -> int:
        return max((e["round"] for e in self.entries()), default=-1) + 1

    def append(self, entry: dict[str, Any]) -> None:
        if self.path is None:
            self._memory.append(entry)
            return
        append_line(self.path, entry)


@dataclass
class Paired:
    """A case's timed rounds and, round by round, its baseline's."""

    round_ids: list[int]
    round_s: list[float]
    baseline_round_s: list[float] | None
    """None when some round has no baseline time to pair with."""
    latency_s: list[float]
    """Every timed call, round-major then seed."""
    step_s: list[list[float]] | None


def timed_as(entry: dict[str, Any], name: str, key: str | None) -> dict[str, Any] | None:
    """What `name` with `key` timed in this round, if it ran in it."""
    found = entry["cases"].get(name)
    return found if isinstance(found, dict) and key is not None and found.get("case_key") == key else None


def pair(entries: list[dict[str, Any]], round_ids: list[int], case: tuple[str, str], baseline: tuple[str, str] | None) -> Paired:
    """Collect a case's rounds (`round_ids`; `case` is its name and key) and its baseline's
    times in them.

    An interleaved round holds the baseline's own time. A blocked one does not: its i-th
    round of a session pairs with the baseline's i-th round of the same session (or of
    all its rounds, when the baseline was not timed in that session)."""
    wanted = set(round_ids)
    own = [e for e in entries if e["round"] in wanted and timed_as(e, *case) is not None]
    base_all = [e for e in entries if baseline is not None and timed_as(e, *baseline) is not None]
    round_s, base_s, latency = [], [], []
    steps: list[list[float]] | None = []
    position: dict[Any, int] = {}
    for entry in own:
        mine = timed_as(entry, *case)
        assert mine is not None
        round_s.append(math.fsum(mine["calls_s"]))
        latency.extend(mine["calls_s"])
        if steps is not None and mine.get("steps_s") is not None:
            steps.extend(mine["steps_s"])
        else:
            steps = None
        if baseline is None:
            continue
        theirs = timed_as(entry, *baseline)
        if theirs is not None:
            base_s.append(math.fsum(theirs["calls_s"]))
            continue
        session = entry.get("session")
        same = [b for b in base_all if b.get("session") == session] or base_all
        index = position.get(session, 0)
        position[session] = index + 1
        if index < len(same):
            base_s.append(math.fsum(same[index]["cases"][baseline[0]]["calls_s"]))
    complete = baseline is not None and len(base_s) == len(round_s)
    return Paired([e["round"] for e in own], round_s, base_s if complete else None, latency, steps or None)
