"""Conformance checks for strategy parts, for a part author's own tests and `dqar-bench check-part`.

    from dqar_bench.testing import assert_conforms
    import my_plugin

    def test_my_gate_conforms():
        assert_conforms(my_plugin.MyGate, plugins=(my_plugin,))

Given a part class, the checks build it with its defaults, fill the other three kinds with
plain built-ins (see `COMPANIONS`), and run it on the tiny built-in model of every model
family the harness has (`tiny_models`), a few steps of the model's own sampler with guidance, asserting what the
harness relies on and cannot check at run time:

- the registry lists it under its name, with a description and, for every parameter, a
  default and help text; its `UNSUPPORTED` modes are real execution modes;
- it builds with its defaults (or `params`);
- outputs are finite, and a second sampling call with the same seed gives the same
  outputs and reuse (state is reset per call);
- removing it leaves the model bit-identical (same outputs as before it was installed,
  no patched `forward` left behind);
- answers have the right length: a scheduler's mask is [steps, blocks], a gate answers
  once per block, a gate that declares a `static_pattern` decides exactly by it, and one
  that declares a `window` never reuses outside it (asked everywhere to show it); a
  quantizer gives back its input's shape and dtype, finite, also for all-zero tensors;
- the reuse path runs: a gate that reuses nothing with its defaults on a model runs the
  checks above again with its `CONFORMANCE_PARAMS` (a class attribute: parameters under
  which it reuses on a tiny model of random weights), which must then reuse at least once;
  without them the line says that the reuse path went untested, and why;
- graph safety is honest: unless a part of the assembly declares `cudagraph` in
  `UNSUPPORTED`, the case replays under a CPU stand-in for CUDA graphs (`ReplayedGraphs`:
  recorded tensor operations rerun on the same tensors, no Python) and matches eager over
  two sampling calls, with the same reuse.

Each check gives a `CheckResult`; `assert_conforms` fails with every failed line.
"""

from __future__ import annotations

import dataclasses
import traceback
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable, Sequence

import torch

from dqar_bench.core.errors import DqarError
from dqar_bench.core.parts import BASES, KINDS, Part, Quantizer, build_part
from dqar_bench.core.plugins import Registry, load_registry
from dqar_bench.strategy.execution import MODES, CudaGraphs, Execution, _Program

COMPANIONS: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {
    "scheduler": {"gate": ("always", {}), "cache": ("attention-output", {}), "quantizer": ("none", {})},
    "gate": {"scheduler": ("all", {}), "cache": ("attention-output", {}), "quantizer": ("none", {})},
    "cache": {"scheduler": ("all", {}), "gate": ("interval", {"every": 2}), "quantizer": ("none", {})},
    "quantizer": {"scheduler": ("all", {}), "gate": ("interval", {"every": 2}), "cache": ("attention-output", {})},
}
"""The built-ins a part under test is assembled with, by the kind under test. A gate that
decides after a block (`DECIDES_AFTER_BLOCK`) gets the `block-residual` cache instead."""

LABELS = [1, 3]
PROMPT_LENGTHS = [8, 20]
GUIDANCE = 4.0  # > 1: the conditional and unconditional branches run as one batch
TOLERANCE = 1e-4


@dataclass(frozen=True)
class CheckResult:
    """One check's outcome, as one line."""

    name: str
    ok: bool
    detail: str = ""

    def line(self) -> str:
        return f"{'PASS' if self.ok else 'FAIL'}  {self.name}{': ' + self.detail if self.detail else ''}"


def tiny_models() -> list[str]:
    """One small built-in model per model family (`dqar_bench.model.models.TINY_MODELS`), so a
    family added with a tiny model is checked from then on."""
    from dqar_bench.model.models import TINY_MODELS

    return [TINY_MODELS[f] for f in sorted(TINY_MODELS)]


def kind_of(part: type[Part]) -> str:
    for kind in KINDS:
        if issubclass(part, BASES[kind]):
            return kind
    raise TypeError(f"{part!r} is not a Scheduler, Gate, Cache or Quantizer subclass")


def find_part(registry: Registry, name: str, kind: str | None = None) -> type[Part]:
    """A registered part class by name (and kind, where the name is taken in several kinds)."""
    kinds = [kind] if kind else [k for k in KINDS if name in registry.parts[k]]
    found = [registry.get(k, name).cls for k in kinds if name in registry.parts[k]]
    if not found:
        raise DqarError(f"no part named '{name}'{f' of kind {kind}' if kind else ''}; see `dqar-bench plugins`")
    if len(found) > 1:
        raise DqarError(f"'{name}' names a part of several kinds ({', '.join(kinds)}); give --kind")
    return found[0]


def check_part(
    part: type[Part],
    *,
    registry: Registry | None = None,
    plugins: Sequence[object] = (),
    params: dict[str, Any] | None = None,
    models: Sequence[str] | None = None,
    steps: int = 3,
) -> list[CheckResult]:
    """Every conformance check of `part`; see the module docstring.

    `registry` defaults to the built-ins plus `plugins` (plugin modules registered in code,
    as `load_registry(extra_plugins=...)` does, so nothing needs installing).
    """
    registry = registry or load_registry(autoload=False, extra_plugins=tuple(plugins))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest, and immune to a busy neighbour
    try:
        return _all_checks(part, registry, params, models, steps)
    finally:
        torch.set_num_threads(threads)


def _all_checks(part: type[Part], registry: Registry, params: dict[str, Any] | None, models: Sequence[str] | None, steps: int) -> list[CheckResult]:
    kind = kind_of(part)
    results = [_check("registered with a description and parameters", lambda: _registered(part, kind, registry))]
    built: list[Part] = []
    results.append(_check("builds with its defaults" if not params else "builds with the given parameters", lambda: built.append(build_part(part, params or {}))))
    if not built:
        return results
    if kind == "quantizer":
        results.append(_check("pack / unpack keep shape, dtype and finiteness", lambda: _round_trip(built[0])))  # type: ignore[arg-type]
    for model in models or tiny_models():
        results.extend(_model_checks(part, kind, params or {}, registry, model, steps))
    return results


def assert_conforms(part: type[Part], **options: Any) -> None:
    """`check_part`, failing with every failed check's line."""
    failed = [r.line() for r in check_part(part, **options) if not r.ok]
    _require(not failed, f"{part.__name__} fails {len(failed)} conformance check(s):\n" + "\n".join(failed))


# --- the checks ------------------------------------------------------------------------


class ConformanceError(AssertionError):
    """A check's finding (raised as such, so `python -O` cannot strip it)."""


def _require(condition: object, message: str = "") -> None:
    if not condition:
        raise ConformanceError(message)


def _check(name: str, body: Callable[[], Any]) -> CheckResult:
    try:
        detail = body()
    except Exception as exc:  # a check reports, it never raises
        where = traceback.extract_tb(exc.__traceback__)[-1]
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        kind = "" if isinstance(exc, ConformanceError) else f"{type(exc).__name__}: "
        return CheckResult(name, False, f"{kind}{first} ({where.filename.rsplit('/', 1)[-1]}:{where.lineno})")
    return CheckResult(name, True, detail if isinstance(detail, str) else "")


def _registered(part: type[Part], kind: str, registry: Registry) -> str:
    name = part.PLUGIN_NAME
    _require(name, "PLUGIN_NAME is empty")
    info = registry.parts[kind].get(name)
    _require(info is not None, f"the registry has no {kind} named '{name}' (is its hook registered? pass plugins=(your_module,))")
    _require(info.cls is part, f"the registry's {kind} '{name}' is {info.cls.__name__} from {info.plugin}, not this class")
    _require(part.describe(), "no description: give the class a docstring (its first line is the description)")
    for p in part.parameters():
        _require(p.default is not dataclasses.MISSING, f"parameter '{p.name}' has no default")
        _require(p.help, f"parameter '{p.name}' has no help text: field(default=..., metadata={{'help': '...'}})")
    for cls in part.__mro__:
        bad = [m for m in vars(cls).get("UNSUPPORTED", {}) if m not in MODES]
        _require(not bad, f"UNSUPPORTED names {bad}, not execution modes ({', '.join(MODES)})")
    return f"{kind} '{name}' from {info.distribution}, {len(part.parameters())} parameter(s)"


def _round_trip(quantizer: Quantizer) -> None:
    generator = torch.Generator().manual_seed(0)
    for x in (torch.randn(2, 16, 32, generator=generator), torch.zeros(2, 16, 32), torch.randn(2, 2, 16, 16, generator=generator)):
        packed = quantizer.pack(x)
        back = packed.unpack()
        _require(back.shape == x.shape and back.dtype == x.dtype, f"unpack gave {tuple(back.shape)} {back.dtype} for {tuple(x.shape)} {x.dtype}")
        _require(torch.isfinite(back).all(), f"unpack of a {'zero' if not x.any() else 'random'} tensor is not finite")
        _require(isinstance(packed.nbytes, int) and packed.nbytes > 0, f"nbytes must be a positive int, got {packed.nbytes!r}")


def _model_checks(part: type[Part], kind: str, params: dict[str, Any], registry: Registry, model_name: str, steps: int) -> list[CheckResult]:
    from dqar_bench.strategy.adapter import adapter_for

    bench = _Bench.load(model_name)
    assembly: list[dict[str, Part]] = []
    assembled = _check(f"{model_name}: assembles with {', '.join(COMPANIONS[kind])}", lambda: assembly.append(_assembly(part, kind, params, registry)))
    if not assembled.ok:
        return [assembled]
    refusal = adapter_for(bench.model.transformer).refusal(type(assembly[0]["cache"]))  # type: ignore[arg-type]
    if refusal:
        return [CheckResult(f"{model_name}: skipped", True, refusal)]

    runs: dict[str, Any] = {}
    results = _run_checks(bench, part, kind, params, registry, model_name, steps, runs, model_name)
    if kind == "gate" and runs.get("eager_reused") == 0 and all(r.ok for r in results):
        results.append(_drive(bench, part, params, registry, model_name, steps))
        if results[-1].detail.startswith("driven"):
            driven: dict[str, Any] = {}
            results += _run_checks(bench, part, kind, {**params, **part.CONFORMANCE_PARAMS}, registry, model_name, steps, driven, f"{model_name}, driven")  # type: ignore[attr-defined]
            if driven.get("eager_reused") == 0:
                results.append(CheckResult(f"{model_name}, driven: reuses at least once", False,
                                           f"CONFORMANCE_PARAMS {part.CONFORMANCE_PARAMS} reused nothing in {steps} steps either"))  # type: ignore[attr-defined]
    return results


def _run_checks(bench: _Bench, part: type[Part], kind: str, params: dict[str, Any], registry: Registry, model_name: str, steps: int,
                runs: dict[str, Any], title: str) -> list[CheckResult]:
    checks = [
        (f"{title}: outputs finite, state reset per call", lambda: _eager(bench, part, kind, params, registry, steps, runs)),
        (f"{title}: removal leaves the model bit-identical", lambda: _removal(bench, runs)),
        (f"{title}: answers have the right length", lambda: _answers(runs)),
        (f"{title}: cudagraph declaration honest (CPU replay stand-in)", lambda: _replay(bench, part, kind, params, registry, steps, runs)),
    ]
    results = [_check(name, body) for name, body in checks]
    if not all(r.ok for r in results[:2]) or not bench.intact():
        _BENCHES.pop(model_name, None)  # not left as found: the next part gets a fresh model
    return results


def _drive(bench: _Bench, part: type[Part], params: dict[str, Any], registry: Registry, model_name: str, steps: int) -> CheckResult:
    """A gate that reused nothing left its reuse path untested: drive it with `CONFORMANCE_PARAMS`, or say why not.

    Which parameters make a gate reuse on a tiny model of random weights (its entropy,
    SNR and residual changes are not a trained model's) only its author knows, so the
    gate declares them; a static pattern with no reuse in it cannot reuse at all.
    """
    name = f"{model_name}: reuse path"
    gate = build_part(part, params)
    pattern = getattr(gate, "static_pattern", lambda *a: None)(steps, bench.model.num_blocks)
    if isinstance(pattern, torch.Tensor) and not pattern.any():
        return CheckResult(name, True, f"not exercised: its static pattern reuses nothing at {steps} steps (a gate that never reuses cannot)")
    drive = getattr(part, "CONFORMANCE_PARAMS", None)
    if not drive:
        return CheckResult(name, True, f"not exercised: it reused nothing in {steps} steps with {'these' if params else 'its default'} parameters "
                                       "(declare CONFORMANCE_PARAMS = {...} on the gate: parameters under which it reuses on a tiny model)")
    return CheckResult(name, True, f"driven with {', '.join(f'{k}={v!r}' for k, v in drive.items())} (CONFORMANCE_PARAMS)")


def _assembly(part: type[Part], kind: str, params: dict[str, Any], registry: Registry) -> dict[str, Part]:
    parts: dict[str, Part] = {kind: build_part(part, params)}
    for other, (name, values) in COMPANIONS[kind].items():
        if other == "cache" and getattr(part, "DECIDES_AFTER_BLOCK", None) is not None:
            name, values = "block-residual", {}
        parts[other] = build_part(registry.get(other, name).cls, values)
    return parts


def _strategy(part: type[Part], kind: str, params: dict[str, Any], registry: Registry) -> Any:
    from dqar_bench.strategy.strategy import Strategy

    p = _assembly(part, kind, params, registry)
    return Strategy(p["scheduler"], p["gate"], p["cache"], p["quantizer"])  # type: ignore[arg-type]


@dataclass
class _Bench:
    """A tiny model, its conditioning and the untouched model's outputs by step count.

    Loaded once per process and model (`_BENCHES`): every check leaves the model as it
    found it, and one that does not (a part that is not removed cleanly) drops it, so the
    next part gets a fresh copy.
    """

    model: Any
    condition: Any
    untouched: dict[int, torch.Tensor]

    @classmethod
    def load(cls, name: str) -> "_Bench":
        from dqar_bench.model.models import load_model
        from dqar_bench.model.suite_condition import condition_for

        if name not in _BENCHES:
            cpu = torch.device("cpu")
            model = load_model(name, cpu, torch.float32)
            suite = SimpleNamespace(class_labels=LABELS, prompt_lengths=PROMPT_LENGTHS, prompts=None, prompt_embeddings=None, allow_download=False)
            _BENCHES[name] = cls(model, condition_for(suite, model, cpu, torch.float32), {})
        return _BENCHES[name]

    def call(self, strategy: Any, seed: int, steps: int, forward: Any = None) -> torch.Tensor:
        from dqar_bench.model.models import default_sampler
        from dqar_bench.model.sampling import denoise, make_scheduler

        scheduler = make_scheduler(default_sampler(self.model.name), self.model.scheduler_config)
        return denoise(self.model.transformer, scheduler, self.condition, seed, steps, GUIDANCE, strategy, forward)

    def reference(self, steps: int) -> torch.Tensor:
        if steps not in self.untouched:
            self.untouched[steps] = self.call(None, 0, steps)
        return self.untouched[steps]

    def intact(self) -> bool:
        return not any("forward" in m.__dict__ for m in self.model.transformer.modules())


_BENCHES: dict[str, _Bench] = {}


def _eager(bench: _Bench, part: type[Part], kind: str, params: dict[str, Any], registry: Registry, steps: int, runs: dict[str, Any]) -> str:
    from dqar_bench.strategy.adapter import adapter_for

    transformer = bench.model.transformer
    bench.reference(steps)
    runs["state"] = {k: v.clone() for k, v in transformer.state_dict().items()}
    strategy = _strategy(part, kind, params, registry)
    answers = _AnswerWatch(strategy, runs)
    outputs, reused = [], []
    with adapter_for(transformer).install(transformer, strategy):
        for _ in range(2):
            before = strategy.stats.reused
            outputs.append(bench.call(strategy, 0, steps))
            reused.append(strategy.stats.reused - before)
    answers.close()
    runs.update(eager=outputs[0], eager_reused=reused[0], steps=steps)
    _require(torch.isfinite(outputs[0]).all(), "the outputs are not finite")
    _require(torch.equal(outputs[0], outputs[1]), "a second call with the same seed gave other outputs: state is not reset per call")
    _require(reused[0] == reused[1], f"a second call reused {reused[1]} block evaluations, the first {reused[0]}")
    return f"{reused[0]} of {steps * bench.model.num_blocks} block evaluations reused"


def _removal(bench: _Bench, runs: dict[str, Any]) -> None:
    _require("state" in runs, "the eager run did not get as far as installing the part")
    transformer = bench.model.transformer
    left = [name for name, m in transformer.named_modules() if "forward" in m.__dict__]
    _require(not left, f"patched forward left on {left[:3]}")
    state = transformer.state_dict()
    _require(all(torch.equal(v, runs["state"][k]) for k, v in state.items()), "the model's weights changed")
    after = bench.call(None, 0, runs["steps"])
    _require(torch.equal(after, bench.reference(runs["steps"])), "the untouched model gives other outputs after removal")


def _answers(runs: dict[str, Any]) -> str:
    _require("answers" in runs, "the eager run did not get as far as a step")
    problems = runs["answers"]
    _require(not problems, "; ".join(problems[:3]))
    return runs.get("answers_note", "")


def _replay(bench: _Bench, part: type[Part], kind: str, params: dict[str, Any], registry: Registry, steps: int, runs: dict[str, Any]) -> str:
    from dqar_bench.strategy.adapter import adapter_for

    strategy = _strategy(part, kind, params, registry)
    declared = {k: type(p).UNSUPPORTED.get("cudagraph") for k, p in strategy.parts.items() if type(p).UNSUPPORTED.get("cudagraph")}
    if declared:
        return "declared unsupported: " + "; ".join(f"{k} '{strategy.parts[k].PLUGIN_NAME}': {why}" for k, why in declared.items())
    _require("eager" in runs, "the eager run failed, nothing to compare with")
    transformer = bench.model.transformer
    execution = Execution("cudagraph", transformer, strategy, graphs=ReplayedGraphs)
    outputs, reused = [], []
    with adapter_for(transformer).install(transformer, strategy), execution as forward:
        for _ in range(2):
            before = strategy.stats.reused
            outputs.append(bench.call(strategy, 0, steps, forward))
            reused.append(strategy.stats.reused - before)
    report = execution.report()
    for i, out in enumerate(outputs):
        torch.testing.assert_close(out, runs["eager"], rtol=TOLERANCE, atol=TOLERANCE, msg=lambda m: f"replayed call {i + 1} differs from eager: {m.splitlines()[0]}")
    _require(reused == [runs["eager_reused"]] * 2, f"replayed calls reused {reused}, eager {runs['eager_reused']}")
    return f"{report['graphs']} graphs, {report['replays']} replays"


class _AnswerWatch:
    """Records wrong answer lengths (and static patterns that `decide` does not follow)."""

    def __init__(self, strategy: Any, runs: dict[str, Any]) -> None:
        self.strategy, self.runs = strategy, runs
        runs["answers"] = []
        scheduler, gate = strategy.scheduler, strategy.gate
        self._mask, self._decide, self._window = scheduler.mask, gate.decide, gate.window
        window = gate.window

        def unnarrowed(snrs: Any, num_blocks: int) -> None:
            runs["window"] = window(snrs, num_blocks)
            return None  # the gate is asked everywhere, so an answer outside its window shows

        def mask(num_steps: int, num_blocks: int) -> torch.Tensor:
            out = self._mask(num_steps, num_blocks)
            if tuple(out.shape) != (num_steps, num_blocks):
                runs["answers"].append(f"mask shape {tuple(out.shape)}, expected ({num_steps}, {num_blocks})")
            return out

        def decide(ctx: Any, eligible: list[bool]) -> list[bool]:
            answer = self._decide(ctx, eligible)
            if len(answer) != len(eligible):
                runs["answers"].append(f"decide gave {len(answer)} answers for {len(eligible)} blocks at step {ctx.step}")
            if ctx.step == 0:
                runs["answers"].append("decide was asked at step 0 (nothing is cached then): the harness is wrong")
            pattern = gate.static_pattern(ctx.num_steps, len(eligible))
            if pattern is not None:
                row = pattern[ctx.step].tolist()
                off = [b for b, e in enumerate(eligible) if e and bool(answer[b]) != bool(row[b])]
                if off:
                    runs["answers"].append(f"decide departs from static_pattern at step {ctx.step}, blocks {off}")
                runs["answers_note"] = "decide follows static_pattern"
            held = runs.get("window")
            if held is not None:
                off = [b for b, e in enumerate(eligible) if e and bool(answer[b]) and not bool(held[ctx.step, b])]
                if off:
                    runs["answers"].append(f"decide reuses outside the gate's window at step {ctx.step}, blocks {off}")
            return answer

        scheduler.mask, gate.decide, gate.window = mask, decide, unnarrowed

    def close(self) -> None:
        del self.strategy.scheduler.mask, self.strategy.gate.decide, self.strategy.gate.window


# --- a CPU stand-in for CUDA graphs ---------------------------------------------------------


class ReplayedGraphs(CudaGraphs):
    """A CPU stand-in for CUDA graphs with their one property that matters here: a replay runs
    the recorded tensor operations on the same tensors, and no Python at all.

    `make` records every aten op of the forward (running it, as capture-then-replay does);
    a replay reruns them in order and writes each result into the tensor recorded for it,
    so later ops (and the caller) read the new values at the old addresses. A cache that
    keeps its bookkeeping in the forward, or stores new tensors instead of writing into
    the pinned ones, gives other outputs here than eagerly, as it would on a GPU.
    """

    def __init__(self, transformer: torch.nn.Module) -> None:
        self.transformer = transformer
        self.static = None
        self._sources = {}
        self.recorded = 0

    def warm(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        self.load(*args, **kwargs)
        return self._run()

    def make(self, *args: Any, **kwargs: Any) -> _Program:
        from torch.utils._python_dispatch import TorchDispatchMode

        ops: list[tuple[Any, Any, Any, Any]] = []

        class Record(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
                out = func(*args, **(kwargs or {}))
                ops.append((func, args, kwargs or {}, out))
                return out

        self.load(*args, **kwargs)
        with Record():
            static_out = self._run()
        self.recorded += 1

        def replay(*a: Any, **k: Any) -> torch.Tensor:
            self.load(*a, **k)
            for func, fargs, fkwargs, out in ops:
                new = func(*fargs, **fkwargs)
                for old, value in zip(_tensors(out), _tensors(new)):
                    if old is not value and old._base is None and value.data_ptr() != old.data_ptr():
                        old.copy_(value)
            return static_out

        return _Program(replay, static_out)

    def close(self) -> None:
        self.static = None


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [v for v in value if isinstance(v, torch.Tensor)]
    return []


__all__ = ["COMPANIONS", "CheckResult", "ReplayedGraphs", "assert_conforms", "check_part", "find_part", "kind_of", "tiny_models"]
