"""Where caches keep what they hold: per-key slots that can be written in place.

Eagerly a slot just keeps whatever it is given. Under CUDA graphs (`pinned`) that is not
enough: a captured graph reads and writes fixed addresses, so a slot that already holds
tensors of the same shapes gets the new values copied into them, and `clear` keeps every
tensor (a graph still points at them, and a replayed store runs no Python to put them
back): what is valid in a sampling call is the owner's bookkeeping, not the slots'.
The copy costs one elementwise kernel per store, which is why it is only done pinned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Generic, Hashable, Iterator, TypeVar

import torch

from dqar_bench.core.parts import Cache, Quantizer

K = TypeVar("K", bound=Hashable)


class Slots(Generic[K]):
    """A dict of packed tensors (anything whose attributes are tensors) by key."""

    def __init__(self) -> None:
        self._held: dict[K, Any] = {}

    def clear(self, pinned: bool = False) -> None:
        """Drop what is held; pinned, nothing (the tensors stay where graphs point)."""
        if not pinned:
            self._held.clear()

    def __contains__(self, key: object) -> bool:
        return key in self._held

    def __getitem__(self, key: K) -> Any:
        return self._held[key]

    def get(self, key: K, default: Any = None) -> Any:
        return self._held.get(key, default)

    def keys(self) -> Iterator[K]:
        return iter(list(self._held))

    def values(self) -> Iterator[Any]:
        return iter(list(self._held.values()))

    def put(self, key: K, value: Any, pinned: bool = False) -> None:
        """Hold `value` under `key`; pinned, into the tensors already there when they fit."""
        if pinned:
            old = self._held.get(key)
            if old is not None and copy_into(old, value):
                self._held[key] = old
                return
        self._held[key] = value

    def nbytes(self) -> int:
        return sum(nbytes_of(v) for v in self._held.values())


def tensors_of(value: Any) -> list[torch.Tensor] | None:
    """The tensors a packed value is made of, in a fixed order (None if it has none)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        parts = [tensors_of(v) for v in value if v is not None]
        if any(p is None for p in parts):
            return None
        return [t for p in parts for t in p]  # type: ignore[union-attr]
    names = getattr(type(value), "__slots__", None) or list(getattr(value, "__dict__", {}))
    if isinstance(names, str):
        names = [names]
    found = [getattr(value, n) for n in names if isinstance(getattr(value, n, None), torch.Tensor)]
    return found or None


def copy_into(old: Any, new: Any) -> bool:
    """Copy `new`'s tensors into `old`'s when both have the same structure; say if it did."""
    olds, news = tensors_of(old), tensors_of(new)
    if olds is None or news is None or len(olds) != len(news):
        return False
    if any(a.shape != b.shape or a.dtype != b.dtype or a.device != b.device for a, b in zip(olds, news)):
        return False
    for a, b in zip(olds, news):
        if a.data_ptr() != b.data_ptr():
            a.copy_(b)
    return True


def nbytes_of(value: Any) -> int:
    size = getattr(value, "nbytes", None)
    if isinstance(size, int):
        return size
    tensors = tensors_of(value) or []
    return sum(t.numel() * t.element_size() for t in tensors)


def streams_map(fn: Callable[..., Any], *values: Any) -> Any:
    """`fn` applied to tensors, or element by element to tuples of them (a None anywhere gives None).

    What a hooked module gives is a tensor or, for a joint image-text module, a tuple (its
    image and text outputs; a stream a block does not return is None); caches and the
    strategy treat both alike through this.
    """
    first = values[0]
    if isinstance(first, tuple):
        return tuple(streams_map(fn, *parts) for parts in zip(*values))
    if any(v is None for v in values):
        return None
    return fn(*values)


def pack(quantizer: Quantizer, value: Any) -> Any:
    """A tensor, or each tensor of a tuple, stored by `quantizer`."""
    if not isinstance(value, tuple):  # the common case, without the mapping's calls
        return quantizer.pack(value)
    return streams_map(quantizer.pack, value)


def unpack(packed: Any, dtype: torch.dtype) -> Any:
    """What `pack` stored, back as tensors of `dtype`."""
    if not isinstance(packed, tuple):
        return packed.unpack().to(dtype)
    return streams_map(lambda p: p.unpack().to(dtype), packed)


def first_tensor(value: Any) -> torch.Tensor:
    """The image stream: the value itself, or the first element of a tuple."""
    return value[0] if isinstance(value, tuple) else value


@dataclass
class SlotCache(Cache):
    """A graph-safe cache that stores one packed tensor (or tuple of them) per block and gives it back as is.

    What it holds is bookkept in `begin_step` (a block holds once it has computed in this
    sampling call), so a replayed CUDA graph, which runs no Python, leaves it right.
    Subclasses choose the `TARGET`; the attention-output, attention-and-MLP and
    block-residual caches are this class hooked at different places.
    """

    UNSUPPORTED = {}
    STORES_LAST_COMPUTE_ONLY: ClassVar[bool] = True
    """What it gives back is its block's last compute and nothing older, so a compute after
    which the scheduler lets the block reuse at no step before its next compute need not be
    stored at all (`Strategy` skips those stores)."""

    _held: Slots[int] = field(default_factory=Slots, init=False, repr=False)
    _live: set[int] = field(default_factory=set, init=False, repr=False)

    def clear(self) -> None:
        self._held.clear(self.pinned)
        self._live.clear()

    def holds(self, block: int) -> bool:
        return block in self._live

    def begin_step(self, step: int, computes: list[bool]) -> None:
        self._live.update(b for b, c in enumerate(computes) if c)

    def store(self, block: int, out: Any, qkv: tuple[torch.Tensor, ...] | None) -> None:
        # the hot path of every computing block: the common case (one tensor, eager) without
        # the general helpers' calls
        packed = self.quantizer.pack(out) if type(out) is not tuple else pack(self.quantizer, out)
        if self.pinned:
            self._held.put(block, packed, True)
        else:
            self._held._held[block] = packed

    def reuse(self, block: int, module: torch.nn.Module, hidden_states: torch.Tensor) -> Any:
        packed = self._held._held[block]
        if type(packed) is not tuple:
            return packed.unpack().to(hidden_states.dtype)
        return unpack(packed, hidden_states.dtype)

    def nbytes(self) -> int:
        return self._held.nbytes()
