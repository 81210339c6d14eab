"""An example dqar-bench plugin: one gate, one entry point, a dozen lines."""

from dataclasses import dataclass, field

from dqar_bench import Gate, StepContext, hookimpl


@dataclass
class EveryOther(Gate):
    """Reuse on odd steps, compute on even ones (optionally only after `start`)."""

    PLUGIN_NAME = "every-other"

    start: int = field(default=0, metadata={"help": "no reuse before this step"})

    def decide(self, ctx: StepContext, eligible: list[bool]) -> list[bool]:
        reuse = ctx.step >= self.start and ctx.step % 2 == 1
        return [reuse and e for e in eligible]


@hookimpl
def register_gates():
    return [EveryOther]
