"""diffusers' own cache hooks as cases: `diffusers-hook: {name: ..., ...its config}`.

A case with this key runs no dqar-bench strategy: it applies one of diffusers' hooks
(`diffusers.hooks.apply_*`) to the transformer for the duration of the case, and the
harness supplies what a diffusers pipeline would: the current timestep for the hooks that
gate on it (PAB, FasterCache: `current_timestep_callback`), a cache context around every
model call (`name` "cond", or "cond" / "uncond" with two-pass guidance, plus step index
and timestep), and a reset of the hooks' state before each sampling call (what
`CacheMixin._reset_stateful_cache` does). `DiTTransformer2DModel` and
`PixArtTransformer2DModel` lack `CacheMixin`, so the hooks are applied with the
`apply_*` functions, never `enable_cache`, on every family alike.

Removal leaves the model as it was: every hook is removed from its registry, and the
`forward` and `_diffusers_hook` attributes diffusers leaves on modules are deleted again
(its own `remove_hook` puts a bound `forward` back into the instance, which would make
the next dqar-bench installation refuse the module). A test checks bit-identical outputs
after removal on every family a hook runs on.

Reuse is counted like a strategy's: each module a hook wraps is watched for calls and for
calls that reached its original forward; a block reuses at a step when a hooked module in
it was called more often than it computed (with two-pass guidance, diffusers' PAB and
FasterCache count calls, not steps, so one of a step's two calls may reuse). `stats` is a `ReuseStats`, so a hook case's record has
the same reuse fields and reuse map as any other.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from dqar_bench.core.context import StepContext
from dqar_bench.model.families import Family, family_of
from dqar_bench.strategy.strategy import ReuseStats

KEY = "diffusers-hook"


@dataclass(frozen=True)
class HookKind:
    """One diffusers hook: its config class and apply function, and where it cannot run."""

    name: str
    config: str
    apply: str
    timestep_callback: bool = False
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """Config values the harness sets when a suite does not: PAB's and FasterCache's spatial
    skip range 2 (diffusers warns and picks 2 itself), TaylorSeer's factors in float32
    (diffusers: bfloat16, which would round a float32 run's forecast), MagCache's ratios
    FLUX.1-dev's (diffusers has no default and refuses to run). MagCache's
    `num_inference_steps` defaults to the suite's steps (`check`)."""
    refusals: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Family name -> the one-line reason diffusers' hook cannot run there."""


FASTER_CACHE_CFG = {
    "cfg-batch": (
        "FasterCache's CFG cache takes the second half of a batched CFG call as the conditional one (diffusers' pipelines "
        "put the unconditional half first, the harness the conditional half)"
    ),
    "cfg-separate": (
        "this family runs CFG as two passes: diffusers' FasterCache keeps one attention history per module across "
        "model calls, so it would extrapolate each branch from the other's outputs, and its CFG cache needs CFG in one batch"
    ),
    "embedded": "this family has no CFG pass (a guidance embedding)",
}
"""Why FasterCache's CFG cache cannot run on a family's guidance mode. Its attention cache runs
with `is_guidance_distilled: true` where one model call makes a step (CFG in one batch, or a
guidance embedding); with two passes per step nothing of the hook runs right."""

UNREGISTERED = {"sana": (
    "diffusers' TransformerBlockRegistry has no entry for SanaTransformerBlock, and its block-level hooks read a block's "
    "outputs through that registry"
)}
"""Families whose blocks diffusers' FirstBlockCache and MagCache hooks cannot read."""

HOOKS: dict[str, HookKind] = {
    kind.name: kind
    for kind in (
        HookKind(
            "first-block-cache", "FirstBlockCacheConfig", "apply_first_block_cache",
            refusals={**UNREGISTERED, "sd3": (
                "SD3's last joint block returns no text stream (context_pre_only), and diffusers' FBCBlockHook subtracts "
                "that None from the head block's text output at the tail"
            )},
        ),
        HookKind(
            "pyramid-attention-broadcast", "PyramidAttentionBroadcastConfig", "apply_pyramid_attention_broadcast",
            timestep_callback=True, defaults={"spatial_attention_block_skip_range": 2},
        ),
        HookKind(
            "taylorseer", "TaylorSeerCacheConfig", "apply_taylorseer_cache",
            defaults={"taylor_factors_dtype": "float32"},
        ),
        HookKind(
            "faster-cache", "FasterCacheConfig", "apply_faster_cache",
            timestep_callback=True, defaults={"spatial_attention_block_skip_range": 2},
        ),
        HookKind(
            "mag-cache", "MagCacheConfig", "apply_mag_cache",
            defaults={"mag_ratios": "flux"}, refusals=UNREGISTERED,
        ),
    )
}

FASTER_CACHE_FORMATS = ("BCFHW", "BFCHW", "BCHW")

CALLBACK_FIELDS = ("current_timestep_callback", "attention_weight_callback", "low_frequency_weight_callback", "high_frequency_weight_callback")
"""Config fields that take Python callables: the harness sets the timestep one; the others keep diffusers' defaults."""

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class HookConfigError(ValueError):
    """A hook spec a suite cannot use; the message names the field (the suite adds the file and case)."""


def _config_class(kind: HookKind) -> type:
    import diffusers.hooks as hooks

    return getattr(hooks, kind.config)


def _fields(kind: HookKind) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(_config_class(kind)) if not f.name.startswith("_")}


def check(raw: Any, steps: int) -> dict[str, Any]:
    """A suite's `diffusers-hook` value, checked by building the diffusers config: {name, config}.

    Raises `HookConfigError` naming the field and the fix. Whether the hook runs on the
    model's family is not a validation error (a suite may list models of several
    families): the runner records the case as unsupported there, with `refusal`'s reason.
    """
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise HookConfigError(f"field '{KEY}' must be a mapping with 'name' (one of {', '.join(HOOKS)}) and the hook's config")
    name = raw["name"]
    if name not in HOOKS:
        import difflib

        close = difflib.get_close_matches(name, list(HOOKS), n=1, cutoff=0.5)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise HookConfigError(f"field '{KEY}.name': unknown diffusers hook '{name}'{hint}; hooks: {', '.join(HOOKS)}")
    kind = HOOKS[name]
    config = {k: v for k, v in raw.items() if k != "name"}
    fields = _fields(kind)
    for key in config:
        if key in CALLBACK_FIELDS:
            who = "the harness sets it from the sampler" if key == "current_timestep_callback" else "diffusers' default is used"
            raise HookConfigError(
                f"field '{KEY}.{key}': a Python callable, which a suite cannot give ({who}); remove it"
            )
        if key not in fields:
            known = ", ".join(f for f in fields if f not in CALLBACK_FIELDS)
            raise HookConfigError(f"field '{KEY}.{key}': {kind.config} has no field '{key}' (fields: {known})")
    if name == "mag-cache":
        config.setdefault("num_inference_steps", steps)
    if name == "faster-cache" and config.get("tensor_format", "BCFHW") not in FASTER_CACHE_FORMATS:
        raise HookConfigError(
            f"field '{KEY}.tensor_format': {config['tensor_format']!r} is not one of {', '.join(FASTER_CACHE_FORMATS)} "
            "(apply_faster_cache checks it only when applied)"
        )
    try:
        build_config(name, config, lambda: 0)
    except HookConfigError:
        raise
    except (TypeError, ValueError) as exc:
        first = " ".join(str(exc).split())
        raise HookConfigError(f"field '{KEY}' ({name}): diffusers refuses the config: {first}") from None
    return {"name": name, "config": config}


def build_config(name: str, given: Mapping[str, Any], timestep: Callable[[], int]) -> Any:
    """The diffusers config object for a checked spec (a fresh one per installation: diffusers fills it in)."""
    kind = HOOKS[name]
    cls = _config_class(kind)
    fields = _fields(kind)
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for key, value in {**kind.defaults, **given}.items():
        if key not in fields:
            continue
        values[key] = _convert(key, value, hints.get(key))
    if kind.timestep_callback:
        values["current_timestep_callback"] = timestep
    return cls(**values)


def _convert(key: str, value: Any, hint: Any) -> Any:
    """YAML values to what the config's field takes: tuples, dtypes, diffusers' named ratio tables."""
    if key == "mag_ratios" and isinstance(value, str):
        from diffusers.hooks import mag_cache

        table = getattr(mag_cache, f"{value.upper()}_MAG_RATIOS", None)
        if table is None:
            raise HookConfigError(f"field '{KEY}.mag_ratios': diffusers publishes no '{value}' ratios (known: flux); give a list of numbers")
        return table.clone()
    if "dtype" in key and isinstance(value, str):
        if value not in DTYPES:
            raise HookConfigError(f"field '{KEY}.{key}': unknown dtype '{value}' (one of {', '.join(DTYPES)})")
        return DTYPES[value]
    origin = typing.get_origin(hint)
    if isinstance(value, list) and (origin is tuple or "tuple" in str(hint)):
        return tuple(value)
    return value


def refusal(name: str, family: Family, config: Mapping[str, Any] | None = None) -> str | None:
    """Why diffusers' hook `name` with `config` cannot run on `family` (one line), or None."""
    config = config or {}
    if name in HOOKS and family.name in HOOKS[name].refusals:
        return HOOKS[name].refusals[family.name]
    if name == "faster-cache" and family.guidance == "cfg-separate":
        # `is_guidance_distilled` is no way out here: the block hook keeps one history per attention module
        # across model calls, so with two calls per step it extrapolates each branch from the other's outputs
        return f"{FASTER_CACHE_CFG['cfg-separate']}; use cache 'faster-attention' (with 'cfg_every' for the CFG cache) instead"
    if name == "faster-cache" and not config.get("is_guidance_distilled"):
        if family.guidance == "embedded":
            return f"{FASTER_CACHE_CFG['embedded']}; set `is_guidance_distilled: true` (true of this family) to run its attention cache"
        return f"{FASTER_CACHE_CFG[family.guidance]}; set `is_guidance_distilled: true` to run only its attention cache"
    if name == "taylorseer" and not config.get("cache_identifiers") and not config.get("skip_predict_identifiers"):
        import re

        patterns = taylorseer_patterns()
        names = [f"{blocks.attr}.0.{attn}" for blocks in family.blocks for attn in family.attention]
        if not any(re.fullmatch(p, n) for p in patterns for n in names):
            return (
                f"TaylorSeer's default patterns ({', '.join(patterns)}, re.fullmatch) match none of "
                f"this family's attention modules ({', '.join(names)}); set `cache_identifiers`"
            )
    return None


@functools.cache
def taylorseer_patterns() -> tuple[str, ...]:
    """diffusers' default TaylorSeer attention patterns (`_TRANSFORMER_BLOCK_IDENTIFIERS`).

    Read from diffusers' source where they are tuples of strings (joined with +), because
    importing `diffusers.hooks` costs about 2 s of CPU and `dqar-bench models` (which names
    this refusal per family) must start in under 3 s; anything else falls back to the import.
    """
    import ast
    import importlib.util
    from pathlib import Path

    def value(node: ast.expr, known: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return value(node.left, known) + value(node.right, known)
        if isinstance(node, ast.Name):
            return known[node.id]
        found = ast.literal_eval(node)
        if not (isinstance(found, tuple) and all(isinstance(p, str) for p in found)):
            raise ValueError("not a tuple of strings")
        return found

    try:
        spec = importlib.util.find_spec("diffusers")  # a top-level spec: finds the folder, imports nothing
        folder = (spec.submodule_search_locations or [])[0] if spec else None
        tree = ast.parse(Path(folder, "hooks", "taylorseer_cache.py").read_text(encoding="utf-8"))  # type: ignore[arg-type]
        known: dict[str, tuple[str, ...]] = {}
        for node in tree.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                try:
                    known[node.targets[0].id] = value(node.value, known)
                except (KeyError, ValueError, TypeError, SyntaxError):
                    continue
        return known["_TRANSFORMER_BLOCK_IDENTIFIERS"]
    except (OSError, IndexError, KeyError, SyntaxError, TypeError, ValueError):
        from diffusers.hooks.taylorseer_cache import _TRANSFORMER_BLOCK_IDENTIFIERS

        return tuple(_TRANSFORMER_BLOCK_IDENTIFIERS)


class DiffusersHook:
    """One case's diffusers hook: applied and removed around the case, driven as the sampler's observer."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.name: str = spec["name"]
        self.given: dict[str, Any] = dict(spec.get("config") or {})
        self.stats = ReuseStats()
        self.timestep = 0
        self._transformer: torch.nn.Module | None = None
        self._watch: list[tuple[Any, ...]] = []
        self._called: dict[int, int] = {}
        self._computed: dict[int, int] = {}
        self._block_of: dict[int, int] = {}
        self._num_blocks = 0
        self._branch_names = ("cond",)
        self._ctx: StepContext | None = None

    def refusal(self, family: Family, mode: str = "eager") -> str | None:
        """Why this hook cannot run on `family` in execution mode `mode` (one line), or None."""
        if mode != "eager":
            return "diffusers' hooks keep per-call Python state (counters, cache contexts) that a compiled or captured forward does not update"
        return refusal(self.name, family, self.given)

    # -- installation ------------------------------------------------------------------------

    def install(self, transformer: torch.nn.Module) -> "_Installed":
        """Apply the hook to `transformer`; the returned context manager removes it exactly."""
        import diffusers.hooks as hooks

        before = {id(m): (("forward" in m.__dict__), ("_diffusers_hook" in m.__dict__)) for m in transformer.modules()}
        config = build_config(self.name, self.given, lambda: self.timestep)
        installed = _Installed(self, transformer, before)
        try:
            getattr(hooks, HOOKS[self.name].apply)(transformer, config)
            self._transformer = transformer
            self._watch_hooked(transformer)
        except BaseException:
            installed.remove()
            raise
        return installed

    def _watch_hooked(self, transformer: torch.nn.Module) -> None:
        """Count, per module a hook wraps, its calls and the calls that reached its original forward."""
        family = family_of(transformer)
        blocks = [b for _, listed in family.block_lists(transformer) for b in listed]
        self._num_blocks = len(blocks)
        self._block_of = {}
        for index, block in enumerate(blocks):
            for module in block.modules():
                self._block_of[id(module)] = index
        self._watch = []
        for module in transformer.modules():
            registry = module.__dict__.get("_diffusers_hook")
            if registry is None or not registry._fn_refs or id(module) not in self._block_of:
                continue
            ref = registry._fn_refs[0]
            if ref.original_forward is None:
                continue
            key = id(module)
            original, outer = ref.original_forward, module.forward
            ref.original_forward = _marking(original, self._computed, key)
            module.forward = functools.update_wrapper(_marking(outer, self._called, key), outer)
            self._watch.append((key, module, ref, original, outer))

    def _unwatch(self) -> None:
        for _, module, ref, original, outer in self._watch:
            ref.original_forward = original
            module.forward = outer
        self._watch = []

    # -- the sampler's observer ------------------------------------------------------------

    def begin(self, num_steps: int, num_blocks: int, device: torch.device, timesteps: Any = None, branches: int = 1, noise: Any = None) -> None:
        """A new sampling call: the hooks' state reset, as a pipeline does before its loop."""
        from diffusers.hooks import HookRegistry

        assert self._transformer is not None, "install() before sampling"
        HookRegistry.check_if_exists_or_initialize(self._transformer).reset_stateful_hooks(recurse=True)
        self._branch_names = ("cond", "uncond") if branches == 2 else ("cond",)
        self.stats.begin_call(num_steps, self._num_blocks or num_blocks)

    def before_step(self, ctx: StepContext) -> None:
        self._ctx = ctx
        self.timestep = ctx.timestep
        self._called.clear()
        self._computed.clear()
        self._context(0)

    def branch(self, index: int) -> None:
        self._context(index)

    def _context(self, index: int) -> None:
        from diffusers.hooks.hooks import CacheContext, _set_cache_context

        ctx = self._ctx
        assert ctx is not None and self._transformer is not None
        _set_cache_context(self._transformer, CacheContext(
            self._branch_names[index], step_index=ctx.step, num_inference_steps=ctx.num_steps, timestep=ctx.timestep, sigma=ctx.sigma,
        ))

    def after_step(self) -> None:
        assert self._ctx is not None
        reused = [False] * self._num_blocks
        for key, *_ in self._watch:
            if self._called.get(key, 0) > self._computed.get(key, 0):
                reused[self._block_of[key]] = True
        self.stats.count_step(self._ctx.step, reused)

    def reset_stats(self) -> None:
        self.stats = ReuseStats()

    def release(self) -> None:
        """Nothing held between rounds: the hooks' state goes with their removal."""


def _marking(fn: Callable[..., Any], counts: dict[int, int], key: int) -> Callable[..., Any]:
    def marked(*args: Any, **kwargs: Any) -> Any:
        counts[key] = counts.get(key, 0) + 1
        return fn(*args, **kwargs)

    return marked


class _Installed:
    """A diffusers hook on a model; leaving it removes every hook and attribute diffusers added."""

    def __init__(self, hook: DiffusersHook, transformer: torch.nn.Module, before: dict[int, tuple[bool, bool]]) -> None:
        self.hook, self.transformer, self.before = hook, transformer, before

    def remove(self) -> None:
        from diffusers.hooks.hooks import _set_cache_context

        self.hook._unwatch()
        modules = list(self.transformer.modules())
        if "_diffusers_hook" in self.transformer.__dict__:
            _set_cache_context(self.transformer, None)
        for module in modules:
            registry = module.__dict__.get("_diffusers_hook")
            if registry is None:
                continue
            for name in list(registry._hook_order):
                registry.remove_hook(name, recurse=False)
        for module in modules:
            had_forward, had_registry = self.before.get(id(module), (False, False))
            if not had_forward:
                module.__dict__.pop("forward", None)
            if not had_registry:
                module.__dict__.pop("_diffusers_hook", None)
        self.hook._transformer = None

    def __enter__(self) -> "_Installed":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def installed(hook: DiffusersHook | None, transformer: torch.nn.Module) -> Any:
    """`hook.install(transformer)`, or a context that does nothing when there is no hook."""
    import contextlib

    return hook.install(transformer) if hook is not None else contextlib.nullcontext()
