"""The four kinds of strategy parts, and how their parameters are declared and checked.

A part is a small class: a `PLUGIN_NAME`, a docstring whose first line describes it, and
its parameters as dataclass fields with defaults. The registry never runs a part to learn
about it; it reads the class. Suites are validated by building every part with the
suite's parameters, so a bad value is caught before anything is measured.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol, Sequence

import torch

from dqar_bench.core.context import StepContext

KINDS: tuple[str, ...] = ("scheduler", "gate", "cache", "quantizer")


@dataclass(frozen=True)
class Param:
    """One declared parameter of a part: what `dqar-bench plugins` shows and suites may set."""

    name: str
    type: Any
    default: Any
    help: str = ""
    range: tuple[float, float] | None = None
    """(low, high) worth searching (`dqar-bench tune`), from `metadata={"range": ...}`; None: not tuned."""

    @property
    def type_name(self) -> str:
        return _type_name(self.type)


class Part:
    """Base of every strategy part. Subclasses are dataclasses; their fields are parameters."""

    PLUGIN_NAME: ClassVar[str] = ""
    KIND: ClassVar[str] = ""
    UNSUPPORTED: ClassVar[dict[str, str]] = {}
    """Execution modes (`dqar_bench.strategy.execution.MODES`) this part cannot run in, each with a
    one-line reason; a case using it in such a mode is recorded as unsupported, not run."""

    def refusal_on(self, family: Any) -> str | None:
        """Why this part, with its parameters, cannot run on `family` (one line), or None.

        For what the class alone cannot know: a default fitted to another family's checkpoint
        (MagCache's ratios, TeaCache's rescale polynomial). A case refused here is recorded as
        unsupported on that family, with this reason."""
        return None

    @classmethod
    def describe(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        if not doc or (dataclasses.is_dataclass(cls) and doc.startswith(cls.__name__ + "(")):
            return ""
        return doc.splitlines()[0].strip()

    @classmethod
    def parameters(cls) -> list[Param]:
        if not dataclasses.is_dataclass(cls):
            return []
        hints = typing.get_type_hints(cls)
        params = []
        for f in dataclasses.fields(cls):
            if not f.init or f.name.startswith("_"):
                continue
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                default = f.default_factory()  # type: ignore[misc]
            else:
                default = dataclasses.MISSING
            params.append(Param(f.name, hints.get(f.name, Any), default, f.metadata.get("help", ""), _range(cls, f)))
        return params

    def params(self) -> dict[str, Any]:
        """The values this instance was built with, as plain data for records."""
        return {p.name: getattr(self, p.name) for p in self.parameters()}


class Scheduler(Part):
    """Says where reuse may happen at all: a static, data-independent steps x blocks mask.

    `timesteps` holds the sampler's timesteps of the current call when the strategy asks
    for the mask (None when a mask is asked for outside a sampling call), for schedulers
    that place reuse by noise level rather than by step index.
    """

    KIND = "scheduler"
    timesteps: list[int] | None = None

    def mask(self, num_steps: int, num_blocks: int) -> torch.Tensor:
        """A bool tensor [num_steps, num_blocks]; True where block b may reuse at step t."""
        raise NotImplementedError


class Gate(Part):
    """Says whether an eligible block reuses now, from cheap signals.

    `SIGNALS` names the signals the gate reads (see `dqar_bench.strategy.signals`); the harness
    measures only those, so a gate that needs none costs nothing to decide.
    """

    KIND = "gate"
    SIGNALS: ClassVar[frozenset[str]] = frozenset()
    DECIDES_AFTER_BLOCK: ClassVar[int | None] = None
    """None: decide at the start of the step, for every block at once (the rule). k: decide
    once block k has computed in the current forward, from the signals it measured there
    (`residual_change`); blocks 0..k always compute. -1: decide at block 0's entry, before
    any block runs, from block 0's timestep-modulated input (`modulation_change`, TeaCache),
    which a family names (`Family.modulation`; a family without it refuses the gate).
    One host sync per step either way."""
    THRESHOLD: ClassVar[str | None] = None
    """The parameter `dqar-bench calibrate` searches for a target reuse (`{calibrated: 0.5}`);
    None: the gate has no single threshold. Reuse must move one way with it, and
    `THRESHOLD_RAISES_REUSE` says which."""
    THRESHOLD_RAISES_REUSE: ClassVar[bool] = True

    def bind_family(self, family: Any, config: Any = None) -> None:
        """Called when the strategy is installed on a model of `family` (`dqar_bench.model.families.Family`)
        whose config is `config` (a mapping, or None), for a gate whose defaults are per family or
        per checkpoint (TeaCache's rescale coefficients)."""

    def modulation(self, family: Any, config: Any = None) -> Any:
        """The block-0 modulation a gate that decides at block 0's entry (`DECIDES_AFTER_BLOCK = -1`)
        reads on `family`: the family's default, with the fit for `config` (`Family.modulation_for`);
        or why there is none (one line)."""
        return family.modulation_for(None, config)

    def reset(self, num_steps: int, num_blocks: int) -> None:
        """Called at the start of every sampling call; state lives here and is reset here."""

    def decide(self, ctx: StepContext, eligible: list[bool]) -> list[bool]:
        """Per block, reuse at this step? One answer per entry of `eligible`; the harness
        keeps an answer only where the block is eligible (scheduler mask and cache)."""
        raise NotImplementedError

    def decide_branches(self, ctx: StepContext, eligible: list[bool], branches: int) -> list[list[bool]]:
        """Per CFG branch (two-pass guidance: conditional, then unconditional), reuse at this step?

        The rule is one decision for every branch (`decide`, asked once); a gate whose
        reference keeps state per branch (MagCache on Wan) answers each on its own."""
        return [self.decide(ctx, eligible)] * branches

    def static_pattern(self, num_steps: int, num_blocks: int) -> torch.Tensor | None:
        """The gate's answers when they depend on nothing but the step and the block.

        A bool tensor [num_steps, num_blocks], True where the gate would reuse the block
        if it were eligible; None (the default) when the answers read signals or anything
        else measured during the call. `dqar-bench plan` derives a case's exact reuse
        pattern from it without running a model, and `dqar_bench.testing` checks that
        `decide` agrees with it. Subclass `StaticGate` to write the pattern only once.
        """
        return None

    def window(self, snrs: Sequence[float], num_blocks: int) -> torch.Tensor | None:
        """Where the gate can reuse at all, known before the call: a bool [steps, blocks] mask.

        False where `decide` answers no whatever the signals measured during the call read:
        its warmup steps, a window on the schedule's SNR (`snrs[step]`, what it reads at that
        step). The strategy then neither probes, stores, gathers signals nor asks the gate
        there, which is most of what deciding costs on a small model; so it must never be
        False where `decide` could say yes (`dqar_bench.testing` checks it). None (the
        default): anywhere the scheduler allows.
        """
        return None


class StaticGate(Gate):
    """A gate whose answer depends only on the step and the block: `pattern` says it once.

    `decide` reads the pattern (made at `reset`, or again whenever the number of steps or
    blocks changes), so what `dqar-bench plan` predicts and what a run does are one code path.
    """

    def pattern(self, num_steps: int, num_blocks: int) -> torch.Tensor:
        """A bool tensor [num_steps, num_blocks]: True where the gate reuses an eligible block."""
        raise NotImplementedError

    def static_pattern(self, num_steps: int, num_blocks: int) -> torch.Tensor:
        pattern = self.pattern(num_steps, num_blocks)
        if tuple(pattern.shape) != (num_steps, num_blocks):
            raise ValueError(
                f"gate '{self.PLUGIN_NAME}' gave a pattern of shape {tuple(pattern.shape)}, expected ({num_steps}, {num_blocks})"
            )
        return pattern.bool()

    def reset(self, num_steps: int, num_blocks: int) -> None:
        self._rows = (num_steps, num_blocks, self.static_pattern(num_steps, num_blocks).tolist())

    def decide(self, ctx: StepContext, eligible: list[bool]) -> list[bool]:
        rows = getattr(self, "_rows", None)
        if rows is None or rows[:2] != (ctx.num_steps, len(eligible)):
            self.reset(ctx.num_steps, len(eligible))
            rows = self._rows
        return [bool(r) and e for r, e in zip(rows[2][ctx.step], eligible)]


class Packed(Protocol):
    """A stored tensor: what a quantizer gives back."""

    @property
    def nbytes(self) -> int: ...

    def unpack(self) -> torch.Tensor: ...


class Quantizer(Part):
    """Says how a cached tensor is stored (and so how many bytes the cache holds)."""

    KIND = "quantizer"

    def begin(self, device: torch.device) -> None:
        """Called at the start of every sampling call, outside the forward (device buffers go here)."""

    def nonfinite(self) -> int:
        """How many NaN or inf values this quantizer has been handed so far (a host read:
        asked outside timed calls only). A quantizer that keeps them as they are says 0."""
        return 0

    def pack(self, x: torch.Tensor) -> Packed:
        raise NotImplementedError


class Cache(Part):
    """Says what a block stores when it computes and what it gives back when it reuses.

    One instance serves every block of a model, keyed by block index. `TARGET` says where
    the adapter hooks it: `"attention"` wraps each block's self-attention
    module; `"attention+mlp"` its self-attention and its feed-forward (the strategy keeps one
    instance of the cache per site, so `store`/`reuse` stay keyed by block);
    `"cross-attention"` its cross-attention (only families that have one host it); `"block"` the
    whole block, and what is stored is the block's residual (output minus input), which a
    reuse adds to the block's current input. `NEEDS_QKV` asks the adapter to compute
    attention itself (instead of the model's own processor) so that Q, K and V are handed
    to `store`.

    Under CUDA graphs the forward's Python does not run on a replay, so a graph-safe cache
    keeps its bookkeeping (what it holds, step counters) in `begin_step`, does only tensor
    work in `store`/`reuse`, writes into the same tensors at every store (`pinned`, set by
    the strategy) and says in `graph_key` what else changes the operations it records.
    `dqar_bench.strategy.storage.SlotCache` is such a cache to build on. A cache that is not
    graph-safe is unsupported there, which is the default below.

    What `store` gets (and `reuse` must give back) is what the hooked module returns: a
    tensor, or on families with joint image-text modules a tuple of them (a joint attention's
    image and text outputs; a two-stream block's residuals, image first; None for a stream a
    block does not return). `dqar_bench.strategy.storage.pack`/`unpack` handle both through the
    quantizer; a cache that keeps Q/K/V (`NEEDS_QKV`) only ever sees tensors, since only
    families whose attention the harness computes itself can host it.
    """

    KIND = "cache"
    TARGET: ClassVar[Literal["attention", "attention+mlp", "cross-attention", "block"]] = "attention"
    NEEDS_QKV: ClassVar[bool] = False
    UNSUPPORTED: ClassVar[dict[str, str]] = {
        "cudagraph": "the cache keeps new tensors at every store (not graph-safe; see dqar_bench.strategy.storage.SlotCache)",
    }

    quantizer: Quantizer
    pinned: bool = False

    def begin(self, num_blocks: int, device: torch.device) -> None:
        """Called at the start of every sampling call, after `clear` (device buffers go here)."""

    def begin_step(self, step: int, computes: list[bool]) -> None:
        """Called once per step when its decision is known: per block, does it compute (and
        store) at this step? That is before the forward, or, with a gate that decides
        mid-forward, at its decision (the blocks before it have computed and stored)."""

    def graph_key(self) -> tuple:
        """What, besides the reuse pattern, changes the operations this cache records at this step."""
        return ()

    def clear(self) -> None:
        """Drop everything held; called at the start of every sampling call."""
        raise NotImplementedError

    def holds(self, block: int) -> bool:
        """Has this block something to give back?"""
        raise NotImplementedError

    def store(self, block: int, out: torch.Tensor, qkv: tuple[torch.Tensor, ...] | None) -> None:
        raise NotImplementedError

    def reuse(self, block: int, attn: torch.nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
        """The block's attention output at this step, from what it holds."""
        raise NotImplementedError

    def nbytes(self) -> int:
        """Bytes really held now (codes plus scales for a quantized cache)."""
        raise NotImplementedError


BASES: dict[str, type[Part]] = {
    "scheduler": Scheduler,
    "gate": Gate,
    "cache": Cache,
    "quantizer": Quantizer,
}


def build_part(cls: type[Part], values: dict[str, Any]) -> Part:
    """Build a part from suite values, checking names and types.

    Raises `ValueError` with a message naming the parameter; the caller adds the file and
    case. A part may check ranges in `__post_init__` by raising `ValueError`.
    """
    params = {p.name: p for p in cls.parameters()}
    kwargs = {}
    for key, value in values.items():
        if key not in params:
            known = ", ".join(params) or "none"
            raise ValueError(f"unknown parameter '{key}' (parameters of '{cls.PLUGIN_NAME}': {known})")
        kwargs[key] = _coerce(key, value, params[key].type)
    missing = [n for n, p in params.items() if p.default is dataclasses.MISSING and n not in kwargs]
    if missing:
        raise ValueError(f"missing parameter '{missing[0]}'")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ValueError(str(exc)) from None


def _range(cls: type, f: dataclasses.Field) -> tuple[float, float] | None:
    declared = f.metadata.get("range")
    if declared is None:
        return None
    low, high = declared
    if not low < high:
        raise TypeError(f"{cls.__name__}.{f.name}: metadata range {declared!r} must be (low, high) with low < high")
    return (low, high)


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    """Check a YAML value against a type hint; ints are accepted where floats are asked."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _coerce(name, value, option)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(f"parameter '{name}' must be {_type_name(annotation)}, got {value!r}")
    if origin is Literal:
        if value in args:
            return value
        choices = ", ".join(repr(a) for a in args)
        raise ValueError(f"parameter '{name}' must be one of {choices}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"parameter '{name}' must be a list, got {value!r}")
        item = args[0] if args else Any
        items = [_coerce(name, v, item) for v in value]
        return items if origin is list else tuple(items)
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise ValueError(f"parameter '{name}' must be a mapping ({_type_name(annotation)}), got {value!r}")
        key_type, item_type = args if len(args) == 2 else (Any, Any)
        return {_coerce(name, k, key_type): _coerce(name, v, item_type) for k, v in value.items()}
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if math.isnan(value):
                raise ValueError(f"parameter '{name}' must be a number, got NaN")
            return float(value)
    elif annotation is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise ValueError(f"parameter '{name}' must be {_type_name(annotation)}, got {value!r}")


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin in (list, tuple):
        return f"list[{_type_name(args[0]) if args else 'any'}]"
    if origin is dict or annotation is dict:
        return f"dict[{_type_name(args[0])}, {_type_name(args[1])}]" if len(args) == 2 else "dict"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))
