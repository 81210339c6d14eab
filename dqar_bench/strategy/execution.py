"""Execution modes: how the transformer runs, for the baseline and every strategy alike.

Eager diffusers DiT is launch-bound (a CUDA graph of the same forward is 4.3x faster: 32.0
against 7.5 ms for DiT-XL/2-256, batch 8, fp16, random weights, one H200, 2026-11-26), so a speedup measured only against eager mostly counts removed kernel launches.
A case runs in one of three modes, and its speedup is taken against the baseline in the
same mode:

- `eager`: a plain call of the model.
- `compile`: `torch.compile` of the transformer with the strategy installed, so Dynamo
  traces the strategy's hooks too and specializes the graph on the step's reuse pattern
  (the Python values the hooks read); each distinct pattern compiles once. The first
  sampling call (the runner's cold figure) holds most of the compile time; the runner
  warms a strong mode up with two calls, because the first starts from empty caches and
  unallocated buffers and the second then compiles its first step once more. Past
  `max_graphs` distinct patterns a step runs eagerly and is counted as a fallback.
- `cudagraph`: the forward captured as a CUDA graph, as in `gpu/anchor3.py`: one graph per
  distinct `Strategy.graph_key()` (the reuse pattern and what the caches say changes their
  operations), captured lazily the second time a key is met (the first forward of a case
  runs eagerly, as warmup), replayed after, with static input buffers and one shared
  memory pool. Caches write into fixed tensors (`pinned`). Past `max_graphs` keys a step
  runs eagerly (counted). Needs CUDA.

A part that cannot run in a mode says so in `UNSUPPORTED`; `unsupported` turns that (and
"needs CUDA") into the one-line reason the table shows instead of a measurement.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterator, Protocol

import torch

from dqar_bench.model.sampling import Forward, plain_forward
from dqar_bench.strategy.strategy import Strategy

MODES: tuple[str, ...] = ("eager", "compile", "cudagraph")


@dataclass(frozen=True)
class ExecutionOptions:
    """Suite-level settings of the strong modes."""

    compile_backend: str = "inductor"
    compile_mode: str | None = None
    max_graphs: int = 64


def unsupported(mode: str, device: torch.device, strategy: Strategy | None) -> str | None:
    """Why a case cannot run in `mode` on `device` (one line), or None."""
    if mode not in MODES:
        return f"unknown execution mode '{mode}' (modes: {', '.join(MODES)})"
    if mode == "cudagraph" and device.type != "cuda":
        return "needs CUDA"
    if strategy is not None:
        for kind, part in strategy.parts.items():
            reason = type(part).UNSUPPORTED.get(mode)
            if reason:
                return f"{kind} '{part.PLUGIN_NAME}': {reason}"
    return None


class Execution:
    """One case's execution mode, as a context manager that yields the sampler's `forward`.

    Enter it after the strategy is installed (the compiled graph and the captured graphs
    must contain the hooks) and leave it before the installation is removed.
    """

    def __init__(
        self,
        mode: str,
        transformer: torch.nn.Module,
        strategy: Strategy | None,
        options: ExecutionOptions | None = None,
        graphs: Callable[[torch.nn.Module], GraphBackend] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown execution mode '{mode}' (modes: {', '.join(MODES)})")
        self.mode = mode
        self.transformer = transformer
        self.strategy = strategy
        self.options = options or ExecutionOptions()
        self.graphs = graphs or CudaGraphs  # tests swap in a CPU stand-in
        self._stack = contextlib.ExitStack()
        self._runner: KeyedRunner | None = None
        self._graphs_before = 0

    def __enter__(self) -> Forward:
        if self.mode == "eager":
            return plain_forward(self.transformer)
        if self.strategy is not None:  # one program per reuse pattern: stores that vary by step would add programs
            self.strategy.lean_stores = False
            self._stack.callback(setattr, self.strategy, "lean_stores", True)
        if self.strategy is not None and self.mode == "cudagraph":
            self.strategy.pinned = True
            self._stack.callback(setattr, self.strategy, "pinned", False)
        if self.mode == "compile":
            self._stack.enter_context(_fresh_dynamo(self.options.max_graphs))
            self._graphs_before = _dynamo_graphs()
            compiled = torch.compile(self.transformer, backend=self.options.compile_backend, mode=self.options.compile_mode)
            self._runner = KeyedRunner(_Compiled(plain_forward(compiled)), plain_forward(self.transformer), self._key, self.options.max_graphs)
        else:
            self._runner = KeyedRunner(self.graphs(self.transformer), plain_forward(self.transformer), self._key, self.options.max_graphs)
        self._stack.callback(self._runner.close)
        return self._runner

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def report(self) -> dict[str, Any]:
        """What the mode did, for the record: graphs made, steps that fell back to eager."""
        out: dict[str, Any] = {"mode": self.mode}
        if self.mode == "compile":
            out.update(backend=self.options.compile_backend, compile_mode=self.options.compile_mode)
        if self._runner is not None:
            out.update(self._runner.counts())
        if self.mode == "compile":  # Dynamo's own count: guards on Python state can add graphs per key
            out["dynamo_graphs"] = _dynamo_graphs() - self._graphs_before
        return out

    def _key(self) -> Hashable:
        return self.strategy.graph_key() if self.strategy is not None else ()


class GraphBackend(Protocol):
    """Makes and runs one specialized program per key (a compiled graph, a CUDA graph)."""

    needs_warmup: bool

    def warm(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The first forward of a case when `needs_warmup`: run eagerly, make nothing."""

    def make(self, *args: Any, **kwargs: Any) -> Callable[..., torch.Tensor]:
        """A program for the current key, already run on these inputs; call it for later steps."""

    def close(self) -> None: ...


@dataclass
class KeyedRunner:
    """The bookkeeping shared by compile and cudagraph: one program per key, capped.

    A known key reuses its program; the first call of a backend that `needs_warmup` runs
    eagerly; any other new key gets a program (made and run at once) while fewer than
    `max_graphs` exist, else the step runs eagerly and is counted as a fallback.
    """

    backend: GraphBackend
    eager: Forward
    key: Callable[[], Hashable]
    max_graphs: int
    programs: dict[Hashable, Callable[..., torch.Tensor]] = field(default_factory=dict)
    warmed: bool = False
    made: int = 0
    replays: int = 0
    fallbacks: int = 0

    def __call__(self, hidden_states: torch.Tensor, timestep: torch.Tensor, **inputs: Any) -> torch.Tensor:
        key = self.key()
        program = self.programs.get(key)
        if program is not None:
            self.replays += 1
            return program(hidden_states, timestep, **inputs)
        if self.backend.needs_warmup and not self.warmed:
            self.warmed = True
            return self.backend.warm(hidden_states, timestep, **inputs)
        if len(self.programs) >= self.max_graphs:
            self.fallbacks += 1
            return self.eager(hidden_states, timestep, **inputs)
        program = self.backend.make(hidden_states, timestep, **inputs)
        self.programs[key] = program
        self.made += 1
        return program.last  # type: ignore[attr-defined]

    def counts(self) -> dict[str, int]:
        return {"graphs": self.made, "replays": self.replays, "eager_fallback_steps": self.fallbacks}

    def close(self) -> None:
        self.programs.clear()
        self.backend.close()


class _Program:
    """A made program and the output of the call that made it."""

    def __init__(self, run: Callable[..., torch.Tensor], last: torch.Tensor) -> None:
        self.run, self.last = run, last

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.run(*args, **kwargs)


class _Compiled:
    """`torch.compile`d forward: Dynamo itself keeps one graph per guard set (per pattern)."""

    needs_warmup = False

    def __init__(self, compiled: Forward) -> None:
        self.compiled = compiled

    def warm(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.compiled(*args, **kwargs)

    def make(self, *args: Any, **kwargs: Any) -> _Program:
        return _Program(self.compiled, self.compiled(*args, **kwargs))

    def close(self) -> None:
        pass


class CudaGraphs:
    """CUDA graphs of the transformer's forward over static input buffers, one shared pool.

    Inputs are copied into the buffers before every replay (a condition tensor only when
    it is a different tensor than last time). The output of a replay is the graph's static
    output tensor: valid until the next forward, which is all the sampler needs.
    """

    needs_warmup = True

    def __init__(self, transformer: torch.nn.Module) -> None:
        self.transformer = transformer
        self.pool = torch.cuda.graph_pool_handle()
        self.static: dict[str, Any] | None = None
        self._sources: dict[str, Any] = {}
        self._graphs: list[torch.cuda.CUDAGraph] = []

    def _run(self) -> torch.Tensor:
        assert self.static is not None
        inputs = dict(self.static)
        hidden_states, timestep = inputs.pop("hidden_states"), inputs.pop("timestep")
        return self.transformer(hidden_states, timestep=timestep, **inputs).sample

    def load(self, hidden_states: torch.Tensor, timestep: torch.Tensor, **inputs: Any) -> None:
        given = {"hidden_states": hidden_states, "timestep": timestep, **inputs}
        if self.static is None:
            self.static = {k: _clone(v) for k, v in given.items()}
            self._sources = dict(given)
            return
        if set(given) != set(self.static):
            raise RuntimeError(f"CUDA graph inputs changed from {sorted(self.static)} to {sorted(given)}")
        for name, value in given.items():
            if name in ("hidden_states", "timestep") or value is not self._sources.get(name):
                _copy(self.static[name], value, name)
                self._sources[name] = value

    def warm(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The case's first forward, eagerly on a side stream (library init, cache buffers)."""
        self.load(*args, **kwargs)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            out = self._run()
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()  # what was allocated on the side stream (cache tensors) is then safe anywhere
        return out

    def make(self, *args: Any, **kwargs: Any) -> _Program:
        self.load(*args, **kwargs)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            static_out = self._run()
        self._graphs.append(graph)
        graph.replay()  # capture records without running: run it for this step

        def replay(*a: Any, **k: Any) -> torch.Tensor:
            self.load(*a, **k)
            graph.replay()
            return static_out

        return _Program(replay, static_out)

    def close(self) -> None:
        self._graphs.clear()
        self.static = None
        self._sources.clear()


def _clone(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    return value


def _copy(static: Any, value: Any, name: str) -> None:
    if isinstance(static, torch.Tensor):
        if not isinstance(value, torch.Tensor) or value.shape != static.shape:
            raise RuntimeError(f"CUDA graph input '{name}' changed shape; a graph replays fixed shapes")
        static.copy_(value)
    elif isinstance(static, dict):
        for key in static:
            _copy(static[key], value[key], f"{name}.{key}")
    elif static is not value and static != value:
        raise RuntimeError(f"CUDA graph input '{name}' changed from {static!r} to {value!r}")


def _dynamo_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


@contextlib.contextmanager
def _fresh_dynamo(max_graphs: int) -> Iterator[None]:
    """Compile caches cleared around a case, and room for one recompile per reuse pattern."""
    import torch._dynamo

    config = torch._dynamo.config
    previous = config.recompile_limit
    torch._dynamo.reset()
    config.recompile_limit = max(previous, max_graphs + 8)
    try:
        yield
    finally:
        config.recompile_limit = previous
        torch._dynamo.reset()
