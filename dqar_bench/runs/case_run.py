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
case's seconds per round and its baseline's in the same rounds (`dqar_bench.measure.rounds`).

Several ranks (the case's `Team`) prepare a case together: each makes its share of the
scored and FID calls, and `prepare` ends with one exchange in which rank 0 joins the shares
and scores them (`dqar_bench.runs.distributed.shares`); a plain process is a team of one and
takes the same path. A context-parallel case's team is every rank, each making every call
(one slice of each), in lockstep (`dqar_bench.runs.distributed.teams`).
"""

from __future__ import annotations

import datetime as _dt
import math
import statistics
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from dqar_bench.config.identity import case_identity
from dqar_bench.config.part_spec import new_part
from dqar_bench.config.suite import Case, Suite
from dqar_bench.core.plugins import Registry
from dqar_bench.core.world import World
from dqar_bench.measure.case_record import CaseRecord
from dqar_bench.measure.classify import class_accuracy
from dqar_bench.measure.clip_score import clip_score
from dqar_bench.measure.fidelity import Features, to_uint8
from dqar_bench.measure.flops import FlopCount, count_flops, summarize
from dqar_bench.measure.instruments import Instruments, fid_image_indices, generate_images
from dqar_bench.measure.meter import CaseMeter
from dqar_bench.measure.quality import compare_outputs
from dqar_bench.measure.rounds import RoundLog, pair, paired_ratios
from dqar_bench.measure.stats import Measurement
from dqar_bench.measure.timing import CallTimer
from dqar_bench.model.loaded import LoadedModel
from dqar_bench.model.pipelines import EAGER_ONLY, call_pipeline
from dqar_bench.model.sampling import Condition, denoise, labels_condition, make_scheduler
from dqar_bench.runs.distributed.shares import Share, merge_fid, merge_flops, merge_outputs, merge_reuse, rank_entries, settle, standing
from dqar_bench.runs.distributed.teams import parallel_note, team_for
from dqar_bench.strategy.adapter import adapter_for
from dqar_bench.strategy.cache_dit import CacheDitHook
from dqar_bench.strategy.context_parallel import context_parallel, whole_call_flops
from dqar_bench.strategy.context_parallel import refusal as parallel_refusal
from dqar_bench.strategy.diffusers_hooks import DiffusersHook, installed
from dqar_bench.strategy.execution import Execution, unsupported
from dqar_bench.strategy.strategy import Strategy


def build_strategy(case: Case, registry: Registry, probe_queries: int = 16) -> Strategy | None:
    """The case's parts, built and wired; None for the untouched model (and for a diffusers-hook case)."""
    if not case.parts:
        return None
    parts = {kind: new_part(spec, registry) for kind, spec in case.parts.items()}
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
    """Every rank of the run: round ids are unique over it, and each round line names its rank."""
    group: World = field(default_factory=World)
    """The ranks that prepare and time each case on one device per call together: the whole world
    (data parallel), or this rank alone (`--shard cases`, and a plain process); a context-parallel
    case's team is the world (`CaseRun.team`)."""
    rounds_of: dict[tuple[str, int], list[int]] = field(default_factory=dict)
    """(case, rank) -> the rounds that rank timed the case in (kept by the group's rank 0, for per-rank figures)."""
    _taken: int = 0

    def take_round(self) -> int:
        """Round k of this session on rank r is `next_round + k * ranks + r`: no two ranks share an id."""
        self._taken += 1
        return self.next_round + (self._taken - 1) * self.world.world_size + self.world.rank

    def group_round(self, round_id: int) -> int:
        """The id the group's rank 0 gave this round: it seeds the round's order, so every rank of the
        group runs the cases in the same order (a context-parallel case on all of them at once)."""
        return round_id - self.world.rank if self.group.distributed else round_id

    def log_round(self, round_id: int, timing_order: str, order: list[str], cases: dict[str, Any], failed: dict[str, str] | None = None) -> dict[str, str]:
        """Every rank's finished round to `rounds.jsonl` (the group's rank 0 writes); the cases that
        failed in it on any rank, with their errors, so that every rank drops them alike."""
        what = f"timing round {round_id}"
        self.group.barrier(what)  # names a rank that hung or died
        errors: dict[str, str] = {}
        for rank, rid, order_r, cases_r, failed_r in self.group.all_gather((self.world.rank, round_id, order, cases, failed or {}), what):
            if self.group.is_main:
                self.write_round(rank, rid, timing_order, order_r, cases_r)
            for name, error in failed_r.items():
                errors.setdefault(name, f"rank {rank}: {error}" if self.group.distributed else error)
        return errors

    def write_round(self, rank: int, round_id: int, timing_order: str, order: list[str], cases: dict[str, Any]) -> None:
        """One round line: the one shape of a round line, interleaved or blocked, of any rank."""
        self.log.append({
            "round": round_id, "rank": rank, "session": self.session, "timing_order": timing_order,
            "round_seed": self.suite.round_seed, "order": order, "cases": cases,
        })
        for name in cases:
            self.rounds_of.setdefault((name, rank), []).append(round_id)


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
        self.hook = (CacheDitHook if case.hook.get("name") == "cache-dit" else DiffusersHook)(case.hook) if case.hook is not None else None
        """diffusers' own cache hook (`diffusers-hook` case) or cache-dit (`cache-dit` case); then there is no strategy."""
        self.outputs: dict[int, torch.Tensor] | None = None
        self.status = "pending"
        self.team = team_for(case.parallel, ctx.world, ctx.group)
        self._share = Share(ctx.world.rank, str(ctx.device))
        self._session_calls = 0
        suite = ctx.suite
        self.record = CaseRecord(
            case=case.name, identity=identity if identity is not None else case_identity(suite, case, ctx.registry, ctx.device.type), case_key=key,
            parts={kind: {"name": s.name, "params": s.params} for kind, s in case.parts.items()}, description=case.description, suite=suite.name,
            baseline_case=suite.baseline_for(case), settings=settings, batch=suite.batch, latent_shape=list(ctx.model.latent_shape),
            cond_len=ctx.condition.cond_len, device=str(ctx.device), rank=ctx.world.rank, world_size=ctx.world.world_size,
            suite_hash=suite.content_hash, pipeline_class=type(ctx.model.pipeline).__name__ if ctx.model.pipeline is not None else None,
            environment=ctx.kit.environment_file, started=_now(), baseline_key=baseline[1] if baseline is not None else None,
        )
        self._scheduler = make_scheduler(suite.sampler, ctx.model.scheduler_config)
        self._meter = CaseMeter(ctx.device, suite.nvml_interval_s)

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    # -- phase 1 ---------------------------------------------------------------------------

    def prepare(self, blocked_rounds: int = 0, reference: dict[int, torch.Tensor] | None = None) -> None:
        """Warmup, blocked rounds, scored outputs, FLOPs and FID images; never raises for the case's own failure.

        Every rank of the team calls it for the same cases in the same order: it ends in one
        exchange (`_settle`), where rank 0 joins and scores the ranks' shares."""
        ctx, suite = self.ctx, self.ctx.suite
        round_ids = [ctx.take_round() for _ in range(blocked_rounds)]  # taken before anything can fail: ids stay aligned over ranks
        try:
            self.strategy = build_strategy(self.case, ctx.registry, suite.probe_queries)
            reason, where = unsupported(self.case.execution, ctx.device, self.strategy), f"in {self.case.execution}"
            if not reason and ctx.model.pipeline is not None and self.case.execution != "eager":
                reason = EAGER_ONLY
            if not reason and self.hook is not None:
                reason, where = self.hook.refusal(ctx.model.spec, self.case.execution), f"on family '{ctx.model.spec.name}'"
            if not reason and self.strategy is not None:
                reason = next(filter(None, (p.refusal_on(ctx.model.spec) for p in self.strategy.parts.values())), None)
                where = f"on family '{ctx.model.spec.name}'"
            if not reason and self.case.parallel is not None:
                model = ctx.model
                reason = parallel_refusal(self.case.parallel, model.transformer, model.family, ctx.world, self.case.execution, getattr(torch, suite.dtype))
                where = f"with {self.case.parallel.label()}"
            if reason:
                self.status = "unsupported"
                self.record.update(status="unsupported", error=f"unsupported {where}: {reason}", finished=_now())
            else:
                self._prepare(round_ids)
                self.status = "ready"
        except Exception as exc:  # one broken case must not stop the suite
            self.fail(exc)
        self._settle(reference)

    def _prepare(self, round_ids: list[int]) -> None:
        ctx, suite, mode = self.ctx, self.ctx.suite, self.case.execution
        transformer = ctx.model.transformer
        execution = Execution(mode, transformer, self.strategy, suite.execution_options)
        # per-step marks are a forward pre-hook: eager only (a compiled or replayed forward runs no hooks)
        timer = CallTimer(ctx.device, transformer if suite.per_step and mode == "eager" else None, clock=suite.clock)
        warmup: list[float] = []
        try:
            with adapter_for(transformer).install(transformer, self.strategy), installed(self.hook, transformer), self._parallel(), execution as forward, self._meter:
                with timer:
                    # a strong mode warms up twice: the first call meets empty caches and unallocated
                    # buffers, so the second still compiles / captures its first step once
                    for i in range(suite.warmup if mode == "eager" else max(suite.warmup, 2)):
                        self._start_together("warmup call")
                        timing, _ = timer.time(lambda: self._call(suite.seeds[i % len(suite.seeds)], forward))
                        warmup.append(timing.seconds)
                        ctx.kit.progress.tick()
                    _finite(warmup, "warmup timing")
                    for round_id in round_ids:
                        with self._meter.timed_section():
                            timed = self._time_seeds(timer, forward)
                        self._share.rounds.append((round_id, timed))  # written by the team's rank 0 in `_settle`
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

    def _settle(self, reference: dict[int, torch.Tensor] | None) -> None:
        """The team's shares to its rank 0, which joins them, scores quality and decides the
        case's status for every rank (a failure on one rank fails the case on all)."""
        ctx, team, share = self.ctx, self.team.ranks, self._share
        share.status, share.error, share.traceback = self.status, self.record.error, self.record.traceback
        share.cold_s = self.record.cold_s
        shares = team.gather(share, f"case '{self.case.name}' prepared")
        self._share = Share(ctx.world.rank, str(ctx.device))  # features and outputs are sent: let them go
        decision = None
        if shares is not None:
            for part in shares:
                for round_id, timed in part.rounds:
                    ctx.write_round(part.rank, round_id, "blocked", [self.case.name], {self.case.name: timed})
            status, error, trace = settle(shares, team.distributed)
            if status != self.status or error != self.record.error:
                self.fail_as(error or "failed", trace)
            elif self.ready and not self.partner:
                try:
                    self._score(shares, reference)
                except Exception as exc:
                    self.fail(exc)
            decision = (self.status, self.record.error)
        status, error = team.broadcast(decision, f"status of case '{self.case.name}'")
        if status != self.status:
            self.fail_as(error, None)
        if not team.is_main:
            self.outputs = None  # rank 0 holds the case's outputs

    def _score(self, shares: list[Share], reference: dict[int, torch.Tensor] | None) -> None:
        """What one process would have measured, from every rank's share: outputs and FLOPs by
        seed, reuse counts summed, FID features in the one-process order; then quality."""
        ctx, suite = self.ctx, self.ctx.suite
        counted = standing(shares, self.team.spanning)
        self.outputs = merge_outputs(counted, suite.seeds)
        self.record.update(**merge_reuse([s.reuse for s in counted]))
        self.record.flops = summarize(merge_flops(counted, suite.seeds))
        self.record.update(
            quality=_quality(self.outputs, reference, ctx.kit),
            class_accuracy=_class_accuracy(self.outputs, ctx.condition, ctx.kit),
            clip=_clip(self.outputs, suite.prompt_texts, ctx.kit),
            fidelity=_fidelity(merge_fid(counted), ctx.suite.is_baseline(self.case), ctx.kit),
        )
        if self.team.ranks.distributed:
            self.record.ranks = [
                {"rank": s.rank, "device": s.device, "seeds": sorted(s.outputs), "fid_images": len(s.fid_indices), "cold_s": s.cold_s}
                for s in shares
            ]

    def _scored_calls(self, forward: Callable[..., torch.Tensor], mode: str) -> None:
        """One call per seed: the outputs scored for quality, the reuse, the FLOPs, then FID images.

        In eager mode the FLOP counter wraps the scored call itself (it runs the same kernels);
        a strong mode's outputs come from its own program, and the FLOPs from an eager call."""
        ctx, suite, strategy, share = self.ctx, self.ctx.suite, self.strategy or self.hook, self._share
        outputs: dict[int, torch.Tensor] = {}
        flops: dict[int, FlopCount] = {}
        seeds = self.team.calls.shard(suite.seeds)  # seed i to rank i mod N: each output has its one-process seed
        if strategy is not None:
            strategy.reset_stats()
        for seed in seeds:
            if mode == "eager":
                latents, flops[seed] = count_flops(lambda: self._call(seed, forward))
            else:
                latents = self._call(seed, forward)
            outputs[seed] = latents.detach().float().cpu()
            ctx.kit.progress.tick()
        stats = strategy.stats if strategy is not None else None
        if stats is not None:
            share.reuse = {
                "reused": stats.reused, "evaluations": stats.evaluations, "cache_bytes": stats.peak_cache_bytes,
                "reuse_map": [list(row) for row in stats.reuse_map],  # [step][block]: scored calls that reused there (a copy: timed rounds go on counting)
                "reuse_map_calls": stats.calls, "nonfinite_cached": stats.nonfinite_cached,
            }
        if mode != "eager":
            for seed in seeds:
                _, flops[seed] = count_flops(lambda: self._call(seed, None))
        if self.team.spanning:  # each rank counted its share of each call (a spanning case runs eager)
            flops = whole_call_flops(ctx.world, flops)
        _check_outputs(outputs)
        share.outputs, share.flops = outputs, flops
        if ctx.kit.fid_images:
            calls, count = self.team.calls, ctx.kit.fid_images
            call = lambda seed, labels: self._call(seed, forward, labels)  # noqa: E731
            images = generate_images(call, count, suite.batch, ctx.model.null_class, ctx.kit, calls.rank, calls.world_size)
            share.fid_indices = fid_image_indices(count, suite.batch, calls.rank, calls.world_size)
            if share.fid_indices and (self.team.ranks.is_main or not self.team.spanning):  # a split call's images are rank 0's too
                assert ctx.kit.extractor is not None
                share.fid_features = ctx.kit.extractor.features(images)  # only features travel, never the images

    # -- phase 2 ---------------------------------------------------------------------------

    def time_round(self) -> dict[str, Any] | None:
        """One interleaved round: install, one timed call per seed, remove. None if the case failed."""
        ctx, suite = self.ctx, self.ctx.suite
        transformer = ctx.model.transformer
        try:
            execution = Execution(self.case.execution, transformer, self.strategy, suite.execution_options)
            timer = CallTimer(ctx.device, transformer if suite.per_step and self.case.execution == "eager" else None, clock=suite.clock)
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
            self._start_together("timed call")
            timing, _ = timer.time(lambda: self._call(seed, forward))
            _finite([timing.seconds, *timing.steps], f"timing (seed {seed})")
            calls.append(timing.seconds)
            steps.append(timing.steps)
            self._session_calls += 1
            self.ctx.kit.progress.tick()
        per_step = self.ctx.suite.per_step and self.case.execution == "eager"
        return {"case_key": self.key, "calls_s": calls, "steps_s": steps if per_step else None}

    # -- the record ------------------------------------------------------------------------

    def finish(self, entries: list[dict[str, Any]]) -> CaseRecord:
        """The case's record, from its rounds (the first `repeats` of them) and its baseline's."""
        ctx, suite = self.ctx, self.ctx.suite
        paired = pair(rank_entries(entries, ctx.world.rank), self.round_ids[: suite.repeats], (self.case.name, self.key), self.baseline)
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
        if self.team.ranks.distributed and not self.team.spanning:
            self._rank_timings(entries)
        if self.team.spanning:
            baseline = suite.case(suite.baseline_for(self.case))
            record.parallel_note = parallel_note(self.case.parallel, baseline.name, baseline.parallel)
        if self.blocked and suite.timing_order == "interleaved":
            why = (
                f"{self.case.execution} mode keeps its compiled programs alive" if self.case.execution != "eager"
                else "under --shard cases each rank's rounds hold other cases, and a call split over the ranks needs them all at once"
            )
            record.timing_note = (
                f"timed blocked: {why}, so its repeats ran back to back and its rounds pair with the baseline's by position, not in time"
            )
        self.status = "done"
        return record

    def _rank_timings(self, entries: list[dict[str, Any]]) -> None:
        """Each rank's own timing figures, paired with the baseline it timed on its own device in the same rounds."""
        suite, by_rank = self.ctx.suite, {r["rank"]: r for r in self.record.ranks or []}
        for rank in range(self.team.ranks.world_size):
            ids = self.ctx.rounds_of.get((self.case.name, rank), [])[: suite.repeats]
            paired = pair(rank_entries(entries, rank), ids, (self.case.name, self.key), self.baseline)
            ratios = paired_ratios(paired.round_s, paired.baseline_round_s)
            by_rank.setdefault(rank, {"rank": rank}).update(
                round_ids=paired.round_ids, round_s=paired.round_s, baseline_round_s=paired.baseline_round_s,
                median_s=Measurement.of(paired.latency_s).median if paired.latency_s else None,
                speedup=float(statistics.median(ratios)) if ratios else None,
            )
        self.record.ranks = [by_rank[r] for r in sorted(by_rank)]

    def fail(self, exc: BaseException) -> None:
        self.status = "failed"
        message = str(exc).splitlines()[0] if str(exc) else ""
        error = message if isinstance(exc, NonFinite) else f"{type(exc).__name__}: {message}"
        self.record.update(status="failed", error=error, round_ids=list(self.round_ids), finished=_now())
        if not isinstance(exc, NonFinite):
            self.record.traceback = traceback.format_exc()

    def _start_together(self, what: str) -> None:
        """A call that spans the ranks starts when every rank is there: its time is the call's, not a wait for the slowest."""
        if self.team.spanning:
            self.team.ranks.barrier(f"{what} of case '{self.case.name}'")

    def _parallel(self) -> Any:
        """The case's context parallelism around its installed strategy (nothing for one rank)."""
        ctx = self.ctx
        return context_parallel(ctx.model.transformer, self.case.parallel, ctx.world, ctx.model.family, self.strategy)

    def fail_as(self, error: str, trace: str | None) -> None:
        """The case failed on another rank (`error` names it): it fails here too."""
        self.status = "failed"
        self.record.update(status="failed", error=error, round_ids=list(self.round_ids), finished=_now())
        if trace:
            self.record.traceback = trace

    def _call(self, seed: int, forward: Callable[..., torch.Tensor] | None, labels: list[int] | None = None) -> torch.Tensor:
        ctx = self.ctx
        given = ctx.condition
        if labels is not None and ctx.model.family == "dit":  # FID draws its own labels; captions stay the suite's
            given = labels_condition(labels, ctx.model.null_class, ctx.device)
        suite = ctx.suite
        observer = self.strategy or self.hook
        if ctx.model.pipeline is not None:  # the model's own pipeline: decoded images (`dqar_bench.model.pipelines`)
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


def _fidelity(features: Features | None, is_baseline: bool, kit: Instruments) -> dict[str, Any] | None:
    """FID / IS / KID of the case's images, from their features; the baseline's images may be the reference itself."""
    if not features:
        return None
    n = int(next(iter(features.values())).shape[0])
    if is_baseline and kit.quality.reference == "baseline" and kit.fidelity is None:
        kit.adopt_reference(features)  # the first baseline's; a baseline in another mode is scored against it
        return {"n": n, "reference": "this case (the baseline)", "feature_extractor": kit.quality.feature_extractor}
    if kit.fidelity is None:
        return {"n": n, "note": "no reference: the baseline did not finish"}
    return kit.fidelity.score_features(features)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
