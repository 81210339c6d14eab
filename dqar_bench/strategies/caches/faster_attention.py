"""Cache `faster-attention`: FasterCache's attention reuse, a weighted extrapolation of the last two outputs.

FasterCache (Lv et al. 2024, "FasterCache: Training-Free Video Diffusion Model
Acceleration with High Quality") observes that attention outputs of adjacent steps are
alike but not equal, and on a skipped step returns `F_t + (F_t - F_{t-2}) * w` instead of
`F_t`: the last output pushed along its last change. Which two outputs are kept differs
between the references (`history`):

- `computed` (the default): the authors' code (`Vchitect/FasterCache`,
  `scripts/latte/fastercache_sample_latte.py`, `fastercache_spa_forward`) keeps the last
  two *computed* outputs (`sacache = [sacache[-1], attn_output]` on compute steps only);
- `outputs`: diffusers' `FasterCacheBlockHook` keeps the last two outputs the module gave,
  computed or extrapolated (an extrapolation becomes the newest); bit-identical to the hook
  (`tests/test_new_peers.py`).

The first computation fills both. With the `interval` gate (N = 2) and the
`timestep-window` scheduler this is the hook's spatial attention rule: compute every N-th
step inside the window, always outside it (diffusers' defaults: N = 2, -1 < t < 681,
w = 0.5; the Latte script: every 2nd step from step 16 of 50, w = 0.5).

What is not here: FasterCache's CFG cache (the unconditional branch approximated from the
conditional one by low / high frequency deltas, `unconditional_batch_skip_range`) acts
on the guidance branches, not on a block, and dqar-bench's parts have no site there; run
diffusers' own hook as a case (`diffusers-hook: {name: faster-cache}`) for it. The authors'
code and diffusers both use a constant w = 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from dqar_bench import Cache, hookimpl
from dqar_bench.strategy.storage import pack, streams_map, unpack


@dataclass
class FasterAttention(Cache):
    """Reuse attention as F_t + (F_t - F_{t-2}) * w from its last two outputs (FasterCache)."""

    PLUGIN_NAME = "faster-attention"
    TARGET = "attention"

    weight: float = field(default=0.5, metadata={"help": "w of F_t + (F_t - F_{t-2}) * w (diffusers' default attention_weight_callback: 0.5)"})

    history: Literal["computed", "outputs"] = field(
        default="computed",
        metadata={"help": "computed: the last two computed outputs (the authors' code); outputs: the last two given, extrapolations too (diffusers' hook)"},
    )

    _held: dict[int, tuple[Any, Any]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.weight != self.weight:
            raise ValueError("parameter 'weight' must be a number, got NaN")

    def clear(self) -> None:
        self._held = {}

    def holds(self, block: int) -> bool:
        return block in self._held

    def store(self, block: int, out: Any, qkv: tuple[torch.Tensor, ...] | None) -> None:
        latest = pack(self.quantizer, out)
        before = self._held.get(block)
        self._held[block] = (before[1] if before is not None else latest, latest)

    def reuse(self, block: int, module: torch.nn.Module, hidden_states: torch.Tensor) -> Any:
        older, newer = (unpack(p, hidden_states.dtype) for p in self._held[block])
        weight = self.weight
        out = streams_map(lambda t, t2: t + (t - t2) * weight, newer, older)
        if self.history == "outputs":
            self._held[block] = (self._held[block][1], pack(self.quantizer, out))
        return out

    def nbytes(self) -> int:
        def size(packed: Any) -> int:
            if isinstance(packed, tuple):
                return sum(p.nbytes for p in packed if p is not None)
            return packed.nbytes

        return sum(size(p) for pair in self._held.values() for p in pair)


@hookimpl
def register_caches():
    return [FasterAttention]
