"""What every adapter shares: patching a module's forward and undoing it cleanly."""

from __future__ import annotations

import functools
from typing import Callable

import torch

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
    """Knows where a model family keeps its blocks and their self-attention."""

    @classmethod
    def supports(cls, model: torch.nn.Module) -> bool:
        raise NotImplementedError

    def attention_modules(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        raise NotImplementedError

    def install(self, model: torch.nn.Module, strategy: Strategy | None) -> Installation:
        """Route every block's self-attention through `strategy` (nothing when None)."""
        modules = self.attention_modules(model)
        installation = Installation(strategy, len(modules))
        if strategy is None:
            return installation
        if strategy.cache.TARGET != "attention":
            raise NotImplementedError(f"{type(self).__name__} cannot host a cache whose target is {strategy.cache.TARGET!r}")
        for index, module in enumerate(modules):
            original = module.forward
            installation.patch(module, functools.partial(strategy.attention, index, module, original))
        return installation
