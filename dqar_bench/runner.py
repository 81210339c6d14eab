"""The runner: one path for every case, baseline included, timed in interleaved rounds.

Everything the user gave is checked before the run directory is made (the directory
itself, the model, the class labels, the quality instruments), so a refused run leaves
nothing behind. The model is built once per suite. Then, in two phases:

1. Prepare, one case at a time (baselines first), with its strategy installed
   (`case_run.CaseRun.prepare`): warmup (the first call is the cold figure), one call per
   seed whose outputs are scored against the baseline's and counted for FLOPs and reuse,
   and the images for FID. Cases timed blocked (strong execution modes, which keep
   compiled programs alive, or `timing.order: blocked`) run their timed rounds here.
2. Time: `repeats` rounds; in each, every case runs once per seed, in an order shuffled
   per round from `timing.round_seed`, installing its strategy before its calls and
   removing it after (`dqar_bench.rounds`). Each finished round is fsynced to
   `rounds.jsonl`.

Then each case's record (its identity and key, every timed call, its seconds per round and
its baseline's in the same rounds, FLOPs, quality) is appended to `records.jsonl`. A case
that raises, or whose outputs or timings are not finite, is recorded as failed and the
suite goes on.

`--resume` finds finished cases by content (`dqar_bench.resume`); cases that still need
rounds continue from those in `rounds.jsonl`, and the baseline of their mode is timed again
in the new rounds, so every speedup pairs rounds that ran together.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from dqar_bench.case_run import CaseRun, RunContext, build_strategy
from dqar_bench.conditioning import condition_for
from dqar_bench.errors import DqarError, ModelError
from dqar_bench.identity import case_identity, case_key, measurement_settings
from dqar_bench.measure import environment
from dqar_bench.measure.flops import per_call as flops_per_call
from dqar_bench.measure.instruments import Instruments, build_instruments
from dqar_bench.measure.plot import plot_run
from dqar_bench.measure.progress import Progress as ProgressBar
from dqar_bench.models import LoadedModel, load_model
from dqar_bench.plugins import Registry, get_registry
from dqar_bench.records import RunDir, check_target
from dqar_bench.report import keep_previews, report_run
from dqar_bench.resume import ResumePlan, plan_resume
from dqar_bench.rounds import RoundLog, round_order, timed_as
from dqar_bench.sampling import Condition
from dqar_bench.suite import Case, Suite
from dqar_bench.table import render_markdown, results_frame

__all__ = ["build_strategy", "check_labels", "default_output_dir", "resolve_device", "run_case", "run_suite"]

Progress = Callable[[str], None]
RUNS_ROOT = Path("results") / "runs"
MAX_SUITE_NAME = 80


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DqarError(f"device '{name}' was asked for but no CUDA device is available; set 'device: cpu' or 'auto'")
    return device


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
) -> RunDir:
    """Run every case of `suite` into a run directory and write its tables."""
    registry = registry or get_registry()
    path = Path(output) if output is not None else default_output_dir(suite)
    check_target(path, resume)
    device = resolve_device(suite.device)
    cases = suite.ordered_cases()
    settings = measurement_settings(suite)
    identities = {c.name: case_identity(suite, c, registry, device.type) for c in cases}
    keys = {name: case_key(identity, settings) for name, identity in identities.items()}
    run: RunDir | None = RunDir.open(path, resume=True) if resume else None  # the directory exists: lock it first
    try:
        plan = plan_resume(run, cases, keys, identities, settings, rerun_changed) if run is not None else ResumePlan()
        for note in plan.notes:
            progress(note)
        if device.type == "cpu":
            torch.set_num_threads(suite.threads)
        model = load_model(suite.model, device, getattr(torch, suite.dtype), suite.allow_download, suite.pipeline, bool(suite.prompts))
        check_labels(suite, model)
        kit = build_instruments(suite.quality, model.vae, model.latent_channels, device, images=model.pipeline is not None)
        condition = condition_for(suite, model, device, getattr(torch, suite.dtype))
        if run is None:
            run = RunDir.open(path, resume=False)
        _Session(suite, run, registry, model, device, kit, condition, identities, keys, settings, plan, progress).execute()
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
) -> tuple[dict[str, Any], dict[int, torch.Tensor] | None]:
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
    """One invocation of `run_suite` on a run directory."""

    def __init__(self, suite: Suite, run: RunDir, registry: Registry, model: LoadedModel, device: torch.device, kit: Instruments,
                 condition: Condition, identities: dict[str, dict[str, Any]], keys: dict[str, str], settings: dict[str, Any],
                 plan: ResumePlan, progress: Progress) -> None:
        self.suite, self.run, self.kit, self.keys, self.plan = suite, run, kit, keys, plan
        self.identities, self.settings = identities, settings
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        self.log = RoundLog(run.rounds_path)
        self.ctx = RunContext(suite, model, device, registry, kit, condition, self.log, stamp, self.log.next_round())
        self.progress = progress
        self.cases = suite.ordered_cases()

    def execute(self) -> None:
        suite, run, kit = self.suite, self.run, self.kit
        run.write_text("suite.yaml", suite.path.read_text(encoding="utf-8"))
        kit.environment = environment.collect(self.ctx.device, suite.dtype, suite.seeds, suite.content_hash, self.ctx.model.transformer)
        run.write_text("environment.json", json.dumps(kit.environment, indent=1) + "\n")
        kit.reference_file = run.fid_reference_path
        self._adopt_renamed()
        done = set(self.plan.done) | set(self.plan.renamed)
        if self.cases[0].name in done:  # the first baseline's images are the FID reference
            kit.resume_reference()
        runs = self._plan(done)
        measured = [r for r in runs if not r.partner]
        calls = kit.calls_per_case(suite.warmup, suite.repeats, len(suite.seeds), suite.batch) + len(suite.seeds)
        kit.progress = ProgressBar(calls * len(measured) + (suite.warmup + suite.repeats * len(suite.seeds)) * (len(runs) - len(measured)))
        say = kit.progress.wrap(self.progress)
        for index, case in enumerate(self.cases, 1):
            if case.name in done:
                say(f"[{index}/{len(self.cases)}] {case.name}: already recorded, skipped")
        try:
            self._prepare_all(runs, say)
            self._time_rounds([r for r in runs if r.ready and not r.blocked], say)
            entries = self.log.entries()
            for one in measured:
                if one.ready:
                    record = one.finish(entries)
                    run.append(record)
                    say(_summary(record))
        finally:
            kit.progress.close()

    def _plan(self, done: set[str]) -> list[CaseRun]:
        """The cases to measure in this session and, for each execution mode where some are,
        its finished baseline as a partner: timed again beside them, not recorded again."""
        suite, keys = self.suite, self.keys
        entries = self.log.entries()
        used: set[tuple[str, int]] = set()  # rounds a record already stands on
        for record in self.run.records():
            used.update((record["case"], r) for r in record.get("round_ids") or [])
        todo = [c for c in self.cases if c.name not in done]
        prior = {  # rounds of an unfinished case (a crash mid-run): resume goes on from them
            c.name: [e["round"] for e in entries if timed_as(e, c.name, keys[c.name]) and (c.name, e["round"]) not in used][: suite.repeats]
            for c in todo
        }
        need = {c.name: suite.repeats - len(prior[c.name]) for c in todo}
        self.wanted: dict[str, int] = {}
        runs: list[CaseRun] = []
        for case in self.cases:
            baseline = suite.baseline_for(case)
            others = [need[c.name] for c in todo if suite.baseline_for(c) == case.name and c.name != case.name]
            if case.name in need:
                wanted = max([need[case.name], *others]) if suite.is_baseline(case) else need[case.name]
                partner = False
            elif suite.is_baseline(case) and any(n > 0 for n in others):
                wanted, partner = max(others), True
            else:
                continue
            self.wanted[case.name] = wanted
            runs.append(CaseRun(
                self.ctx, case, self.identities[case.name], keys[case.name], (baseline, keys[baseline]), self.settings,
                partner=partner, blocked=suite.timing_order == "blocked" or case.execution != "eager",
                prior_rounds=prior.get(case.name, []),
            ))
        return runs

    def _prepare_all(self, runs: list[CaseRun], say: Progress) -> None:
        references: dict[str, dict[int, torch.Tensor]] = {}
        for name in self.plan.done:
            if self.suite.is_baseline(self.suite.case(name)) and self.plan.done[name].get("status") == "ok":
                references[name] = self.run.load_outputs(name)  # read by plan_resume already
        for name in self.plan.renamed:
            if self.suite.is_baseline(self.suite.case(name)):
                references[name] = self.run.load_outputs(name)
        for index, one in enumerate(runs, 1):
            case = one.case
            self.kit.progress.case(case.name)
            role = " (timed again as the baseline of rerun cases)" if one.partner else ""
            say(f"[{index}/{len(runs)}] {case.name}: preparing{role} ...")
            one.prepare(self.wanted[case.name] if one.blocked else 0, references.get(self.suite.baseline_for(case)))
            if one.status in ("failed", "unsupported"):
                if not one.partner:
                    self.run.append(one.record)
                say(_summary(one.record))
                continue
            if not one.partner and one.outputs is not None:
                self.run.save_outputs(case.name, one.outputs)
                one.record["outputs_file"] = str(self.run.outputs_path(case.name).relative_to(self.run.path))
                keep_previews(self.run, case.name, one.outputs, self.kit.decode, say)  # decoded pictures for the report (VAE models)
                if self.suite.is_baseline(case):
                    references[case.name] = one.outputs

    def _time_rounds(self, runs: list[CaseRun], say: Progress) -> None:
        """Interleaved rounds: each case once per seed per round, in a seeded shuffled order."""
        total = max((self.wanted[r.case.name] for r in runs), default=0)
        for i in range(total):
            group = {r.case.name: r for r in runs if r.ready and i < self.wanted[r.case.name]}
            if not group:
                break
            round_id = self.ctx.take_round()
            order = round_order(list(group), self.suite.round_seed, round_id)
            say(f"round {i + 1}/{total}: {', '.join(order)}")
            timed: dict[str, Any] = {}
            for name in order:
                one = group[name]
                result = one.time_round()
                if result is None:  # the case failed in this round
                    if not one.partner:
                        self.run.append(one.record)
                    say(_summary(one.record))
                    continue
                timed[name] = result
            self.ctx.log_round(round_id, "interleaved", order, timed)
            for one in group.values():
                if one.ready:
                    one.round_ids.append(round_id)

    def _adopt_renamed(self) -> None:
        """A case under a new name whose content matches a finished record is that record:
        copied under the new name (outputs too), so tables and `compare` find it."""
        for name, found in self.plan.renamed.items():
            case = self.suite.case(name)
            record = {**found, "case": name, "renamed_from": found["case"], "baseline_case": self.suite.baseline_for(case)}
            if found.get("status") == "ok":
                shutil.copyfile(self.run.outputs_path(found["case"]), self.run.outputs_path(name))
                record["outputs_file"] = str(self.run.outputs_path(name).relative_to(self.run.path))
            self.run.append(record)


def _write_views(suite: Suite, run: RunDir, progress: Progress) -> None:
    names = {c.name for c in suite.cases}
    frame = results_frame([r for r in run.records() if r["case"] in names], suite.baseline)
    run.write_text("results.csv", frame.to_csv(index=False))
    table = render_markdown(frame)
    plot = plot_run(frame, run.path / "pareto.png", suite.name)
    run.write_text("table.md", f"# {suite.name}\n\n{table}\n")
    progress("")
    progress(table)
    progress(f"\nplot: {plot}")
    progress(f"report: {report_run(run, names)}")
    progress(f"results: {run.path}")


def check_labels(suite: Suite, model: LoadedModel) -> None:
    """Class labels must exist in the model, or its label embedding fails deep inside the forward."""
    if model.family != "dit":
        return
    bad = [c for c in suite.class_labels if not 0 <= c < model.null_class]
    if bad:
        raise ModelError(f"{suite.path}: field 'class_labels': {bad[0]} is out of range for model '{suite.model}' (0..{model.null_class - 1})")


def _summary(record: dict[str, Any]) -> str:
    if record["status"] == "unsupported":
        return f"    {record['case']}: {record['error']}"
    if record["status"] != "ok":
        return f"    {record['case']}: failed: {record['error']}"
    noise = record["latency"]["noise"]
    flops = flops_per_call(record)
    extra = f", {flops / 1e12:.4g} TFLOP/call" if flops is not None else ""
    return f"    {record['case']}: median {record['median_s'] * 1000:.1f} ms/call ({noise}), reuse {record['reuse_ratio']:.1%}{extra}"
