"""What every adapter shares: patching a module's forward and undoing it cleanly.

A cache's `TARGET` says which modules of each block are patched (`SITES` in the
strategy): self-attention, self-attention and feed-forward, or the whole block. An adapter
lists the targets it can host; any other is refused with a one-line reason, at `validate`
time already (`refusal`, from the part's class, before any model is built).
"""

from __future__ import annotations

import functools
from typing import Callable

import torch

from dqar_bench.parts import Part
from dqar_bench.strategy import Strategy


class Installation:
    """Patched modules, restorable; a context manager so a failing case still cleans up."""

    def __init__(self, strategy: Strategy | None, num_blocks: int) -> None:
        self.strategy = strategy
        self.num_blocks = num_blocks
        self._patched: list[torch.nn.Module] = []

    def patch(self, module: torch.nn.Module, forward: Callable[..., torch.Tensor]) -> None:
        if "forward" in module.__dict__:
            raise RuntimeError(f"{type(module).__name__} already has a patched forward; remove the other hook first")
        module.forward = forward
        self._patched.append(module)

    def remove(self) -> None:
        for module in self._patched:
            del module.forward
        self._patched.clear()

    def __enter__(self) -> "Installation":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


class Adapter:
    """Knows where a model family keeps its blocks, their self-attention and feed-forward."""

    FAMILY: str = ""
    TARGETS: frozenset[str] = frozenset({"attention", "attention+mlp", "block"})

    @classmethod
    def supports(cls, model: torch.nn.Module) -> bool:
        raise NotImplementedError

    @classmethod
    def refusal(cls, part: type[Part]) -> str | None:
        """Why this adapter cannot host `part` (one line), or None."""
        target = getattr(part, "TARGET", None)
        if part.KIND != "cache" or target in cls.TARGETS:
            return None
        hosted = ", ".join(sorted(cls.TARGETS))
        return f"the {cls.FAMILY or cls.__name__} adapter cannot host cache '{part.PLUGIN_NAME}' (target '{target}'); it hosts targets {hosted}"

    def blocks(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        return list(model.transformer_blocks)

    def attention_modules(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        return [block.attn1 for block in self.blocks(model)]

    def mlp_modules(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        return [block.ff for block in self.blocks(model)]

    def install(self, model: torch.nn.Module, strategy: Strategy | None) -> Installation:
        """Route the modules the strategy's cache targets through it (nothing when None)."""
        blocks = self.blocks(model)
        installation = Installation(strategy, len(blocks))
        if strategy is None:
            return installation
        reason = self.refusal(type(strategy.cache))
        if reason:
            raise NotImplementedError(reason)
        if any(getattr(b, "_chunk_size", None) for b in blocks) and "mlp" in strategy.caches:
            raise NotImplementedError("feed-forward chunking calls each ff several times per step; turn it off to cache the MLP")
        routes = {
            "attention": (self.attention_modules, strategy.attention),
            "mlp": (self.mlp_modules, strategy.mlp),
            "block": (lambda m: blocks, strategy.block),
        }
        try:
            for site in strategy.caches:
                modules, route = routes[site]
                for index, module in enumerate(modules(model)):
                    installation.patch(module, functools.partial(route, index, module, module.forward))
        except BaseException:
            installation.remove()
            raise
        return installation
