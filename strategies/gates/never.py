"""Gate `never`: always compute. With a cache installed it measures the harness's own cost."""

from __future__ import annotations

from dataclasses import dataclass

from dqar_bench import Gate, StepContext, hookimpl


@dataclass
class Never(Gate):
    """Never reuse: every block computes at every step (the baseline's behaviour)."""

    PLUGIN_NAME = "never"

    def decide(self, ctx: StepContext, eligible: list[bool]) -> list[bool]:
        return [False] * len(eligible)


@hookimpl
def register_gates():
    return [Never]
