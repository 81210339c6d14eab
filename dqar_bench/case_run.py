"""One case's measurement, in the two phases the runner drives.

`prepare` runs with the case's strategy installed, one case at a time: the warmup calls
(the first is the cold figure); for a case timed blocked, its timed rounds; then one call
per seed whose outputs are scored against the baseline's, counted for FLOPs
(`measure.flops`, eager, strategy installed: probes and caches included) and for reuse;
and the images for FID. Outputs with NaN or inf fail the case there.

`time_round` is one round of interleaved timing: the strategy is installed, one call per
seed is timed, the strategy is removed (the adapter leaves the model exactly as it was)
and its caches are emptied, so that the next case starts from the same model.

`finish` builds the record from the rounds in the run's round log: every timed call, the
case's seconds per round and its baseline's in the same rounds (`dqar_bench.rounds`).
"""

from __future__ import annotations

import datetime as _dt
import math
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from dqar_bench import __version__
from dqar_bench.adapters import adapter_for
from dqar_bench.diffusers_hooks import DiffusersHook, installed
from dqar_bench.distributed import World
from dqar_bench.distributed.context_parallel import context_parallel, whole_call_flops
from dqar_bench.distributed.context_parallel import refusal as parallel_refusal
from dqar_bench.execution import Execution, unsupported
from dqar_bench.measure.classify import class_accuracy
from dqar_bench.measure.clip_score import clip_score
from dqar_bench.measure.fidelity import to_uint8
from dqar_bench.measure.flops import FlopCount, count_flops, summarize
from dqar_bench.measure.instruments import Instruments, generate_images
from dqar_bench.measure.meter import CaseMeter
from dqar_bench.measure.stats import Measurement
from dqar_bench.models import LoadedModel
from dqar_bench.parts import build_part
from dqar_bench.pipelines import EAGER_ONLY, call_pipeline
from dqar_bench.plugins import Registry
from dqar_bench.quality import compare_outputs
from dqar_bench.rounds import RoundLog, pair
from dqar_bench.sampling import Condition, denoise, labels_condition, make_scheduler
from dqar_bench.strategy import Strategy
from dqar_bench.suite import Case, Suite
from dqar_bench.timing import CallTimer


def build_strategy(case: Case, registry: Registry, probe_queries: int = 16) -> Strategy | None:
    """The case's parts, built and wired; None for the untouched model (and for a diffusers-hook case)."""
    if not case.parts:
        return None
    parts = {kind: build_part(registry.get(kind, spec.name).cls, spec.params) for kind, spec in case.parts.items()}
    return Strategy(parts["scheduler"], parts["gate"], parts["cache"], parts["quantizer"], probe_queries)  # type: ignore[arg-type]


class NonFinite(Exception):
    """Outputs or timings with NaN or inf: the case fails, it is never scored."""


@dataclass
class RunContext:
    """What every case of a run shares."""

    suite: Suite
    model: LoadedModel
    device: torch.device
    registry: Registry
    kit: Instruments
    condition: Condition
    log: RoundLog = field(default_factory=lambda: RoundLog(None))
    session: str = ""
    next_round: int = 0
    world: World = field(default_factory=World)

    def take_round(self) -> int:
        self.next_round += 1
        return self.next_round - 1

    def log_round(self, round_id: int, timing_order: str, order: list[str], cases: dict[str, Any]) -> None:
        """One finished round to `rounds.jsonl`: the one shape of a round line, interleaved or blocked."""
        self.log.append({
            "round": round_id, "session": self.session, "timing_order": timing_order,
            "round_seed": self.suite.round_seed, "order": order, "cases": cases,
        })


class CaseRun:
    """The state of one case through a run: built, prepared, timed round by round, recorded."""

    def __init__(
        self,
        ctx: RunContext,
        case: Case,
        identity: dict[str, Any] | None = None,
        key: str = "",
        baseline: tuple[str, str] | None = None,
        settings: dict[str, Any] | None = None,
        partner: bool = False,
        blocked: bool = False,
        prior_rounds: list[int] | None = None,
    ) -> None:
        self.ctx, self.case, self.key = ctx, case, key
        self.baseline = baseline
        """The name and key of the baseline its rounds pair with (None: no pairing)."""
        self.partner = partner
        """Timed only as the paired baseline of cases rerun in this session; its record stands."""
        self.blocked = blocked
        self.round_ids: list[int] = list(prior_rounds or [])
        self.strategy: Strategy | None = None
        self.hook = DiffusersHook(case.hook) if case.hook is not None else None
        """diffusers' own cache hook, for a `diffusers-hook` case (then there is no strategy)."""
        self.outputs: dict[int, torch.Tensor] | None = None
        self.status = "pending"
        self._fid_images: torch.Tensor | None = None
        self._session_calls = 0
        suite = ctx.suite
        self.record: dict[str, Any] = {
            "suite": suite.name,
            "case": case.name,
            "description": case.description,
            "case_key": key,
            "parts": {kind: {"name": s.name, "params": s.params} for kind, s in case.parts.items()},
            **({"diffusers_hook": case.hook} if case.hook is not None else {}),
            "model": suite.model,
            "sampler": suite.sampler,
            "steps": suite.steps,
            "guidance_scale": suite.guidance_scale,
            "batch": suite.batch,
            "cond_len": ctx.condition.cond_len,
            "execution_mode": case.execution,
            "parallel": case.parallel.as_dict() if case.parallel is not None else None,
            "baseline_case": suite.baseline_for(case),
            "seeds": suite.seeds,
            "device": str(ctx.device),
            "dtype": suite.dtype,
            "suite_hash": suite.content_hash,
            "dqar_bench": __version__,
            "identity": identity,
            **({"pipeline": type(ctx.model.pipeline).__name__} if ctx.model.pipeline is not None else {}),
            "settings": settings,
            "environment": ctx.kit.environment,
            "started": _now(),
        }
        self._scheduler = make_scheduler(suite.sampler, ctx.model.scheduler_config)
        self._meter = CaseMeter(ctx.device, suite.nvml_interval_s)

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    # -- phase 1 ---------------------------------------------------------------------------

    def prepare(self, blocked_rounds: int = 0, reference: dict[int, torch.Tensor] | None = None) -> None:
        """Warmup, blocked rounds, scored outputs, FLOPs and FID images; never raises for the case's own failure."""
        ctx, suite = self.ctx, self.ctx.suite
        try:
            self.strategy = build_strategy(self.case, ctx.registry, suite.probe_queries)
            reason, where = unsupported(self.case.execution, ctx.device, self.strategy), f"in {self.case.execution}"
            if not reason and ctx.model.pipeline is not None and self.case.execution != "eager":
                reason = EAGER_ONLY
            if not reason and self.hook is not None:
                reason, where = self.hook.refusal(ctx.model.spec, self.case.execution), f"on family '{ctx.model.spec.name}'"
            if not reason and self.case.parallel is not None:
                model = ctx.model
                reason = parallel_refusal(self.case.parallel, model.transformer, model.family, ctx.world, self.case.execution, getattr(torch, suite.dtype))
                where = f"with {self.case.parallel.label()}"
            if reason:
                self.status = "unsupported"
                self.record.update(status="unsupported", error=f"unsupported {where}: {reason}", finished=_now())
                return
            self._prepare(blocked_rounds, reference)
        except Exception as exc:  # one broken case must not stop the suite
            self.fail(exc)
            return
        self.status = "ready"

    def _prepare(self, blocked_rounds: int, reference: dict[int, torch.Tensor] | None) -> None:
        ctx, suite, mode = self.ctx, self.ctx.suite, self.case.execution
        transformer = ctx.model.transformer
        execution = Execution(mode, transformer, self.strategy, suite.execution_options)
        # per-step marks are a forward pre-hook: eager only (a compiled or replayed forward runs no hooks)
        timer = CallTimer(ctx.device, transformer if suite.per_step and mode == "eager" else None)
        warmup: list[float] = []
        try:
            with adapter_for(transformer).install(transformer, self.strategy), installed(self.hook, transformer), self._parallel(), execution as forward, self._meter:
                with timer:
                    # a strong mode warms up twice: the first call meets empty caches and unallocated
                    # buffers, so the second still compiles / captures its first step once
                    for i in range(suite.warmup if mode == "eager" else max(suite.warmup, 2)):
                        timing, _ = timer.time(lambda: self._call(suite.seeds[i % len(suite.seeds)], forward))
                        warmup.append(timing.seconds)
                        ctx.kit.progress.tick()
                    _finite(warmup, "warmup timing")
                    for _ in range(blocked_rounds):
                        with self._meter.timed_section():
                            timed = self._time_seeds(timer, forward)
                        round_id = ctx.take_round()
                        ctx.log_round(round_id, "blocked", [self.case.name], {self.case.name: timed})
                        self.round_ids.append(round_id)
                if not self.partner:
                    self._scored_calls(forward, mode)
        finally:
            if self.strategy is not None:
                self.strategy.release()
        self.record.update(
            execution=execution.report(), timer=timer.method, cold_s=warmup[0] if warmup else None, warmup_s=warmup,
            memory=self._meter.report(0)["memory"],  # peaks over warmup, scored, FLOP and FID calls
        )
        if not self.partner:
            assert self.outputs is not None
            self.record.update(
                quality=_quality(self.outputs, reference, ctx.kit),
                class_accuracy=_class_accuracy(self.outputs, ctx.condition, ctx.kit),
                clip=_clip(self.outputs, suite.prompt_texts, ctx.kit),
                fidelity=_fidelity(self._fid_images, ctx.suite.is_baseline(self.case), ctx.kit),
            )
        self._fid_images = None

    def _scored_calls(self, forward: Callable[..., torch.Tensor], mode: str) -> None:
        """One call per seed: the outputs scored for quality, the reuse, the FLOPs, then FID images.

        In eager mode the FLOP counter wraps the scored call itself (it runs the same kernels);
        a strong mode's outputs come from its own program, and the FLOPs from an eager call."""
        ctx, suite, strategy = self.ctx, self.ctx.suite, self.strategy or self.hook
        outputs: dict[int, torch.Tensor] = {}
        flops: dict[int, FlopCount] = {}
        if strategy is not None:
            strategy.reset_stats()
        for seed in suite.seeds:
            if mode == "eager":
                latents, flops[seed] = count_flops(lambda: self._call(seed, forward))
                if self.case.parallel is not None:  # each rank counted its share of the call
                    flops[seed] = whole_call_flops(ctx.world, flops[seed])
            else:
                latents = self._call(seed, forward)
            outputs[seed] = latents.detach().float().cpu()
            ctx.kit.progress.tick()
        stats = strategy.stats if strategy is not None else None
        self.record.update(
            reused=stats.reused if stats else 0,
            evaluations=stats.evaluations if stats else 0,
            reuse_ratio=stats.reuse_ratio if stats else 0.0,
            cache_bytes=stats.peak_cache_bytes if stats else 0,
            reuse_map=[list(row) for row in stats.reuse_map] if stats else None,  # [step][block]: scored calls that reused there (a copy: timed rounds go on counting)
            reuse_map_calls=stats.calls if stats else 0,
            nonfinite_cached=stats.nonfinite_cached if stats else 0,
        )
        if mode != "eager":
            for seed in suite.seeds:
                _, flops[seed] = count_flops(lambda: self._call(seed, None))
        _check_outputs(outputs)
        self.outputs = outputs
        self.record["flops"] = summarize(flops)
        if ctx.kit.fid_images:
            call = lambda seed, labels: self._call(seed, forward, labels)  # noqa: E731
            self._fid_images = generate_images(call, ctx.kit.fid_images, suite.batch, ctx.model.null_class, ctx.kit)

    # -- phase 2 ---------------------------------------------------------------------------

    def time_round(self) -> dict[str, Any] | None:
        """One interleaved round: install, one timed call per seed, remove. None if the case failed."""
        ctx, suite = self.ctx, self.ctx.suite
        transformer = ctx.model.transformer
        try:
            execution = Execution(self.case.execution, transformer, self.strategy, suite.execution_options)
            timer = CallTimer(ctx.device, transformer if suite.per_step and self.case.execution == "eager" else None)
            with adapter_for(transformer).install(transformer, self.strategy), installed(self.hook, transformer), self._parallel(), execution as forward, timer, self._meter.timed_section():
                timed = self._time_seeds(timer, forward)
        except Exception as exc:
            self.fail(exc)
            return None
        finally:
            if self.strategy is not None:
                self.strategy.release()
        return timed

    def _time_seeds(self, timer: CallTimer, forward: Callable[..., torch.Tensor]) -> dict[str, Any]:
        calls, steps = [], []
        for seed in self.ctx.suite.seeds:
            timing, _ = timer.time(lambda: self._call(seed, forward))
            _finite([timing.seconds, *timing.steps], f"timing (seed {seed})")
            calls.append(timing.seconds)
            steps.append(timing.steps)
            self._session_calls += 1
            self.ctx.kit.progress.tick()
        per_step = self.ctx.suite.per_step and self.case.execution == "eager"
        return {"case_key": self.key, "calls_s": calls, "steps_s": steps if per_step else None}

    # -- the record ------------------------------------------------------------------------

    def finish(self, entries: list[dict[str, Any]]) -> dict[str, Any]:
        """The case's record, from its rounds (the first `repeats` of them) and its baseline's."""
        suite = self.ctx.suite
        paired = pair(entries, self.round_ids[: suite.repeats], (self.case.name, self.key), self.baseline)
        if not paired.round_s:
            self.fail(RuntimeError("no timed round finished"))
            return self.record
        latency = Measurement.of(paired.latency_s)
        record = self.record
        images = self._session_calls * suite.batch
        record.update(
            status="ok",
            latency_s=paired.latency_s,
            median_s=latency.median,
            per_image_s=latency.median / suite.batch,
            latency=latency.summary(),
            step_s=paired.step_s,
            round_s=paired.round_s,
            baseline_round_s=paired.baseline_round_s,
            rounds=len(paired.round_s),
            round_ids=paired.round_ids,
            timing_order="blocked" if self.blocked else "interleaved",
            round_seed=suite.round_seed,
            energy=self._meter.report(images)["energy"],  # over this session's timed calls
            finished=_now(),
        )
        if self.blocked and suite.timing_order == "interleaved":
            record["timing_note"] = (
                f"timed blocked: {self.case.execution} mode keeps its compiled programs alive, so its repeats ran back to "
                "back and its rounds pair with the baseline's by position, not in time"
            )
        self.status = "done"
        return record

    def fail(self, exc: BaseException) -> None:
        self.status = "failed"
        self._fid_images = None
        message = str(exc).splitlines()[0] if str(exc) else ""
        error = message if isinstance(exc, NonFinite) else f"{type(exc).__name__}: {message}"
        self.record.update(status="failed", error=error, round_ids=list(self.round_ids), finished=_now())
        if not isinstance(exc, NonFinite):
            self.record["traceback"] = traceback.format_exc()

    def _parallel(self) -> Any:
        """The case's context parallelism around its installed strategy (nothing for one rank)."""
        ctx = self.ctx
        return context_parallel(ctx.model.transformer, self.case.parallel, ctx.world, ctx.model.family, self.strategy)

    def _call(self, seed: int, forward: Callable[..., torch.Tensor] | None, labels: list[int] | None = None) -> torch.Tensor:
        ctx = self.ctx
        given = ctx.condition
        if labels is not None and ctx.model.family == "dit":  # FID draws its own labels; captions stay the suite's
            given = labels_condition(labels, ctx.model.null_class, ctx.device)
        suite = ctx.suite
        observer = self.strategy or self.hook
        if ctx.model.pipeline is not None:  # the model's own pipeline: decoded images (`dqar_bench.pipelines`)
            return call_pipeline(ctx.model, self._scheduler, given, seed, suite.steps, suite.guidance_scale, observer)
        return denoise(ctx.model.transformer, self._scheduler, given, seed, suite.steps, suite.guidance_scale, observer, forward)


def _finite(values: list[float], what: str) -> None:
    bad = [v for v in values if not math.isfinite(v)]
    if bad:
        raise NonFinite(f"non-finite {what}: {bad[0]} s")


def _check_outputs(outputs: dict[int, torch.Tensor]) -> None:
    """NaN or inf in any seed's outputs fails the case, naming the seeds."""
    where = []
    for seed, latents in outputs.items():
        nan, inf = int(torch.isnan(latents).sum()), int(torch.isinf(latents).sum())
        if nan or inf:
            what = " and ".join(f"{n} {kind}" for n, kind in ((nan, "NaN"), (inf, "inf")) if n)
            where.append(f"seed {seed} has {what} of {latents.numel()} values")
    if where:
        raise NonFinite(f"non-finite outputs: {'; '.join(where)}")


def _quality(outputs: dict[int, torch.Tensor], baseline: dict[int, torch.Tensor] | None, kit: Instruments) -> dict[str, Any] | None:
    if baseline is None or set(baseline) != set(outputs):
        return None
    seeds = sorted(outputs)
    return compare_outputs(
        torch.cat([outputs[s] for s in seeds]), torch.cat([baseline[s] for s in seeds]), kit.decode, kit.lpips, kit.lpips_note
    )


def _class_accuracy(outputs: dict[int, torch.Tensor], condition: Condition, kit: Instruments) -> float | None:
    """Class accuracy of the case's own outputs (every seed)."""
    labels = condition.inputs.get("class_labels")
    if kit.quality.classifier is None or labels is None:
        return None
    seeds = sorted(outputs)
    images = to_uint8(kit.to_images(torch.cat([outputs[s] for s in seeds])))
    labels = labels.detach().cpu().repeat(len(seeds))
    return class_accuracy(kit.quality.classifier, images, labels)


def _clip(outputs: dict[int, torch.Tensor], prompts: list[str] | None, kit: Instruments) -> dict[str, Any] | None:
    """CLIP score of the case's own decoded outputs (every seed), each against the prompt it was made for."""
    if kit.clip is None or not prompts:
        return None
    seeds = sorted(outputs)
    images = kit.to_images(torch.cat([outputs[s] for s in seeds]))
    return {**clip_score(images, list(prompts) * len(seeds), kit.clip), "weights": kit.quality.clip}


def _fidelity(images: torch.Tensor | None, is_baseline: bool, kit: Instruments) -> dict[str, Any] | None:
    """FID / IS / KID of the case's images; the baseline's images may be the reference itself."""
    if images is None:
        return None
    if is_baseline and kit.quality.reference == "baseline" and kit.fidelity is None:
        kit.adopt_reference(images)  # the first baseline's; a baseline in another mode is scored against it
        return {"n": int(images.shape[0]), "reference": "this case (the baseline)", "feature_extractor": kit.quality.feature_extractor}
    if kit.fidelity is None:
        return {"n": int(images.shape[0]), "note": "no reference: the baseline did not finish"}
    return kit.fidelity.score(images)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
