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

FasterCache's CFG cache (the unconditional branch rebuilt from the conditional one by low /
high frequency deltas) is `cfg_every` here (`dqar_bench.strategies.caches.faster_cfg`,
diffusers' `FasterCacheDenoiserHook` rules and constants; FasterCache's setting: 5). The
sampler skips the unconditional call where CFG runs as two passes (Wan); with CFG in one
batch or a guidance embedding the part refuses the family when `cfg_every` is set
(`refusal_on`). The authors' code and diffusers both use a constant w = 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from dqar_bench import Cache, hookimpl
from dqar_bench.strategies.caches.faster_cfg import FasterCfg
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

    cfg_every: int = field(default=0, metadata={"help": "CFG cache: compute the unconditional pass every N-th step inside cfg_window, rebuild it otherwise (FasterCache / diffusers: 5); 0: off"})
    cfg_window: list[float] = field(default_factory=lambda: [-1.0, 641.0], metadata={"help": "timesteps strictly inside which the CFG cache may skip (diffusers: -1, 641)"})
    alpha_low: float = field(default=1.1, metadata={"help": "CFG cache: factor on the low-frequency delta per skipped step inside low_window (diffusers: 1.1)"})
    alpha_high: float = field(default=1.1, metadata={"help": "CFG cache: factor on the high-frequency delta per skipped step inside high_window (diffusers: 1.1)"})
    low_window: list[float] = field(default_factory=lambda: [99.0, 901.0], metadata={"help": "timesteps where alpha_low applies (diffusers: 99, 901)"})
    high_window: list[float] = field(default_factory=lambda: [-1.0, 301.0], metadata={"help": "timesteps where alpha_high applies (diffusers: -1, 301)"})

    _held: dict[int, tuple[Any, Any]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.weight != self.weight:
            raise ValueError("parameter 'weight' must be a number, got NaN")
        if self.cfg_every < 0:
            raise ValueError(f"parameter 'cfg_every' must be >= 0 (0: no CFG cache), got {self.cfg_every}")
        for name in ("cfg_window", "low_window", "high_window"):
            if len(getattr(self, name)) != 2:
                raise ValueError(f"parameter '{name}' must be two timesteps [low, high], got {getattr(self, name)}")
        self.cfg: FasterCfg | None = None
        if self.cfg_every:
            self.cfg = FasterCfg(
                self.cfg_every, tuple(self.cfg_window), self.alpha_low, self.alpha_high, tuple(self.low_window), tuple(self.high_window)
            )

    def refusal_on(self, family: Any) -> str | None:
        if self.cfg is not None and family.guidance != "cfg-separate":
            how = {"cfg-batch": "CFG in one batch", "embedded": "a guidance embedding (no unconditional pass)"}.get(family.guidance, family.guidance)
            return (
                f"cache 'faster-attention' with 'cfg_every': the CFG cache skips the unconditional pass where CFG runs as two "
                f"passes; family '{family.name}' has {how}; set 'cfg_every: 0' for the attention reuse alone"
            )
        return None

    def clear(self) -> None:
        self._held = {}
        if self.cfg is not None:
            self.cfg.reset()

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
