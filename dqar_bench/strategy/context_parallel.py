"""Context-parallel cases: one sampling call split over N ranks by diffusers, decisions kept in step.

`parallel: {ulysses: N}` or `{ring: N}` on a case runs its transformer through diffusers'
own context parallelism (`ModelMixin.enable_parallelism(ContextParallelConfig(...))`, the
model class's `_cp_plan`): the sequence is cut into N equal slices at the transformer's
input, each rank runs every block on its slice, attention sees the whole sequence through
Ulysses' all-to-all over heads or ring attention's rotation of keys and values, and the
output is gathered, so every rank's latents are the whole, identical batch.

A strategy then sees one rank's slice inside the blocks: its entropy probe a slice of the
queries and keys, FirstBlockCache's residual a slice of block 0's output. `ShardedSequence`
is the strategy's `SignalScope` for that: the probe's query rows are the ones one process
would sample from the whole sequence (each held by one rank, summed over ranks), its
entropy is reduced from softmax statistics over the keys every rank holds, the residual
change from sums over ranks, so every rank's gate reads what one process would read (up to
the order of float additions); and every rank runs rank 0's decisions (`main_decides`), so
no difference in the last bit can ever make the ranks run different programs. The SNR and
latent norm need nothing: they are read from the latents, which are whole on every rank.

`refusal` says, in one line, why a case cannot run so (a model class without `_cp_plan`,
a world of another size, ring attention on the CPU, a compiled mode); the runner records
such a case as unsupported. `context_parallel` switches it on around a case's installation
and off again, leaving the model as it was for the next case.

On a CPU with gloo, Ulysses runs (diffusers' native attention backend); ring does not: it
needs a backend that returns the log-sum-exp (flash, cuDNN, sage), which exist on CUDA only.
diffusers 0.42.1 also divides by `torch.accelerator.device_count()` when it places the mesh,
which is 0 on a machine without an accelerator; `context_parallel` counts the CPU as one
device for that call only.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from dqar_bench.core.errors import DqarError
from dqar_bench.core.world import World
from dqar_bench.measure.flops import FlopCount
from dqar_bench.strategy import signals
from dqar_bench.strategy.rank_signals import key_sharded_entropy, main_decides
from dqar_bench.strategy.signal_scope import LOCAL, SignalScope

MODES = ("ulysses", "ring")

LAYOUTS: dict[str, tuple[tuple[str, ...], ...]] = {
    "flux": (("image",), ("text", "image")),
    "wan": (("image",),),
}
"""The sequences a family's probed self-attentions see, as the streams they concatenate: FLUX's
dual-stream blocks attend over the image tokens (the probe's view), its single-stream blocks
over text then image; Wan's self-attention over the video tokens. Under context parallelism
each stream is cut into equal slices, and a rank's joint sequence is its slice of each."""

RING_BACKEND = "_native_cudnn"
"""The attention backend ring cases use where the model has none set: diffusers' native one
returns no log-sum-exp, which ring attention needs to merge its partial results."""


@dataclass(frozen=True)
class Parallel:
    """A case's context parallelism: 'ulysses' or 'ring' over `degree` ranks."""

    mode: str
    degree: int

    def label(self) -> str:
        return f"{self.mode}={self.degree}"

    def as_dict(self) -> dict[str, int]:
        return {self.mode: self.degree}


def parse_parallel(raw: Any, heads: int | None = None) -> Parallel | None:
    """`{ulysses: N}` or `{ring: N}` (None: absent; N = 1: one rank, no parallelism); a ValueError says what is wrong.

    `heads` (the model's attention heads, where its config is known) must split evenly for Ulysses.
    """
    if raw is None:
        return None
    if not isinstance(raw, dict) or len(raw) != 1:
        raise ValueError(f"must be a mapping of one key, {{ulysses: N}} or {{ring: N}}, got {raw!r}")
    (mode, degree), = raw.items()
    if mode not in MODES:
        raise ValueError(f"unknown mode '{mode}' (modes: {', '.join(MODES)}); write {{ulysses: N}} or {{ring: N}}")
    if not isinstance(degree, int) or isinstance(degree, bool) or degree < 1:
        raise ValueError(f"'{mode}' must be a whole number of ranks >= 1, got {degree!r}")
    if mode == "ulysses" and heads is not None and heads % degree:
        raise ValueError(f"Ulysses splits the {heads} attention heads over {degree} ranks, which does not divide them; use a divisor of {heads} or ring")
    return None if degree == 1 else Parallel(mode, degree)


def refusal(parallel: Parallel | None, transformer: torch.nn.Module, family: str, world: World, execution: str = "eager", dtype: torch.dtype | None = None) -> str | None:
    """Why this case cannot run context-parallel here (one line), or None (also for no parallelism)."""
    if parallel is None:
        return None
    name = type(transformer).__name__
    if getattr(transformer, "_cp_plan", None) is None:
        return f"{name} has no context-parallel plan (`_cp_plan`) in diffusers; context parallelism needs one (FLUX, Wan, LTX, Qwen-Image have it)"
    if family not in LAYOUTS:
        return f"the entropy probe's token layout under context parallelism is known for {', '.join(LAYOUTS)} only, not family '{family}'"
    heads = getattr(transformer.config, "num_attention_heads", None)
    if parallel.mode == "ulysses" and isinstance(heads, int) and heads % parallel.degree:
        return f"Ulysses splits the {heads} attention heads of {name} over {parallel.degree} ranks, which does not divide them; use ring"
    if world.world_size != parallel.degree:
        how = f"torchrun --nproc-per-node {parallel.degree} (or --nproc {parallel.degree})"
        return f"it needs a run of {parallel.degree} ranks, this one has {world.world_size}; start it with {how}"
    if execution != "eager":
        return f"context-parallel cases run eager only ({execution} with diffusers' collectives and the strategy's reductions inside the forward is not built)"
    if parallel.mode == "ring" and world.device.type != "cuda":
        return (
            "ring attention needs an attention backend that returns the log-sum-exp (flash, cuDNN, sage: CUDA only); "
            "diffusers' native backend on the CPU refuses it; use ulysses here"
        )
    if parallel.mode == "ring" and dtype is not None and dtype == torch.float32 and _backend(transformer) is None:
        return f"ring attention on CUDA runs diffusers' {RING_BACKEND} backend, which takes float16 or bfloat16, not float32; set 'dtype'"
    return None


class ShardedSequence(SignalScope):
    """The signals of a sampling call whose sequence is split across the ranks of `world`.

    `tokens` holds the whole sequence's length of each stream ('image', 'text') of the current
    forward, set before each call of the transformer (`context_parallel` does, from its inputs).
    """

    def __init__(self, world: World, layouts: tuple[tuple[str, ...], ...]) -> None:
        self.world, self.layouts = world, layouts
        self.tokens: dict[str, int] = {}

    taps_attention = False  # a rank's SDPA sees its own heads (Ulysses) or keys (ring): rows are projected instead

    def key_count(self, local: int) -> int:
        return local * self.world.world_size  # every rank holds an equal slice of each stream

    def positions(self, local: int, device: torch.device) -> tuple[torch.Tensor, int]:
        """The whole-sequence index of each of this rank's `local` tokens, and the whole length.

        The layout is the one whose streams' slices add up to `local` tokens (a rank holds slice
        `rank` of each stream, the streams in the layout's order)."""
        n, rank = self.world.world_size, self.world.rank
        for layout in self.layouts:
            if all(s in self.tokens for s in layout) and sum(self.tokens[s] // n for s in layout) == local:
                pieces, start = [], 0
                for stream in layout:
                    size = self.tokens[stream] // n
                    pieces.append(torch.arange(start + rank * size, start + (rank + 1) * size, device=device))
                    start += self.tokens[stream]
                return torch.cat(pieces), start
        raise DqarError(f"context parallelism: a probed attention sees {local} tokens on rank {rank}, which matches no known layout of {self.tokens}")

    def probe_qk(self, attn: torch.nn.Module, x: torch.Tensor, num_queries: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The sampled query rows of the whole sequence (on every rank) and this rank's keys."""
        where, total = self.positions(x.shape[-2], x.device)
        rows = signals.query_rows(total, num_queries, x.device) if 0 < num_queries < total else torch.arange(total, device=x.device)
        match = rows.unsqueeze(1) == where.unsqueeze(0)  # [sampled rows, local tokens]
        mine = match.any(dim=1)
        q_mine, k = signals.probe_qk(attn, x, rows=match[mine].float().argmax(dim=1))
        q = q_mine.new_zeros((*q_mine.shape[:-2], rows.numel(), q_mine.shape[-1]))
        q[..., mine, :] = q_mine
        return self.world.all_reduce(q, "sum", "probe query rows"), k

    def scores_entropy(self, scores: torch.Tensor) -> torch.Tensor:
        return key_sharded_entropy(self.world, scores)

    def residual_change(self, residual: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        r, ref = residual.float(), reference.float()
        sums = torch.stack([(r - ref).abs().sum(), ref.abs().sum(), torch.tensor(float(ref.numel()), device=ref.device)])
        self.world.all_reduce(sums, "sum", "residual change sums")
        return (sums[0] / sums[2]) / (sums[1] / sums[2] + signals.EPS)

    def agree(self, decisions: list[bool]) -> list[bool]:
        return main_decides(self.world, decisions)


def whole_call_flops(world: World, flops: dict[int, FlopCount]) -> dict[int, FlopCount]:
    """Context-parallel calls' FLOPs (by seed) over all their ranks (each rank counts its own
    share of each call): one exchange for all of a case's calls, not one per call."""
    shares = world.all_gather(flops, "FLOPs of context-parallel calls")
    whole: dict[int, FlopCount] = {}
    for seed in flops:
        by_op: dict[str, int] = {}
        for share in shares:
            for op, n in share[seed].by_op.items():
                by_op[op] = by_op.get(op, 0) + n
        whole[seed] = FlopCount(sum(share[seed].total for share in shares), by_op)
    return whole


_MESHES: dict[tuple, Any] = {}


def _mesh(parallel: Parallel, world: World) -> Any:
    """One device mesh per mode and size for the whole run (each mesh makes process groups, a collective)."""
    key = (parallel.mode, parallel.degree, world.device.type)
    if key not in _MESHES:
        from torch.distributed.device_mesh import init_device_mesh

        shape = (parallel.degree, 1) if parallel.mode == "ring" else (1, parallel.degree)
        _MESHES[key] = init_device_mesh(world.device.type, shape, mesh_dim_names=("ring", "ulysses"))
    return _MESHES[key]


def _backend(transformer: torch.nn.Module) -> str | None:
    for module in transformer.modules():
        processor = getattr(module, "processor", None)
        if processor is not None and hasattr(processor, "_attention_backend"):
            return processor._attention_backend
    return None


def _stream_tokens(family: str, transformer: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> dict[str, int]:
    """The whole sequence's length of each stream, from the transformer's inputs before diffusers splits them."""
    hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
    if family == "flux":
        return {"image": hidden.shape[1], "text": kwargs["encoder_hidden_states"].shape[1]}
    pt, ph, pw = transformer.config.patch_size
    return {"image": (hidden.shape[2] // pt) * (hidden.shape[3] // ph) * (hidden.shape[4] // pw)}


@contextlib.contextmanager
def context_parallel(
    transformer: torch.nn.Module, parallel: Parallel | None, world: World, family: str, strategy: Any = None
) -> Iterator[None]:
    """Run `transformer` context-parallel inside the block, with `strategy` (if any) reading sharded signals.

    Enter it after the adapter installed the strategy and leave it before the adapter is
    removed: diffusers wraps the forwards the adapter patched (Wan's first block) and gives
    them back on removal. On leaving, every module's forward is what it was before, the
    processors forget the parallel config, and the strategy reads whole tensors again.
    """
    if parallel is None:
        yield
        return
    from diffusers import ContextParallelConfig
    from diffusers.hooks.context_parallel import remove_context_parallel

    before = {m: m.__dict__.get("forward", _MISSING) for m in transformer.modules()}
    hooked = {m: "_diffusers_hook" in m.__dict__ for m in transformer.modules()}
    backends = {m: m.processor._attention_backend for m in transformer.modules() if hasattr(getattr(m, "processor", None), "_attention_backend")}
    scope = ShardedSequence(world, LAYOUTS[family])
    previous = strategy.scope if strategy is not None else None  # put back on leaving

    def read_tokens(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        scope.tokens = _stream_tokens(family, transformer, args, kwargs)
        uneven = {s: t for s, t in scope.tokens.items() if t % parallel.degree}
        if uneven:
            what = ", ".join(f"{t} {s} tokens" for s, t in uneven.items())
            raise DqarError(f"context parallelism over {parallel.degree} ranks cuts each sequence into equal slices; {what} do not divide by {parallel.degree}")
        return args, {**kwargs, "return_dict": False}  # diffusers' gather hook takes tensors, not an output object

    def as_output(module: torch.nn.Module, args: tuple, output: Any) -> Any:
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        return Transformer2DModelOutput(sample=output[0])  # what the harness's callers read, as without the hook

    handles = [transformer.register_forward_pre_hook(read_tokens, with_kwargs=True), transformer.register_forward_hook(as_output)]
    try:
        if parallel.mode == "ring" and _backend(transformer) is None:
            transformer.set_attention_backend(RING_BACKEND)
        degrees = {f"{parallel.mode}_degree": parallel.degree}
        with _cpu_counts_as_one_device(world):
            transformer.enable_parallelism(config=ContextParallelConfig(**degrees, mesh=_mesh(parallel, world)))
        if strategy is not None:
            strategy.scope = scope
        yield
    finally:
        for handle in handles:
            handle.remove()
        if strategy is not None:
            strategy.scope = previous if previous is not None else LOCAL
        if getattr(transformer, "_parallel_config", None) is not None:
            remove_context_parallel(transformer, transformer._cp_plan)
            transformer._parallel_config = None
        for module, backend in backends.items():
            module.processor._attention_backend = backend
            if hasattr(module.processor, "_parallel_config"):
                module.processor._parallel_config = None
        for module, forward in before.items():  # diffusers leaves the bound method as an instance attribute
            if forward is _MISSING:
                module.__dict__.pop("forward", None)
            else:
                module.forward = forward
            if not hooked[module]:
                module.__dict__.pop("_diffusers_hook", None)


_MISSING = object()


@contextlib.contextmanager
def _cpu_counts_as_one_device(world: World) -> Iterator[None]:
    """diffusers places the mesh on `rank % torch.accelerator.device_count()`, 0 on a CPU-only machine."""
    if world.device.type != "cpu" or torch.accelerator.device_count() > 0:
        yield
        return
    count = torch.accelerator.device_count
    torch.accelerator.device_count = lambda: 1  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.accelerator.device_count = count  # type: ignore[assignment]
