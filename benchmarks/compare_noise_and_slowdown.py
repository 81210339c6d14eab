"""What `dqar-bench compare` says about two identical runs, and about one case made 20 % slower.

Three runs of one small suite on the trained digits-dit, in this process, on this machine:
A and B are the same suite; C is the same suite with one case spending 20 % more time per
sampling call (a gate that busy-waits a fixed time at the start of every call, set from
that case's own median in run A). Prints `compare A B` and `compare A C` and their exit
statuses: the first should be 0 (or 3, inconclusive, on a noisy machine), never 1; the
second should be 1, naming the slowed case.

Usage: python benchmarks/compare_noise_and_slowdown.py [--rounds 8] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dqar_bench import Gate, StepContext, hookimpl  # noqa: E402

SUITE = """\
name: {name}
model: digits-dit
sampler: {{name: ddim, steps: 10, guidance_scale: 1.5}}
class_labels: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
seeds: [0]
device: cpu
threads: 1
timing: {{warmup: 1, repeats: {rounds}}}
cases:
  - name: baseline
  - name: interval
    gate: {{name: interval, every: 2}}
  - name: slowed
    description: never reuses; spends `seconds` per call (0 in runs A and B)
    gate: {{name: busy-wait, seconds: {seconds}}}
"""


@dataclass
class BusyWait(Gate):
    """Never reuse, and busy-wait `seconds` at the start of every sampling call."""

    PLUGIN_NAME = "busy-wait"

    seconds: float = 0.0

    def reset(self, num_steps: int, num_blocks: int) -> None:
        end = time.perf_counter() + self.seconds
        while time.perf_counter() < end:
            pass

    def decide(self, ctx: StepContext, eligible: list[bool]) -> list[bool]:
        return [False] * len(eligible)


class Plugin:
    @hookimpl
    def register_gates(self) -> list[type]:
        return [BusyWait]


def run(out: Path, name: str, rounds: int, seconds: float, registry) -> Path:
    from dqar_bench.config.suite import load_suite
    from dqar_bench.runs.runner import run_suite

    path = out / f"{name}.yaml"
    path.write_text(SUITE.format(name=name, rounds=rounds, seconds=seconds))
    return run_suite(load_suite(path, registry), out / name, registry=registry, progress=lambda _: None).path


def main(argv: list[str] | None = None) -> int:
    from dqar_bench.core.plugins import load_registry
    from dqar_bench.measure.records import RunDir
    from dqar_bench.views import compare

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8, help="interleaved timing rounds per run (default 8)")
    parser.add_argument("--out", type=Path, help="where the three runs go (default: a temporary folder)")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="dqar-compare-"))
    out.mkdir(parents=True, exist_ok=True)
    registry = load_registry(autoload=False, extra_plugins=(Plugin(),))

    a = run(out, "a", args.rounds, 0.0, registry)
    b = run(out, "b", args.rounds, 0.0, registry)
    slowed = RunDir(a).latest()["slowed"]
    extra = 0.2 * slowed.median_s
    c = run(out, "c", args.rounds, extra, registry)
    for title, new in (("two identical runs (A, B)", b), (f"'slowed' made 20 % slower (+{extra * 1000:.1f} ms per call) (A, C)", c)):
        result = compare.compare_runs(a, new)
        print(f"## {title}\n")
        print(compare.render_comparison(result))
        print(f"\nexit status: {result.exit_status}\n")
    print(f"runs: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
