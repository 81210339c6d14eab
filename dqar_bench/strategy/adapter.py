"""The generic adapter: a family entry's blocks and submodules, routed through a strategy.

A cache's `TARGET` says which modules of each block are patched (`SITES` in the
strategy): self-attention, self-attention and feed-forward, cross-attention (the modules
the family names in `cross_attention`), or the whole block; where the gate reads entropy
and the target is not self-attention, each block's self-attention is patched too, to be
probed only (`Strategy.probe`). Every
module a family names at a site and a block has gets its own cache slot (`Strategy.bind`).
A whole block is wrapped by `BlockForward`, which reads the streams the block updates from
its arguments and puts its outputs into the strategy's order (image stream first) and
back into the block's own. A part the family cannot host is refused with a one-line
reason, at `validate` time already (`Family.refusal`, from the part's class).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Mapping

import torch

from dqar_bench.core.parts import Part
from dqar_bench.model.families import Blocks, Family, Modulation, family_of
from dqar_bench.strategy.modulation import reader, tap
from dqar_bench.strategy.strategy import SITES, Strategy


class Installation:
    """Patched modules, restorable; a context manager so a failing case still cleans up."""

    def __init__(self, strategy: Strategy | None) -> None:
        self.strategy = strategy
        self._patched: list[torch.nn.Module] = []
        self.hooks: list[Any] = []
        """Hook handles the installation added (a `model-output` modulation tap)."""

    def patch(self, module: torch.nn.Module, forward: Callable[..., Any]) -> None:
        if "forward" in module.__dict__:
            raise RuntimeError(f"{type(module).__name__} already has a patched forward; remove the other hook first")
        module.forward = forward
        self._patched.append(module)

    def remove(self) -> None:
        for module in self._patched:
            del module.forward
        self._patched.clear()
        for handle in self.hooks:
            handle.remove()
        self.hooks.clear()
        if self.strategy is not None:
            self.strategy.unbind()

    def __enter__(self) -> "Installation":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


class Adapter:
    """Puts a strategy on the blocks of a model of one family."""

    def __init__(self, family: Family) -> None:
        self.family = family

    def refusal(self, part: type[Part]) -> str | None:
        """Why this family cannot host `part` (one line), or None."""
        return self.family.refusal(part)

    def install(self, model: torch.nn.Module, strategy: Strategy | None) -> Installation:
        """Route the modules the strategy's cache targets through it (nothing when None)."""
        lists = self.family.block_lists(model)
        flat: list[tuple[Blocks, torch.nn.Module]] = [(spec, block) for spec, blocks in lists for block in blocks]
        installation = Installation(strategy)
        if strategy is None:
            return installation
        raw = getattr(model, "config", None)  # diffusers' FrozenDict, or a plain namespace on a synthetic model
        config = dict(raw) if isinstance(raw, Mapping) else dict(vars(raw)) if raw is not None else {}
        reason = self.refusal(type(strategy.cache)) or self.refusal(type(strategy.gate))
        if reason:
            raise NotImplementedError(reason)
        if any(getattr(b, "_chunk_size", None) for _, b in flat) and "mlp" in strategy.caches:
            raise NotImplementedError("feed-forward chunking calls each ff several times per step; turn it off to cache the MLP")
        plan: list[tuple[torch.nn.Module, Callable[..., Any]]] = []
        uses: dict[str, set[int]] = {}
        for site in SITES[strategy.cache.TARGET]:
            for index, (spec, block) in enumerate(flat):
                if site == "block":
                    uses.setdefault("block", set()).add(index)
                    forward = BlockForward(strategy, "block", index, block, spec.returns)
                    if index == 0 and strategy.reads_modulation:
                        m = strategy.gate.modulation(self.family, config)
                        if not isinstance(m, Modulation):
                            raise NotImplementedError(m)
                        if m.recipe == "model-output":
                            forward.modulation, handle = tap(model, m.module)
                            installation.hooks.append(handle)
                        else:
                            forward.modulation = reader(block, forward.original, m.module, m.recipe)
                    plan.append((block, forward))
                    continue
                route = strategy.attention if site == "attention" else strategy.output
                for j, name in enumerate(self._modules(site)):
                    module = getattr(block, name, None)
                    if module is None:
                        continue
                    key = site if j == 0 else f"{site}/{j}"
                    uses.setdefault(key, set()).add(index)
                    plan.append((module, functools.partial(route, key, index, module, module.forward)))
        if strategy.probes_apart:  # the gate reads entropy the cache's hooks do not see
            for index, (_, block) in enumerate(flat):
                module = getattr(block, self.family.attention[0], None)
                if module is not None:
                    plan.append((module, functools.partial(strategy.probe, index, module, module.forward)))
        strategy.bind(uses, self.family.own_attention, self.family, config)
        try:
            for module, forward in plan:
                installation.patch(module, forward)
        except BaseException:
            installation.remove()
            raise
        return installation


    def _modules(self, site: str) -> tuple[str, ...]:
        """The submodule names the family gives for a site."""
        return {"attention": self.family.attention, "mlp": self.family.mlp, "cross-attention": self.family.cross_attention}[site]


class BlockForward:
    """A block's forward routed through `Strategy.block`, streams in the strategy's order.

    The streams are the names the family says the block returns; they are read from the
    block's arguments (by keyword or position) and handed over image first. A block that
    returns one tensor is handed that tensor, so the common case costs no tuple.
    """

    def __init__(self, strategy: Strategy, key: str, index: int, module: torch.nn.Module, returns: tuple[str, ...]) -> None:
        self.strategy, self.key, self.index, self.module = strategy, key, index, module
        self.original = module.forward
        params = list(inspect.signature(self.original).parameters)
        names = sorted(returns, key=lambda n: n != "hidden_states")
        self.reads = [(name, params.index(name) if name in params else None) for name in names]
        self.single = len(names) == 1
        self.order = tuple(returns.index(n) for n in names)
        self.restore = tuple(names.index(n) for n in returns)
        self.modulation: Callable[[tuple, dict], torch.Tensor] | None = None
        """Block 0 of a strategy whose gate reads it: block 0's modulated input for a call's arguments."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        modulated = None if self.modulation is None else (lambda: self.modulation(args, kwargs))  # type: ignore[misc]
        if self.single:  # hidden states in, hidden states out
            name, position = self.reads[0]
            hidden = kwargs[name] if name in kwargs else self._read(name, position, args, kwargs)
            return self.strategy.block(self.key, self.index, self.module, lambda: self.original(*args, **kwargs), hidden, modulated)
        streams = tuple(self._read(name, position, args, kwargs) for name, position in self.reads)

        def compute() -> Any:
            out = self.original(*args, **kwargs)
            return tuple(out[i] for i in self.order)

        result = self.strategy.block(self.key, self.index, self.module, compute, streams, modulated)
        return tuple(result[i] for i in self.restore)

    @staticmethod
    def _read(name: str, position: int | None, args: tuple, kwargs: dict) -> Any:
        if name in kwargs:
            return kwargs[name]
        if position is not None and position < len(args):
            return args[position]
        return None


def adapter_for(model: torch.nn.Module) -> Adapter:
    """The adapter for a transformer, from its family entry (a one-line error if it has none)."""
    return Adapter(family_of(model))
