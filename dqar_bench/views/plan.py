"""A suite's reuse patterns, worked out before anything runs: `dqar-bench plan SUITE`.

Where a case reuses follows from three things that need no weights: the scheduler's mask
(which may read the sampler's timesteps), the gate's answers when they depend on nothing
but the step and the block (`Gate.static_pattern`), and what the cache holds, which is a
block once it has computed in the call. Walking the steps with those gives the exact
pattern a run of the case will have, so its reuse ratio can be checked on any machine in
seconds (the seed's DiT-XL table, `suites/seed-table.yaml`, plans on a laptop). A gate
that reads signals has no static pattern: its case is planned as if the gate always said
yes, which is an upper bound, and the output says so.

The model's geometry (blocks, and the sampler's timesteps from its noise schedule) comes
from a built-in model built on the `meta` device (no memory, no weights), a checkpoint's
`transformer/config.json` on disk, or `KNOWN_CHECKPOINTS`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch

from dqar_bench.config.part_spec import new_part
from dqar_bench.config.suite import Case, Suite
from dqar_bench.core.errors import DqarError, ModelError
from dqar_bench.core.parts import Gate, Scheduler
from dqar_bench.core.plugins import Registry
from dqar_bench.model.sampling import make_scheduler, set_timesteps
from dqar_bench.strategy.strategy import schedule_mask
from dqar_bench.views import markdown
from dqar_bench.views.table import parts_label

KNOWN_CHECKPOINTS: dict[str, int] = {
    "facebook/DiT-XL-2-256": 28,
    "facebook/DiT-XL-2-512": 28,
    "PixArt-alpha/PixArt-XL-2-512x512": 28,
    "PixArt-alpha/PixArt-XL-2-1024-MS": 28,
}
"""Transformer blocks of well-known checkpoints, so their suites plan without the checkpoint."""


@dataclass(frozen=True)
class Geometry:
    """What a reuse pattern depends on in the model and sampler."""

    num_blocks: int
    timesteps: list[int]
    source: str

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)


@dataclass(frozen=True)
class CasePlan:
    """One case's reuse pattern: reused blocks per step, and whether it is exact."""

    case: str
    parts: str
    reused_per_step: list[int]
    num_blocks: int
    exact: bool
    note: str = ""

    @property
    def reused(self) -> int:
        return sum(self.reused_per_step)

    @property
    def evaluations(self) -> int:
        return self.num_blocks * len(self.reused_per_step)

    @property
    def reuse_ratio(self) -> float:
        return self.reused / self.evaluations if self.evaluations else 0.0


def geometry(suite: Suite) -> Geometry:
    """Blocks and timesteps of the suite's model and sampler, without loading weights."""
    from dqar_bench.model import families
    from dqar_bench.model.loaded import DIT_SCHEDULER_CONFIG, local_json
    from dqar_bench.model.models import BUILTIN_MODELS, _local_transformer_config, _scheduler_config, model_family

    family = families.get(model_family(suite.model) or "dit")
    vae_config: Any = None
    if suite.model in BUILTIN_MODELS:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")  # loading shipped weights into meta tensors is a no-op, said loudly
            model = BUILTIN_MODELS[suite.model]()
        blocks, config, source = model.num_blocks, model.scheduler_config, "built-in, built on the meta device"
        transformer_config, family = model.transformer.config, model.spec
    else:
        transformer = _local_transformer_config(suite.model)
        if transformer is not None and "num_layers" in transformer:
            # every block list of the family: FLUX's and HunyuanVideo's single-stream blocks too
            blocks = int(transformer["num_layers"]) + int(transformer.get("num_single_layers") or 0)
            source = "its transformer/config.json"
            config = _scheduler_config(suite.model, True, family)
            transformer_config = SimpleNamespace(**transformer)
            vae = local_json(suite.model, "vae/config.json")
            vae_config = SimpleNamespace(**vae) if vae else None
        elif suite.model in KNOWN_CHECKPOINTS:
            blocks, source = KNOWN_CHECKPOINTS[suite.model], "dqar_bench.views.plan.KNOWN_CHECKPOINTS"
            config, transformer_config = dict(DIT_SCHEDULER_CONFIG), None
        else:
            raise DqarError(
                f"{suite.path}: field 'model': the geometry of '{suite.model}' is unknown offline; put the checkpoint "
                f"(or its transformer/config.json) on disk, or add it to dqar_bench.views.plan.KNOWN_CHECKPOINTS"
            )
    scheduler = make_scheduler(suite.sampler, config)
    # as `denoise` sets them: a flow schedule's sigmas, and its shift from the image's token count (FLUX, SD3)
    tokens = _image_tokens(suite, transformer_config, vae_config, family) if transformer_config is not None else 0
    set_timesteps(scheduler, suite.steps, torch.device("cpu"), tokens, family.sigmas)
    return Geometry(blocks, [int(t) for t in scheduler.timesteps.tolist()], source)


def _image_tokens(suite: Suite, config: Any, vae_config: Any, family: Any) -> int:
    """Tokens one latent makes at the suite's resolution (or the model's own size), which a flow schedule's dynamic shift reads."""
    from dqar_bench.model.inputs import convention
    from dqar_bench.model.resolution import latent_size

    conv = convention(family)
    shape = conv.latent_shape(config, family)
    if suite.resolution is not None:
        try:
            shape = (shape[0], *latent_size(suite.resolution, config, vae_config, family))
        except ModelError as exc:
            raise DqarError(f"{suite.path}: field 'resolution': {exc}") from None
    return conv.image_tokens(config, shape)


def reuse_pattern(scheduler: Scheduler, gate: Gate, num_blocks: int, timesteps: list[int]) -> tuple[torch.Tensor, bool]:
    """[steps, blocks] bool: where the case reuses; and whether that is exact (else an upper bound).

    The harness's rule, step by step: a block reuses where the scheduler allows it, the
    cache holds it (it has computed earlier in the call), it comes after the block a
    mid-forward gate decides at, and the gate says so (always, for a gate without a
    static pattern).
    """
    num_steps = len(timesteps)
    mask = schedule_mask(scheduler, num_steps, num_blocks, timesteps)
    answers = gate.static_pattern(num_steps, num_blocks)
    exact = answers is not None
    if answers is None:
        answers = torch.ones(num_steps, num_blocks, dtype=torch.bool)
    first = 0 if gate.DECIDES_AFTER_BLOCK is None else gate.DECIDES_AFTER_BLOCK + 1
    allowed = (mask & answers.bool()).tolist()
    held = [False] * num_blocks
    reuse = torch.zeros(num_steps, num_blocks, dtype=torch.bool)
    for step in range(num_steps):
        for block in range(num_blocks):
            if block >= first and held[block] and allowed[step][block]:
                reuse[step, block] = True
            else:
                held[block] = True  # it computes, so from the next step on the cache holds it
    return reuse, exact


def plan_case(case: Case, registry: Registry, geo: Geometry) -> CasePlan | None:
    """The case's pattern on `geo`; None for the untouched model and for a diffusers-hook case (no parts to plan)."""
    if not case.parts:
        return None
    scheduler = _build(registry, case, "scheduler")
    gate = _build(registry, case, "gate")
    reuse, exact = reuse_pattern(scheduler, gate, geo.num_blocks, geo.timesteps)  # type: ignore[arg-type]
    note = "" if exact else f"upper bound: gate '{gate.PLUGIN_NAME}' reads {', '.join(sorted(gate.SIGNALS)) or 'data'}"
    label = parts_label({kind: {"name": s.name, "params": s.params} for kind, s in case.parts.items()})
    return CasePlan(case.base_name, label, reuse.sum(dim=1).tolist(), geo.num_blocks, exact, note)


def plan_suite(suite: Suite, registry: Registry) -> tuple[Geometry, list[CasePlan]]:
    """Every case's pattern once (a case run in several execution modes has one pattern)."""
    geo = geometry(suite)
    plans: list[CasePlan] = []
    seen: set[str] = set()
    for case in suite.cases:
        if case.base_name in seen:
            continue
        seen.add(case.base_name)
        planned = plan_case(case, registry, geo)
        if planned is not None:
            plans.append(planned)
    return geo, plans


def render_plan(suite: Suite, geo: Geometry, plans: list[CasePlan]) -> str:
    head = (
        f"{suite.path}: suite '{suite.name}', model {suite.model} ({geo.num_blocks} blocks, from {geo.source}), "
        f"{geo.num_steps} {suite.sampler} steps; reuse = reused block evaluations / (blocks x steps) of one sampling call"
    )
    rows = [(p.case, p.parts, f"{'' if p.exact else '<= '}{100 * p.reuse_ratio:.1f} %", runs(p.reused_per_step)) for p in plans]
    lines = [head, "", markdown.table(["case", "parts", "reuse", "reused blocks per step (v xN: N steps in a row)"], rows, "llrl")]
    bounds = [p for p in plans if not p.exact]
    if bounds:
        lines.append("")
        lines.append("<= : upper bound, the gate reads signals (the pattern assumes it always says yes):")
        lines.extend(f"  {p.case}: {p.note}" for p in bounds)
    hooked = sorted({c.base_name for c in suite.cases if c.hook is not None})
    if hooked:
        lines.append("")
        lines.append(f"not planned (diffusers' own hooks decide inside diffusers; their runs record reuse): {', '.join(hooked)}")
    return "\n".join(lines)


def runs(values: list[Any]) -> str:
    """Run-length form of a per-step list: `0 x10, 1 x5, 2`."""
    out: list[str] = []
    i = 0
    while i < len(values):
        j = i
        while j < len(values) and values[j] == values[i]:
            j += 1
        out.append(f"{values[i]} x{j - i}" if j - i > 1 else f"{values[i]}")
        i = j
    return ", ".join(out)


def _build(registry: Registry, case: Case, kind: str) -> Any:
    return new_part(case.parts[kind], registry)
