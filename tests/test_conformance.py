"""`dqar_bench.testing`: every built-in part passes the conformance checks, and each check
catches the fault it is there for (a broken part fails it)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from dqar_bench import Gate, Quantizer, StaticGate, StepContext, hookimpl
from dqar_bench.cli import main
from dqar_bench.core.plugins import load_registry
from dqar_bench.model.models import BUILTIN_FAMILIES
from dqar_bench.strategies.quantizers.none import Plain
from dqar_bench.strategy.storage import SlotCache
from dqar_bench.testing import check_part, tiny_models

BUILTINS = [(kind, name) for kind, names in load_registry(autoload=False).parts.items() for name in sorted(names)]


def test_every_model_family_has_a_tiny_model_to_check_parts_on():
    assert set(BUILTIN_FAMILIES.values()) == {BUILTIN_FAMILIES[m] for m in tiny_models()}
    assert all(m.endswith("-tiny") for m in tiny_models())
    assert {"dit-tiny", "pixart-tiny"} <= set(tiny_models())


@pytest.mark.parametrize("models", [("dit-tiny",), pytest.param(None, marks=pytest.mark.slow)], ids=["dit-tiny", "every-family"])
@pytest.mark.parametrize("kind, name", BUILTINS, ids=[f"{k}-{n}" for k, n in BUILTINS])
def test_every_builtin_part_conforms(registry, kind, name, models):
    """On dit-tiny in the fast subset; on the tiny model of every family (nine times the work) in the whole suite."""
    results = check_part(registry.get(kind, name).cls, registry=registry, models=models)
    failed = [r.line() for r in results if not r.ok]
    assert not failed, "\n".join(failed)
    for model in models or tiny_models():  # four checks on every family, or one skip that gives the family's reason
        mine = [r for r in results if r.name.startswith(f"{model}:") and not r.name.endswith(": reuse path")]
        assert len(mine) == 4 or (len(mine) == 1 and mine[0].name.endswith("skipped") and mine[0].detail), (model, mine)


# --- parts with one fault each ----------------------------------------------------------


@dataclass
class Counting(Gate):
    """Reuse on every third call of decide, counted across sampling calls (never reset)."""

    PLUGIN_NAME = "counting"
    calls: int = field(default=0, metadata={"help": "calls so far"})

    def decide(self, ctx: StepContext, eligible: list[bool]) -> list[bool]:
        self.calls += 1
        return [self.calls % 3 == 0 and e for e in eligible]


@dataclass
class Short(Gate):
    """Answers for all but the last block."""

    PLUGIN_NAME = "short"

    def decide(self, ctx: StepContext, eligible: list[bool]) -> list[bool]:
        return [True] * (len(eligible) - 1)


@dataclass
class Liar(StaticGate):
    """Declares reuse at odd steps, but decides to reuse at every step."""

    PLUGIN_NAME = "liar"

    def pattern(self, num_steps: int, num_blocks: int) -> torch.Tensor:
        return (torch.arange(num_steps) % 2 == 1).reshape(-1, 1).expand(num_steps, num_blocks).clone()

    def decide(self, ctx: StepContext, eligible: list[bool]) -> list[bool]:
        return list(eligible)


@dataclass
class Undocumented(Gate):
    """Never reuses; its parameter has no help text."""

    PLUGIN_NAME = "undocumented"
    level: int = 1

    def decide(self, ctx: StepContext, eligible: list[bool]) -> list[bool]:
        return [False] * len(eligible)


@dataclass
class BadMode(Undocumented):
    """Never reuses; declares an execution mode that does not exist."""

    PLUGIN_NAME = "bad-mode"
    UNSUPPORTED = {"gpu": "no such mode"}
    level: int = field(default=1, metadata={"help": "unused"})


@dataclass
class ForgetfulSlots(SlotCache):
    """Claims graph safety, but learns what it holds in `store`, which a replayed graph never runs."""

    PLUGIN_NAME = "forgetful"

    def begin_step(self, step: int, computes: list[bool]) -> None:
        pass

    def store(self, block: int, out: torch.Tensor, qkv: tuple[torch.Tensor, ...] | None) -> None:
        super().store(block, out, qkv)
        self._live.add(block)


@dataclass
class NanOnZero(Quantizer):
    """Scales by max|x| with no floor: an all-zero tensor comes back as NaN."""

    PLUGIN_NAME = "nan-on-zero"

    def pack(self, x: torch.Tensor) -> Plain:
        return Plain(x / x.abs().max() * x.abs().max())


@dataclass
class Shy(Gate):
    """Reuse where the step is at least `start` (never, by default, on a few steps)."""

    PLUGIN_NAME = "shy"
    CONFORMANCE_PARAMS = {"start": 99}  # wrong: still never reuses
    start: int = field(default=1000, metadata={"help": "first step that may reuse"})

    def decide(self, ctx: StepContext, eligible: list[bool]) -> list[bool]:
        return [ctx.step >= self.start and e for e in eligible]


@dataclass
class Silent(Shy):
    """As `shy`, with nothing declared to drive it."""

    PLUGIN_NAME = "silent"
    CONFORMANCE_PARAMS = None  # type: ignore[assignment]


class Faulty:
    @hookimpl
    def register_gates(self):
        return [Counting, Short, Liar, Undocumented, BadMode, Shy, Silent]

    @hookimpl
    def register_caches(self):
        return [ForgetfulSlots]

    @hookimpl
    def register_quantizers(self):
        return [NanOnZero]


def failures(part, models=("dit-tiny",)):
    results = check_part(part, plugins=(Faulty(),), models=models)
    return {r.name.split(": ", 1)[-1]: r.detail for r in results if not r.ok}


@pytest.mark.parametrize(
    "part, check, detail",
    [
        (Counting, "outputs finite, state reset per call", "state is not reset per call"),
        (Short, "answers have the right length", "gave 3 answers for 4 blocks"),
        (Liar, "answers have the right length", "departs from static_pattern"),
        (Undocumented, "registered with a description and parameters", "parameter 'level' has no help text"),
        (BadMode, "registered with a description and parameters", "not execution modes"),
        (ForgetfulSlots, "cudagraph declaration honest (CPU replay stand-in)", "replayed"),
        (NanOnZero, "pack / unpack keep shape, dtype and finiteness", "not finite"),
        (Shy, "reuses at least once", "reused nothing in 3 steps either"),
    ],
)
def test_each_check_catches_its_fault(part, check, detail):
    failed = failures(part)
    assert check in failed, failed
    assert detail in failed[check]


def test_a_part_that_declares_cudagraph_unsupported_is_not_replayed(registry):
    results = check_part(registry.get("cache", "kv").cls, registry=registry, models=("dit-tiny",))
    [replay] = [r for r in results if "cudagraph" in r.name]
    assert replay.ok and replay.detail.startswith("declared unsupported: cache 'kv'")


def test_a_gate_that_reuses_nothing_is_driven_or_says_why_not(registry):
    results = {r.name: r for r in check_part(registry.get("gate", "dqar").cls, registry=registry, models=("dit-tiny",))}
    assert results["dit-tiny: outputs finite, state reset per call"].detail.startswith("0 of ")  # its defaults: no reuse on a tiny model
    driven = results["dit-tiny, driven: outputs finite, state reset per call"]
    assert driven.ok and not driven.detail.startswith("0 of ") and "block evaluations reused" in driven.detail
    assert all(r.ok for r in results.values()), [r.line() for r in results.values() if not r.ok]
    never = {r.name: r for r in check_part(registry.get("gate", "never").cls, registry=registry, models=("dit-tiny",))}
    assert "a gate that never reuses cannot" in never["dit-tiny: reuse path"].detail
    silent = {r.name: r for r in check_part(Silent, plugins=(Faulty(),), models=("dit-tiny",))}
    assert silent["dit-tiny: reuse path"].ok and "declare CONFORMANCE_PARAMS" in silent["dit-tiny: reuse path"].detail


def test_check_part_from_the_command_line(capsys):
    assert main(["check-part", "interval", "--model", "dit-tiny"]) == 0
    out = capsys.readouterr().out
    assert "PASS  dit-tiny: removal leaves the model bit-identical" in out
    assert "gate 'interval':" in out and "checks passed" in out
    assert main(["check-part", "no-such-part"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
