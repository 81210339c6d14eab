"""cache-dit's DBCache as cases: `cache-dit: {fn, bn, threshold, warmup, max_cached_steps, max_continuous_cached_steps, taylorseer}`.

A case with this key runs no dqar-bench strategy: it puts the real cache-dit library
(vipshop/cache-dit, the optional extra `cache-dit`, tested with 1.5.3) on the transformer
for the duration of the case, through cache-dit's own adapter for the transformer class
(`cache_dit.enable_cache(transformer, cache_config=DBCacheConfig(...))`, the transformer-only
path), with TaylorSeer's calibrator when `taylorseer` gives its order. The harness supplies
what a pipeline would: the step count (`num_inference_steps`, so cache-dit resets its
counters at each sampling call) and, with CFG as two passes, `enable_separate_cfg`.
Removal (`cache_dit.disable_cache`) leaves the model as it was; the `forward` attributes
cache-dit leaves on modules are deleted again, as for diffusers' hooks.

Reuse is counted like a strategy's, from cache-dit's own bookkeeping: at a step cache-dit
cached (its context's `cached_steps`, or `cfg_cached_steps` for the unconditional pass), the
middle blocks (after Fn, before the last Bn) reused. A family cache-dit has no adapter for
is recorded unsupported with the reason; without cache-dit installed, a suite naming such a
case fails validation in one line naming the extra. The case's record keeps the spec under
`diffusers_hook` (`name: cache-dit`), like a diffusers hook case, with cache-dit's version.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from dqar_bench.core.context import StepContext
from dqar_bench.model.families import Family, family_of
from dqar_bench.strategy.diffusers_hooks import HookConfigError
from dqar_bench.strategy.strategy import ReuseStats

KEY = "cache-dit"
EXTRA = "pip install 'dqar-bench[cache-dit]' (cache-dit==1.5.3)"

FIELDS: dict[str, tuple[str, type, Any]] = {
    "fn": ("Fn_compute_blocks", int, 8),
    "bn": ("Bn_compute_blocks", int, 0),
    "threshold": ("residual_diff_threshold", float, 0.08),
    "warmup": ("max_warmup_steps", int, 8),
    "max_cached_steps": ("max_cached_steps", int, -1),
    "max_continuous_cached_steps": ("max_continuous_cached_steps", int, -1),
    "taylorseer": ("taylorseer_order", int, 0),
}
"""Suite field -> (cache-dit's name, type, cache-dit's default; taylorseer 0: no calibrator)."""


def _library() -> Any:
    try:
        import cache_dit
    except ImportError:
        raise HookConfigError(f"field '{KEY}': cache-dit is not installed; it is the optional extra cache-dit: {EXTRA}") from None
    return cache_dit


def check(raw: Any, steps: int) -> dict[str, Any]:
    """A suite's `cache-dit` value, checked: {name: cache-dit, config, cache_dit: version}; `HookConfigError` names the field."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise HookConfigError(f"field '{KEY}' must be a mapping of DBCache settings ({', '.join(FIELDS)})")
    config: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in FIELDS:
            raise HookConfigError(f"field '{KEY}.{key}': unknown DBCache setting (settings: {', '.join(FIELDS)})")
        kind = FIELDS[key][1]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
            raise HookConfigError(f"field '{KEY}.{key}' must be {'an integer' if kind is int else 'a number'}, got {value!r}")
        config[key] = kind(value)
    if config.get("fn", 8) < 1 or config.get("bn", 0) < 0 or config.get("warmup", 8) < 0 or config.get("taylorseer", 0) < 0:
        raise HookConfigError(f"field '{KEY}': fn must be >= 1 and bn, warmup, taylorseer >= 0")
    library = _library()
    return {"name": KEY, "config": config, "cache_dit": getattr(library, "__version__", "unknown")}


def refusal(family: Family) -> str | None:
    """Why cache-dit cannot run on `family` (one line), or None."""
    from cache_dit.caching.block_adapters import BlockAdapterRegister

    _, names = BlockAdapterRegister.supported_pipelines()
    if not any(c.startswith(n) for n in names for c in family.classes):
        return (
            f"cache-dit has no adapter for {', '.join(family.classes)} (it matches its {len(names)} adapters by class-name "
            f"prefix; run from a transformer, this class matches none)"
        )
    return None


class CacheDitHook:
    """One case's cache-dit: enabled and disabled around the case, driven as the sampler's observer."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.name = KEY
        self.given: dict[str, Any] = dict(spec.get("config") or {})
        self.stats = ReuseStats()
        self._transformer: torch.nn.Module | None = None
        self._num_blocks = 0
        self._branches = 1
        self._ctx: StepContext | None = None

    def setting(self, key: str) -> Any:
        return self.given.get(key, FIELDS[key][2])

    def refusal(self, family: Family, mode: str = "eager") -> str | None:
        if mode != "eager":
            return "cache-dit keeps per-call Python state (counters, buffers) that a compiled or captured forward does not update"
        return refusal(family)

    def install(self, transformer: torch.nn.Module) -> "_Enabled":
        self._transformer = transformer
        family = family_of(transformer)
        self._num_blocks = sum(len(blocks) for _, blocks in family.block_lists(transformer))
        return _Enabled(self, transformer, family)

    def config(self, steps: int, separate_cfg: bool) -> tuple[Any, Any]:
        cache_dit = _library()
        values = {FIELDS[k][0]: v for k, v in self.given.items() if k != "taylorseer"}
        cache = cache_dit.DBCacheConfig(num_inference_steps=steps, enable_separate_cfg=separate_cfg, **values)
        order = self.setting("taylorseer")
        calibrator = cache_dit.TaylorSeerCalibratorConfig(taylorseer_order=order) if order else None
        return cache, calibrator

    # -- the sampler's observer ------------------------------------------------------------

    def begin(self, num_steps: int, num_blocks: int, device: torch.device, timesteps: Any = None, branches: int = 1, noise: Any = None) -> None:
        import cache_dit

        assert self._transformer is not None, "install() before sampling"
        self._branches = branches
        cache, calibrator = self.config(num_steps, branches == 2)
        kwargs = {"cache_config": cache, **({"calibrator_config": calibrator} if calibrator is not None else {})}
        cache_dit.refresh_context(self._transformer, **kwargs)  # fresh counters and buffers, this call's step count
        self.stats.begin_call(num_steps, self._num_blocks or num_blocks)

    def before_step(self, ctx: StepContext) -> None:
        self._ctx = ctx

    def after_step(self) -> None:
        assert self._ctx is not None and self._transformer is not None
        step = self._ctx.step
        # the live contexts (`summary` is a snapshot taken at the end of a call): transformer-only
        # `enable_cache` hangs its context manager and context names on the transformer
        manager = self._transformer._context_manager
        cached = False
        for name in self._transformer._context_names:
            context = manager.get_context(name)
            cached = cached or step in context.get_cached_steps() or step in context.get_cfg_cached_steps()
        fn, bn = self.setting("fn"), self.setting("bn")
        self.stats.count_step(step, [cached and fn <= b < self._num_blocks - bn for b in range(self._num_blocks)])

    def reset_stats(self) -> None:
        self.stats = ReuseStats()

    def release(self) -> None:
        """Nothing held between rounds: cache-dit's buffers are refreshed at each call."""


class _Enabled:
    """cache-dit on a model; leaving it disables cache-dit and deletes what it left on modules."""

    def __init__(self, hook: CacheDitHook, transformer: torch.nn.Module, family: Family) -> None:
        import cache_dit

        self.hook, self.transformer = hook, transformer
        self.before = {id(m): "forward" in m.__dict__ for m in transformer.modules()}
        cache, calibrator = hook.config(20, family.guidance == "cfg-separate")
        cache_dit.enable_cache(transformer, cache_config=cache, **({"calibrator_config": calibrator} if calibrator is not None else {}))

    def remove(self) -> None:
        import cache_dit

        cache_dit.disable_cache(self.transformer)
        for module in self.transformer.modules():
            if not self.before.get(id(module), False):
                module.__dict__.pop("forward", None)
        self.hook._transformer = None

    def __enter__(self) -> "_Enabled":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
