"""Quantizer `none`: keep cached tensors as they are, in the model's dtype."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dqar_bench import Quantizer, hookimpl


class Plain:
    """A tensor kept as is; it is detached so the cache never holds autograd state."""

    __slots__ = ("tensor",)

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor.detach()

    @property
    def nbytes(self) -> int:
        return self.tensor.numel() * self.tensor.element_size()

    def unpack(self) -> torch.Tensor:
        return self.tensor


@dataclass
class NoQuantization(Quantizer):
    """Store in the model's dtype (no quantization)."""

    PLUGIN_NAME = "none"

    def pack(self, x: torch.Tensor) -> Plain:
        return Plain(x)


@hookimpl
def register_quantizers():
    return [NoQuantization]
