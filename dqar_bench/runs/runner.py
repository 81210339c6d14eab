"""The runner: one path for every case, baseline included, timed in interleaved rounds.

Everything the user gave is checked before the run directory is made (the directory
itself, the model, the class labels, the quality instruments), so a refused run leaves
nothing behind. The model is built once per suite. Then, in two phases:

1. Prepare, one case at a time (baselines first), with its strategy installed
   (`case_run.CaseRun.prepare`): warmup (the first call is the cold figure), one call per
   seed whose outputs are scored against the baseline's and counted for FLOPs and reuse,
   and the images for FID. Cases timed blocked (strong execution modes, which keep
   compiled programs alive, or `timing.order: blocked`) run their timed rounds here and are
   recorded at once, so a crash (or a rank that dies) keeps every case finished so far.
2. Time: `repeats` rounds; in each, every case runs once per seed, in an order shuffled
   per round from `timing.round_seed`, installing its strategy before its calls and
   removing it after (`dqar_bench.measure.rounds`). Each finished round is fsynced to
   `rounds.jsonl`.

Then each case's record (its identity and key, every timed call, its seconds per round and
its baseline's in the same rounds, FLOPs, quality) is appended to `records.jsonl`. A case
that raises, or whose outputs or timings are not finite, is recorded as failed and the
suite goes on.

`--resume` finds finished cases by content (`dqar_bench.runs.resume`); cases that still need
rounds continue from those in `rounds.jsonl`, and the baseline of their mode is timed again
in the new rounds, so every speedup pairs rounds that ran together.

Under torchrun the same path runs on every rank (`dqar_bench.runs.distributed.runs`): rank 0
decides and writes the run directory, every rank loads the model on its own device, makes
its share of each case's scored and FID calls and times every case against its own
baseline; with `--shard cases` each rank runs its own cases instead. A plain process is a
World of one.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import re
from pathlib import Path
from typing import Any, Callable

import torch

from dqar_bench.config.identity import case_identity, case_key, measurement_settings
from dqar_bench.config.suite import Case, Suite
from dqar_bench.core.files import read_bytes, write_atomic
from dqar_bench.core.plugins import Registry, get_registry
from dqar_bench.core.world import World
from dqar_bench.measure import environment
from dqar_bench.measure.case_record import CaseRecord
from dqar_bench.measure.flops import per_call as flops_per_call
from dqar_bench.measure.instruments import Instruments, build_instruments, load_features
from dqar_bench.measure.progress import Progress as ProgressBar
from dqar_bench.measure.records import RunDir, check_target
from dqar_bench.measure.rounds import RoundLog, round_order, timed_as
from dqar_bench.model.loaded import LoadedModel
from dqar_bench.model.sampling import Condition
from dqar_bench.model.suite_condition import condition_for
from dqar_bench.runs.case_run import CaseRun, RunContext, build_strategy
from dqar_bench.runs.distributed.runs import Outbox, check_devices, decide, deliver, my_cases, together
from dqar_bench.runs.distributed.shares import rank_entries
from dqar_bench.runs.resume import ResumePlan, outputs_digest, plan_resume
from dqar_bench.runs.suite_model import apply_resolution, check_labels, load_for_suite, resolve_device  # noqa: F401 (apply_resolution, check_labels: their old home)
from dqar_bench.views.plot import plot_run
from dqar_bench.views.report import keep_previews, report_run
from dqar_bench.views.table import render_markdown, results_frame
from dqar_bench.views.terminal import fit_tables

__all__ = ["build_strategy", "check_labels", "default_output_dir", "resolve_device", "run_case", "run_suite"]

Progress = Callable[[str], None]
RUNS_ROOT = Path("results") / "runs"
MAX_SUITE_NAME = 80


def default_output_dir(suite: Suite) -> Path:
    """`results/runs/<suite name>-<time>`: the name is made a single safe path component,
    so no suite name (`../x`, `/abs`, `a/b`) can place a run elsewhere."""
    safe = re.sub(r"[^A-Za-z0-9_.=-]+", "_", suite.name)[:MAX_SUITE_NAME].lstrip(".") or "suite"
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = RUNS_ROOT / f"{safe}-{stamp}"
    n = 1
    while path.exists():
        n += 1
        path = RUNS_ROOT / f"{safe}-{stamp}-{n}"
    return path


def run_suite(
    suite: Suite,
    output: str | Path | None = None,
    resume: bool = False,
    registry: Registry | None = None,
    progress: Progress = print,
    rerun_changed: bool = False,
    world: World | None = None,
    shard_cases: bool = False,
) -> RunDir | None:
    """Run every case of `suite` into a run directory and write its tables (rank 0 returns it; other ranks None)."""
    world = world or World()
    registry = registry or get_registry()
    device = world.device if world.distributed else resolve_device(suite.device)
    check_devices(world, device)
    if not world.is_main:
        progress = _quiet
    cases = suite.ordered_cases()
    settings = measurement_settings(suite)
    identities = {c.name: case_identity(suite, c, registry, device.type) for c in cases}
    keys = {name: case_key(identity, settings) for name, identity in identities.items()}
    run: RunDir | None = None

    def open_resumed() -> tuple[Path, ResumePlan]:
        nonlocal run
        path = Path(output) if output is not None else default_output_dir(suite)
        check_target(path, resume)
        if resume:
            run = RunDir.open(path, resume=True)  # the directory exists: lock it first
        return path, plan_resume(run, cases, keys, identities, settings, rerun_changed, {c.name: suite.baseline_for(c) for c in cases}) if run is not None else ResumePlan()

    try:
        path, plan = decide(world, open_resumed, "the run directory")
        for note in plan.notes:
            progress(note)
        if device.type == "cpu":
            torch.set_num_threads(suite.threads)

        def load() -> tuple[LoadedModel, Instruments, Condition]:
            model, condition = load_for_suite(suite, device)
            kit = build_instruments(
                suite.quality, model.vae, model.latent_channels, device, images=model.pipeline is not None, scores=world.is_main or shard_cases,
            )
            return model, kit, condition

        model, kit, condition = together(world, load, "loading the model")
        if run is None and world.is_main:
            run = RunDir.open(path, resume=False)
        sink = run if world.is_main else Outbox(path)
        _Session(suite, sink, registry, model, device, kit, condition, identities, keys, settings, plan, progress, world, shard_cases).execute()
        if world.is_main:
            _write_views(suite, run, progress)
    finally:
        if run is not None:
            run.close()
    return run


def run_case(
    suite: Suite,
    case: Case,
    model: LoadedModel,
    device: torch.device,
    registry: Registry,
    baseline_outputs: dict[int, torch.Tensor] | None,
    kit: Instruments | None = None,
    condition: Condition | None = None,
) -> tuple[CaseRecord, dict[int, torch.Tensor] | None]:
    """Measure one case on its own, its repeats timed blocked (benchmarks use it); never
    raises for a failure of the case itself."""
    kit = kit or Instruments(device=device)
    ctx = RunContext(suite, model, device, registry, kit, condition or condition_for(suite, model, device, getattr(torch, suite.dtype)))
    one = CaseRun(ctx, case, key=case.name, blocked=True)
    one.prepare(suite.repeats, baseline_outputs)
    if not one.ready:
        return one.record, None
    return one.finish(ctx.log.entries()), one.outputs


class _Session:
    """One invocation of `run_suite` on a run directory (on rank 0) or on an outbox (the other ranks)."""

    def __init__(self, suite: Suite, run: RunDir | Outbox, registry: Registry, model: LoadedModel, device: torch.device, kit: Instruments,
                 condition: Condition, identities: dict[str, dict[str, Any]], keys: dict[str, str], settings: dict[str, Any],
                 plan: ResumePlan, progress: Progress, world: World | None = None, shard_cases: bool = False) -> None:
        self.suite, self.run, self.kit, self.keys, self.plan = suite, run, kit, keys, plan
        self.identities, self.settings = identities, settings
        self.world = world = world or World()
        self.shard = shard_cases and world.distributed
        group = World(device=device) if self.shard else world  # who shares the one-device cases: this rank alone under --shard cases
        self.log = RoundLog(run.rounds_path)  # the other ranks keep theirs in memory (sent to rank 0 under --shard cases)
        stamp, next_round = world.broadcast(
            (_dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ"), self.log.next_round()) if world.is_main else None, "the session")
        self.ctx = RunContext(suite, model, device, registry, kit, condition, self.log, stamp, next_round, world, group)
        self.progress = progress
        self.cases = suite.ordered_cases()

    def execute(self) -> None:
        suite, run, kit, world = self.suite, self.run, self.kit, self.world
        run.write_text("suite.yaml", suite.text)
        kit.environment = environment.collect(self.ctx.device, suite.dtype, suite.seeds, suite.content_hash, self.ctx.model.transformer)
        kit.environment_file = run.save_environment(kit.environment)  # once per run; records name the file
        kit.reference_file = run.fid_reference_path
        if world.is_main:
            self._adopt_renamed()
        done = set(self.plan.done) | set(self.plan.renamed)
        if self.cases[0].name in done:  # the first baseline's images are the FID reference
            self._resume_reference()
        runs = self._plan(done)
        measured = [r for r in runs if not r.partner]
        calls = kit.calls_per_case(suite.warmup, suite.repeats, len(suite.seeds), suite.batch) + len(suite.seeds)
        kit.progress = ProgressBar(calls * len(measured) + (suite.warmup + suite.repeats * len(suite.seeds)) * (len(runs) - len(measured)), show=None if world.is_main else False)
        say = kit.progress.wrap(self.progress)
        for index, case in enumerate(self.cases, 1):
            if case.name in done:
                say(f"[{index}/{len(self.cases)}] {case.name}: already recorded, skipped")
        try:
            self._prepare_all(runs, say)
            self._time_rounds([r for r in runs if r.ready and not r.blocked], say)
            if self.ctx.group.is_main:
                entries = self.log.entries()
                for one in measured:
                    if one.ready and self._records(one):
                        record = one.finish(entries)
                        run.append(record)
                        say(_summary(record))
            if self.shard:
                self._collect()
        finally:
            kit.progress.close()

    def _records(self, one: CaseRun) -> bool:
        """Whether this rank records the case: the team's rank 0 does, but under `--shard cases`
        only rank 0 records a baseline (the others prepare it for their own cases)."""
        if one.partner or not one.team.ranks.is_main:
            return False
        return not (self.shard and self.suite.is_baseline(one.case) and not self.world.is_main)

    def _collect(self) -> None:
        """`--shard cases`: every rank's records, outputs and rounds into rank 0's run directory."""
        box = self.run.contents() if isinstance(self.run, Outbox) else None
        boxes = self.world.gather((box, self.log.entries() if box is not None else None), "records of every rank")
        if boxes is not None:
            for contents, rounds in boxes[1:]:
                deliver(self.run, self.log, contents, rounds)

    def _resume_reference(self) -> None:
        """On --resume, the first baseline's saved FID features are the reference again, on every rank that scores."""
        kit = self.kit
        if not self.shard:
            if self.world.is_main:
                kit.resume_reference()
            return
        path = kit.reference_file
        features = self.world.broadcast(load_features(path) if path is not None and kit.fid_images else None, "the FID reference")
        if features is not None and kit.quality.reference == "baseline":
            kit.fidelity = kit.fidelity_against(features)

    def _plan(self, done: set[str]) -> list[CaseRun]:
        """The cases to measure in this session and, for each execution mode where some are,
        its finished baseline as a partner: timed again beside them, not recorded again.
        Rank 0 decides from the run directory; under `--shard cases` each rank takes its share."""
        wanted, partners, prior = self.world.broadcast(self._decide(done) if self.world.is_main else None, "the cases to run")
        self.wanted = wanted
        for (name, rank), ids in prior.items():
            self.ctx.rounds_of[(name, rank)] = list(ids)
        baselines = {c.name for c in self.cases if self.suite.is_baseline(c)}
        spanning = {c.name for c in self.cases if c.parallel is not None}  # their team is every rank (`distributed.teams`)
        mine = set(my_cases([c.name for c in self.cases if c.name in wanted], baselines | spanning, self.world, self.shard))
        if self.shard and not self.world.is_main and not mine - baselines:
            mine = set()  # no case of its own: nothing to prepare a baseline for
        needed = {self.suite.baseline_for(c) for c in self.cases if c.name in mine and c.name not in baselines}
        runs: list[CaseRun] = []
        for case in self.cases:
            name = case.name
            if name not in mine or (self.shard and partners[name] and name not in needed):
                continue
            baseline = self.suite.baseline_for(case)
            runs.append(CaseRun(
                self.ctx, case, self.identities[name], self.keys[name], (baseline, self.keys[baseline]), self.settings,
                partner=partners[name], blocked=self.suite.timing_order == "blocked" or case.execution != "eager" or (self.shard and name in spanning),
                prior_rounds=prior.get((name, self.world.rank), []),
            ))
        return runs

    def _decide(self, done: set[str]) -> tuple[dict[str, int], dict[str, bool], dict[tuple[str, int], list[int]]]:
        """(rank 0) Rounds wanted per case, which cases are partners, and the rounds each rank already timed."""
        suite, keys = self.suite, self.keys
        entries = self.log.entries()
        used: set[tuple[str, int]] = set()  # rounds a record already stands on
        for record in self.run.records():
            used.update((record.case, r) for r in record.round_ids or [])
            for part in record.ranks or []:
                used.update((record.case, r) for r in part.get("round_ids") or [])
        todo = [c for c in self.cases if c.name not in done]
        prior: dict[tuple[str, int], list[int]] = {}  # rounds of an unfinished case (a crash mid-run): resume goes on from them
        if not self.shard:  # a sharded run puts a case on another rank next time: its rounds start afresh
            for rank in range(self.world.world_size):
                theirs = rank_entries(entries, rank)
                for c in todo:
                    ids = [e["round"] for e in theirs if timed_as(e, c.name, keys[c.name]) and (c.name, e["round"]) not in used]
                    if ids:
                        prior[(c.name, rank)] = ids[: suite.repeats]
        need = {c.name: suite.repeats - len(prior.get((c.name, 0), [])) for c in todo}
        wanted: dict[str, int] = {}
        partners: dict[str, bool] = {}
        for case in self.cases:
            others = [need[c.name] for c in todo if suite.baseline_for(c) == case.name and c.name != case.name]
            if case.name in need:
                wanted[case.name] = max([need[case.name], *others]) if suite.is_baseline(case) else need[case.name]
                partners[case.name] = False
            elif suite.is_baseline(case) and any(n > 0 for n in others):
                wanted[case.name], partners[case.name] = max(others), True
        return wanted, partners, prior

    def _references(self) -> dict[str, dict[int, torch.Tensor]]:
        """Outputs of the finished baselines (quality is scored against them), on every rank that scores."""
        references: dict[str, dict[int, torch.Tensor]] = {}
        if self.world.is_main:
            for name in self.plan.done:
                if self.suite.is_baseline(self.suite.case(name)) and self.plan.done[name].ok:
                    references[name] = self.run.load_outputs(name)  # read by plan_resume already
            for name in self.plan.renamed:
                if self.suite.is_baseline(self.suite.case(name)):
                    references[name] = self.run.load_outputs(name)
        return self.world.broadcast(references, "the baselines' outputs") if self.shard else references

    def _prepare_all(self, runs: list[CaseRun], say: Progress) -> None:
        references = self._references()
        for index, one in enumerate(runs, 1):
            case = one.case
            self.kit.progress.case(case.name)
            role = " (timed again as the baseline of rerun cases)" if one.partner else ""
            say(f"[{index}/{len(runs)}] {case.name}: preparing{role} ...")
            one.prepare(self.wanted[case.name] if one.blocked else 0, references.get(self.suite.baseline_for(case)))
            if one.status in ("failed", "unsupported"):
                if self._records(one):
                    self.run.append(one.record)
                say(_summary(one.record))
                continue
            if self.suite.is_baseline(case) and one.outputs is not None:
                references[case.name] = one.outputs
            if self._records(one) and one.outputs is not None:
                self.run.save_outputs(case.name, one.outputs)
                one.record.outputs_file = str(self.run.outputs_path(case.name).relative_to(self.run.path))
                one.record.outputs_sha256 = outputs_digest(one.outputs)
                keep_previews(self.run, case.name, one.outputs, self.kit.decode, say)  # decoded pictures for the report (VAE models)
            if one.blocked and self._records(one):  # its rounds are done (and its baseline's, prepared before it): record it now
                record = one.finish(self.log.entries())
                self.run.append(record)
                say(_summary(record))

    def _time_rounds(self, runs: list[CaseRun], say: Progress) -> None:
        """Interleaved rounds: each case once per seed per round, in a seeded shuffled order.
        The team's ranks run their rounds side by side, each on its own device; a case that
        fails on one rank is dropped on all."""
        total = max((self.wanted[r.case.name] for r in runs), default=0)
        for i in range(total):
            group = {r.case.name: r for r in runs if r.ready and i < self.wanted[r.case.name]}
            if not group:
                break
            round_id = self.ctx.take_round()
            order = round_order(list(group), self.suite.round_seed, self.ctx.group_round(round_id))
            say(f"round {i + 1}/{total}: {', '.join(order)}")
            timed: dict[str, Any] = {}
            failed: dict[str, str] = {}
            for name in order:
                result = group[name].time_round()
                if result is None:  # the case failed in this round
                    failed[name] = group[name].record.error or "failed"
                    continue
                timed[name] = result
            errors = self.ctx.log_round(round_id, "interleaved", order, timed, failed)
            for name, one in group.items():
                if name in errors:
                    if one.ready or one.record.error != errors[name]:
                        one.fail_as(errors[name], one.record.traceback)
                    if self._records(one):
                        self.run.append(one.record)
                    say(_summary(one.record))
                elif one.ready:
                    one.round_ids.append(round_id)

    def _adopt_renamed(self) -> None:
        """A case under a new name whose content matches a finished record is that record:
        copied under the new name (outputs too), so tables and `compare` find it."""
        for name, found in self.plan.renamed.items():
            case = self.suite.case(name)
            record = dataclasses.replace(found, case=name, renamed_from=found.case, baseline_case=self.suite.baseline_for(case))
            if found.ok:
                write_atomic(self.run.outputs_path(name), read_bytes(self.run.outputs_path(found.case), self.run.path), self.run.path)
                record.outputs_file = str(self.run.outputs_path(name).relative_to(self.run.path))
            self.run.append(record)


def _write_views(suite: Suite, run: RunDir, progress: Progress) -> None:
    names = {c.name for c in suite.cases}
    frame = results_frame([r for r in run.records() if r.case in names], suite.baseline)
    run.write_text("results.csv", frame.to_csv(index=False))
    table = render_markdown(frame)
    plot = plot_run(frame, run.path / "pareto.png", suite.name)
    run.write_text("table.md", f"# {suite.name}\n\n{table}\n")
    progress("")
    progress(fit_tables(table))  # the terminal's share; table.md keeps every column
    progress(f"\nplot: {plot}")
    progress(f"report: {report_run(run, names)}")
    progress(f"results: {run.path}")


def _quiet(line: str) -> None:
    """The progress of a rank other than 0: rank 0 speaks for the run."""


def _summary(record: CaseRecord) -> str:
    if record.status == "unsupported":
        return f"    {record.case}: {record.error}"
    if not record.ok:
        return f"    {record.case}: failed: {record.error}"
    noise = (record.latency or {}).get("noise")
    flops = flops_per_call(record.flops)
    extra = f", {flops / 1e12:.4g} TFLOP/call" if flops is not None else ""
    return f"    {record.case}: median {(record.median_s or 0) * 1000:.1f} ms/call ({noise}), reuse {record.reuse_ratio or 0:.1%}{extra}"
