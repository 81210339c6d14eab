"""`dqar-bench tune`: search one case's parameters for the speed / quality Pareto front.

Every trial is a case of the suite built with the trial's parameters and measured by the
harness's own path (`runner.run_case`: repeats 1, no warmup, no FID), against the
baseline's outputs, which are made once per invocation and reused by every trial. Speed is
the FLOP speedup over the baseline by default: counted exactly per call, so the search is
deterministic on a CPU and on a shared machine; `time` uses the measured median instead
(a GPU, where timing is steady). Optuna's NSGA-II (multi-objective) proposes the
parameters; quality floors become its constraints, so infeasible trials rank behind
feasible ones instead of being thrown away.

The search space is what the parts declare (`Param.range`), or `--space`. Each finished
trial is appended to `trials.csv` at once, and a second invocation with the same output
folder hands those trials back to Optuna (`add_trial`) and goes on, so an interrupted
search loses at most the trial it was in. At the end the folder holds the Pareto plot, the
report page with the front (`report.html`, as `dqar-bench report DIR` writes it) and
`tuned.yaml`: the suite with the baseline, the case as given, and the fastest setting that
meets each floor, ready for `dqar-bench run`.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import json
import math
import sys
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import yaml

from dqar_bench.config.suite import Case, PartSpec, Suite, load_suite
from dqar_bench.core.errors import DqarError
from dqar_bench.core.parts import build_part
from dqar_bench.core.plugins import Registry, get_registry
from dqar_bench.measure.case_record import CaseRecord
from dqar_bench.measure.flops import per_call as flops_per_call
from dqar_bench.measure.instruments import build_instruments
from dqar_bench.measure.progress import Progress as ProgressBar
from dqar_bench.measure.tune_trials import META_FILE, METRICS, PLOT_FILE, SUITE_FILE, TRIALS_FILE, Metric, pareto_front, read_trials
from dqar_bench.runs.case_run import CaseRun, RunContext
from dqar_bench.runs.runner import default_output_dir, run_case
from dqar_bench.runs.suite_model import load_for_suite, resolve_device
from dqar_bench.views.report import report_run
from dqar_bench.views.tune_plot import plot_front

Say = Callable[[str], None]

OBJECTIVES = ("flops", "time")


@dataclass(frozen=True)
class Floor:
    """A quality the tuned setting must reach: `psnr >= 30`, `accuracy >= 0.99`, `lpips <= 0.1`."""

    metric: str
    value: float

    @property
    def label(self) -> str:
        return f"{self.metric}{'>=' if METRICS[self.metric].maximize else '<='}{self.value:g}"

    def violation(self, value: float | None) -> float:
        """How far `value` falls short (0: met); a missing figure falls short by infinity."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return math.inf
        gap = self.value - value if METRICS[self.metric].maximize else value - self.value
        return max(0.0, gap)


@dataclass(frozen=True)
class Dimension:
    """One searched parameter: `gate.threshold` in [low, high]."""

    kind: str
    param: str
    low: float
    high: float
    integer: bool

    @property
    def key(self) -> str:
        return f"{self.kind}.{self.param}"

    def round(self, value: float) -> float:
        """A proposal to 1/1000 of the range's order of magnitude, so tuned.yaml reads 0.237, not 0.23689241..."""
        if self.integer:
            return int(value)
        digits = 3 - math.floor(math.log10(self.high - self.low))
        return min(self.high, max(self.low, round(float(value), digits)))


@dataclass
class TuneOptions:
    case: str
    trials: int = 20
    output: str | Path | None = None
    objective: str = "flops"
    quality: str | None = None
    space: str | None = None
    floors: list[Floor] = field(default_factory=list)
    seeds: list[int] | None = None
    """Seeds to tune on; None: the suite's own (suites have no separate calibration seeds)."""
    sampler_seed: int = 0


@dataclass
class TuneResult:
    output: Path
    rows: list[dict[str, Any]]
    front: list[dict[str, Any]]
    picks: dict[str, dict[str, Any] | None]
    suite_path: Path
    plot: Path | str


# ---- checking what was asked, before anything is measured ----


def find_case(suite: Suite, name: str) -> Case:
    names = [c.name for c in suite.cases]
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; its cases: {', '.join(names)}"
        raise DqarError(f"{suite.path}: --case: no case '{name}' in the suite{hint}")
    case = suite.case(name)
    if suite.is_baseline(case):
        raise DqarError(f"{suite.path}: --case: '{name}' is the baseline, which has nothing to tune; name a case with a strategy")
    return case


def declared_space(case: Case, registry: Registry) -> list[Dimension]:
    """Every parameter of the case's parts that declares a range."""
    dims = []
    for kind, spec in case.parts.items():
        for p in registry.get(kind, spec.name).cls.parameters():
            if p.range is not None:
                dims.append(Dimension(kind, p.name, p.range[0], p.range[1], _is_int(p.type)))
    return dims


def parse_space(text: str, case: Case, registry: Registry) -> list[Dimension]:
    """`--space 'gate.threshold=0.1:0.9,gate.every=1:6'`: exactly the dimensions searched."""
    dims: list[Dimension] = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        key, eq, bounds = item.partition("=")
        kind, dot, param = key.strip().partition(".")
        low_text, colon, high_text = bounds.partition(":")
        if not (eq and dot and colon):
            raise DqarError(f"--space: '{item}' is not KIND.PARAM=LOW:HIGH (e.g. gate.threshold=0.1:0.9)")
        if kind not in case.parts:
            raise DqarError(f"--space: case '{case.name}' has no {kind} part; its parts: {', '.join(case.parts)}")
        params = {p.name: p for p in registry.get(kind, case.parts[kind].name).cls.parameters()}
        if param not in params:
            raise DqarError(f"--space: {kind} '{case.parts[kind].name}' has no parameter '{param}'{_suggest(param, params)}")
        integer = _is_int(params[param].type)
        if not integer and not _is_float(params[param].type):
            raise DqarError(f"--space: {key} is not a number ({params[param].type_name}); only numeric parameters can be searched")
        try:
            low, high = (int(low_text) if integer else float(low_text)), (int(high_text) if integer else float(high_text))
        except ValueError:
            raise DqarError(f"--space: {key}={bounds}: bounds must be {'integers' if integer else 'numbers'}") from None
        if not low < high:
            raise DqarError(f"--space: {key}={bounds}: the low bound must be below the high one")
        dims.append(Dimension(kind, param, low, high, integer))
    if not dims:
        raise DqarError(f"--space: '{text}' names no parameter, so there is nothing to search; give KIND.PARAM=LOW:HIGH")
    return dims


def check_metric(suite: Suite, name: str, flag: str) -> Metric:
    if name not in METRICS:
        raise DqarError(f"{flag}: unknown quality '{name}'{_suggest(name, METRICS)}; choose one of {', '.join(METRICS)}")
    metric = METRICS[name]
    if metric.needs is not None and getattr(suite.quality, metric.needs) is None:
        raise DqarError(f"{suite.path}: field 'quality.{metric.needs}': {flag} {name} needs it, and the suite does not measure {name}; set it or choose psnr/ssim")
    return metric


def _is_int(annotation: Any) -> bool:
    return annotation is int or any(a is int for a in _union(annotation))


def _is_float(annotation: Any) -> bool:
    return annotation is float or any(a is float for a in _union(annotation))


def _union(annotation: Any) -> tuple:
    return typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else ()


def _suggest(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


# ---- the search ----


def tune(suite: Suite, options: TuneOptions, registry: Registry | None = None, say: Say = print) -> TuneResult:
    """Run (or go on with) the search and write its folder; see the module docstring."""
    registry = registry or get_registry()
    if options.objective not in OBJECTIVES:
        raise DqarError(f"--objective: unknown objective '{options.objective}'{_suggest(options.objective, OBJECTIVES)}; choose flops or time")
    if options.trials < 1:
        raise DqarError(f"--trials: {options.trials} runs nothing; give 1 or more")
    case = find_case(suite, options.case)
    if case.hook is not None:
        raise DqarError(f"{suite.path}: --case: '{case.name}' runs a diffusers hook, whose parameters are not declared for tuning; tune a case built from parts")
    dims = parse_space(options.space, case, registry) if options.space is not None else declared_space(case, registry)
    if not dims:
        parts = ", ".join(f"{k} '{s.name}'" for k, s in case.parts.items())
        raise DqarError(f"{suite.path}: case '{case.name}': no tunable parameter (none of {parts} declares a range); give --space KIND.PARAM=LOW:HIGH")
    metric = check_metric(suite, options.quality or "psnr", "--quality")
    for floor in options.floors:
        check_metric(suite, floor.metric, f"--{'min' if METRICS[floor.metric].maximize else 'max'}-{floor.metric}")
    optuna = _optuna()
    output = Path(options.output) if options.output is not None else default_output_dir(suite) / "tune"
    meta = _meta(suite, case, options, dims, metric)
    done = _resume(output, meta)
    tuning = dataclasses.replace(
        suite, warmup=0, repeats=1, seeds=list(options.seeds or suite.seeds), quality=dataclasses.replace(suite.quality, fid=0),
    )
    output.mkdir(parents=True, exist_ok=True)
    (output / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    runner = _Trials(tuning, case, registry, metric, options, dims, say)
    try:
        runner.start(len(done), options.trials)
        study = _study(optuna, metric, options, dims, len(done))
        for row in done:
            study.add_trial(_frozen(optuna, row, dims, metric, options))
        given = given_values(case, dims, registry)
        if not done and given is not None:
            study.enqueue_trial(given)  # trial 1 is the case as written: the search starts from the user's own setting
        rows = list(done)
        with (output / TRIALS_FILE).open("a", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=_columns(dims, suite))
            if not done:
                writer.writeheader()
            for number in range(len(done), options.trials):
                trial = study.ask({d.key: _distribution(optuna, d) for d in dims})
                row = runner.run(number, {d.key: d.round(trial.params[d.key]) for d in dims})
                if row["status"] == "ok":
                    for label, violation in _violations(row, options.floors).items():
                        trial.set_constraint(label, violation)
                    study.tell(trial, [row["speedup"], row[metric.name]])
                else:
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                writer.writerow(_csv_row(row, writer.fieldnames))
                handle.flush()
                rows.append(row)
    except KeyboardInterrupt:
        print(f"interrupted; the finished trials are kept in {output / TRIALS_FILE} (go on: run again with -o {output})", file=sys.stderr)
        raise
    finally:
        runner.close()
    return _finish(suite, case, output, rows, metric, options, dims, say)


class _Trials:
    """The model, loaded once, and the baseline's outputs, made once; each trial is one case run."""

    def __init__(self, suite: Suite, case: Case, registry: Registry, metric: Metric, options: TuneOptions, dims: list[Dimension], say: Say) -> None:
        self.suite, self.case, self.registry, self.metric, self.options, self.dims, self.say = suite, case, registry, metric, options, dims, say
        self.durations: list[float] = []

    def start(self, done: int, total: int) -> None:
        suite = self.suite
        device = resolve_device(suite.device)
        if device.type == "cpu":
            torch.set_num_threads(suite.threads)
        model, self.condition = load_for_suite(suite, device)
        self.kit = build_instruments(suite.quality, model.vae, model.latent_channels, device, images=model.pipeline is not None)
        self.model, self.device = model, device
        calls = self.kit.calls_per_case(0, 1 if self.options.objective == "time" else 0, len(suite.seeds), suite.batch) + len(suite.seeds)
        self.kit.progress = ProgressBar(calls * (1 + total - done))
        self.total, self.remaining = total, total - done
        self.say = self.kit.progress.wrap(self.say)
        baseline = suite.case(suite.baseline_for(self.case))
        self.kit.progress.case(baseline.name)
        record, outputs = self._measure(baseline, None)
        if record.status != "ok" or outputs is None:
            raise DqarError(f"{suite.path}: the baseline '{baseline.name}' failed, so there is nothing to tune against: {record.error}")
        self.baseline, self.reference = record, outputs
        timed = f"{record.median_s * 1000:.1f} ms/call, " if record.median_s is not None else ""
        self.say(f"baseline '{baseline.name}': {timed}{flops_per_call(record.flops) or 0:.4g} FLOP/call; {self.remaining} trial(s) to run on seeds {suite.seeds}")

    def _measure(self, case: Case, reference: dict[int, torch.Tensor] | None) -> tuple[CaseRecord, dict[int, torch.Tensor] | None]:
        """The harness's own case path. For a FLOP search the timed round is left out (prepare
        alone scores the outputs and counts the FLOPs of one call per seed): half the calls."""
        if self.options.objective == "time":
            return run_case(self.suite, case, self.model, self.device, self.registry, reference, self.kit, self.condition)
        one = CaseRun(RunContext(self.suite, self.model, self.device, self.registry, self.kit, self.condition), case, key=case.name, blocked=True)
        one.prepare(0, reference)
        if not one.ready:
            return one.record, None
        return dataclasses.replace(one.record, status="ok"), one.outputs

    def run(self, number: int, params: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        trial_case = with_params(self.case, params, f"{self.case.name}-trial{number}")
        row: dict[str, Any] = {"trial": number + 1, **params}
        try:
            for kind, spec in trial_case.parts.items():
                build_part(self.registry.get(kind, spec.name).cls, spec.params)
        except ValueError as exc:  # a combination the part refuses (a warmup past the steps, ...)
            record = CaseRecord(case=trial_case.name, identity={}, status="failed", error=str(exc))
        else:
            self.kit.progress.case(trial_case.name)
            record, _ = self._measure(trial_case, self.reference)
        row.update(self._figures(record))
        row["seconds"] = round(time.perf_counter() - started, 3)
        self.durations.append(row["seconds"])
        self.say(self._line(number, row))
        return row

    def _figures(self, record: CaseRecord) -> dict[str, Any]:
        if record.status != "ok":
            return {"status": "failed", "error": record.error.splitlines()[0] if record.error else "failed"}
        if self.options.objective == "flops":
            base, mine = flops_per_call(self.baseline.flops), flops_per_call(record.flops)
            speedup = base / mine if base and mine else math.nan
        else:
            speedup = self.baseline.median_s / record.median_s if self.baseline.median_s and record.median_s else math.nan
        row = {"status": "ok", "speedup": speedup, "reuse_ratio": record.reuse_ratio}
        row.update({name: metric.read(record) for name, metric in METRICS.items() if _measured(self.suite, metric)})
        if not all(_finite_or_inf(row.get(k)) for k in ("speedup", self.metric.name)):
            return {"status": "failed", "error": f"no {self.options.objective} speedup or {self.metric.name} in the record"}
        row["feasible"] = not any(_violations(row, self.options.floors).values())
        return row

    def _line(self, number: int, row: dict[str, Any]) -> str:
        self.remaining -= 1
        eta = (sum(self.durations) / len(self.durations)) * self.remaining
        params = ", ".join(f"{k}={_fmt(row[k])}" for k in (d.key for d in self.dims))
        if row["status"] != "ok":
            what = f"failed: {row['error']}"
        else:
            quality = row[self.metric.name]
            what = f"{row['speedup']:.3f}x {self.options.objective}, {self.metric.name} {_fmt(quality)}{'' if row['feasible'] else ', infeasible'}"
        return f"trial {number + 1}/{self.total}: {params}: {what} ({row['seconds']:.1f} s; ETA {_clock(eta)})"

    def close(self) -> None:
        kit = getattr(self, "kit", None)
        if kit is not None:
            kit.progress.close()


def with_params(case: Case, params: dict[str, Any], name: str) -> Case:
    """The case with some part parameters set (`{"gate.threshold": 0.3}`), under a new name."""
    parts = dict(case.parts)
    for key, value in params.items():
        kind, _, param = key.partition(".")
        spec = parts[kind]
        parts[kind] = PartSpec(spec.kind, spec.name, {**spec.params, param: value})
    return dataclasses.replace(case, name=name, base="", parts=parts)


def given_values(case: Case, dims: list[Dimension], registry: Registry) -> dict[str, Any] | None:
    """The case's own values of the searched parameters (its defaults where it sets none); None where one lies outside the space."""
    values = {}
    for d in dims:
        spec = case.parts[d.kind]
        value = spec.params.get(d.param, build_part(registry.get(d.kind, spec.name).cls, spec.params).params()[d.param])
        if not isinstance(value, (int, float)) or not d.low <= value <= d.high:
            return None
        values[d.key] = value
    return values


def _study(optuna: Any, metric: Metric, options: TuneOptions, dims: list[Dimension], done: int) -> Any:
    """A resumed search seeds its sampler past the trials it read back, or it would propose their parameters again."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    population = max(4, min(50, options.trials // 2))  # at least two generations, so NSGA-II breeds within --trials
    sampler = optuna.samplers.NSGAIISampler(population_size=population, seed=options.sampler_seed + done)  # constraints: Trial.set_constraint
    return optuna.create_study(directions=["maximize", "maximize" if metric.maximize else "minimize"], sampler=sampler)


def _distribution(optuna: Any, d: Dimension) -> Any:
    if d.integer:
        return optuna.distributions.IntDistribution(int(d.low), int(d.high))
    return optuna.distributions.FloatDistribution(float(d.low), float(d.high))


def _frozen(optuna: Any, row: dict[str, Any], dims: list[Dimension], metric: Metric, options: TuneOptions) -> Any:
    """A trial read back from trials.csv, as Optuna would have recorded it."""
    params = {d.key: row[d.key] for d in dims}
    distributions = {d.key: _distribution(optuna, d) for d in dims}
    if row["status"] != "ok":
        return optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, params=params, distributions=distributions)
    constraints = {f"constraints:{label}": v for label, v in _violations(row, options.floors).items()}  # as Trial.set_constraint keeps them
    return optuna.trial.create_trial(
        params=params, distributions=distributions, values=[row["speedup"], row[metric.name]], system_attrs=constraints,
    )


def _violations(row: dict[str, Any], floors: Sequence[Floor]) -> dict[str, float]:
    """Optuna's constraints (feasible where all <= 0), by floor: the loosest floor of each
    metric, so a trial is feasible where it meets at least one of the floors asked for."""
    loosest: dict[str, Floor] = {}
    for f in floors:
        keep = loosest.get(f.metric)
        if keep is None or (f.value < keep.value if METRICS[f.metric].maximize else f.value > keep.value):
            loosest[f.metric] = f
    return {f.label: f.violation(row.get(f.metric)) for f in loosest.values()}


# ---- the trials file ----


def _columns(dims: list[Dimension], suite: Suite) -> list[str]:
    measured = [name for name, m in METRICS.items() if _measured(suite, m)]
    return ["trial", "status", *(d.key for d in dims), "speedup", "reuse_ratio", *measured, "feasible", "seconds", "error"]


def _measured(suite: Suite, metric: Metric) -> bool:
    return metric.needs is None or getattr(suite.quality, metric.needs) is not None


def _csv_row(row: dict[str, Any], columns: Any) -> dict[str, Any]:
    return {c: ("" if row.get(c) is None else row.get(c)) for c in columns}


def _meta(suite: Suite, case: Case, options: TuneOptions, dims: list[Dimension], metric: Metric) -> dict[str, Any]:
    """What a trials file belongs to: a resumed search must be the same search."""
    return {
        "suite": suite.name, "suite_hash": suite.content_hash, "case": case.name, "objective": options.objective, "quality": metric.name,
        "space": [dataclasses.asdict(d) for d in dims], "seeds": list(options.seeds or suite.seeds),
    }


def _resume(output: Path, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The trials already in `output`, after checking they are of this search."""
    trials = output / TRIALS_FILE
    if not trials.exists():
        if output.exists() and any(p.name != META_FILE for p in output.iterdir()):  # tune.json alone: stopped before its first trial
            raise DqarError(f"-o {output}: the folder holds other files and no {TRIALS_FILE}; give an empty or new folder")
        return []
    try:
        before = json.loads((output / META_FILE).read_text())
    except (OSError, ValueError):
        before = None
    if not isinstance(before, dict):
        raise DqarError(f"-o {output}: {TRIALS_FILE} has no readable {META_FILE} beside it, so it cannot be resumed; give a new folder")
    changed = [k for k in meta if before.get(k) != meta[k]]
    if changed:
        raise DqarError(f"-o {output}: its trials are of another search ({', '.join(changed)} differ); give a new folder, or the same options")
    return read_trials(output, meta)


# ---- the results ----


def best_for(rows: list[dict[str, Any]], floor: Floor, floors: Sequence[Floor] = ()) -> dict[str, Any] | None:
    """The fastest finished trial that meets `floor` and the loosest of `floors` on every other
    metric (ties: the better quality on `floor`'s metric)."""
    sign = 1 if METRICS[floor.metric].maximize else -1
    others = [f for f in floors if f.metric != floor.metric]
    meets = [r for r in rows if r["status"] == "ok" and floor.violation(r.get(floor.metric)) == 0
             and not any(_violations(r, others).values())]
    return max(meets, key=lambda r: (r["speedup"], sign * r[floor.metric]), default=None)


def _finish(suite: Suite, case: Case, output: Path, rows: list[dict[str, Any]], metric: Metric, options: TuneOptions,
            dims: list[Dimension], say: Say) -> TuneResult:
    front = pareto_front(rows, metric)
    if options.floors:
        picks = {f.label: best_for(rows, f, options.floors) for f in options.floors}
    else:
        picks = {f"front{i}": r for i, r in enumerate(front)}
    plot = plot_front(rows, front, output / PLOT_FILE, metric.name, options.floors, f"{suite.name}: {case.name}", options.objective)
    suite_path = write_suite(suite, case, picks, dims, output / SUITE_FILE)
    for label, row in picks.items():
        if row is None:
            say(f"{label}: no trial meets it")
        else:
            say(f"{label}: trial {row['trial']}: {', '.join(f'{d.key}={_fmt(row[d.key])}' for d in dims)}: "
                f"{row['speedup']:.3f}x {options.objective}, {metric.name} {_fmt(row[metric.name])}{_as_written(case, row, dims)}")
    say(f"trials: {output / TRIALS_FILE}\nplot: {plot}\nreport: {report_run(output)}\nsuite: {suite_path} (measure it with `dqar-bench run {suite_path}`)")
    return TuneResult(output, rows, front, picks, suite_path, plot)


def write_suite(suite: Suite, case: Case, picks: dict[str, dict[str, Any] | None], dims: list[Dimension], path: Path) -> Path:
    """The suite file with the baseline, the case as given and one case per pick; checked by loading it."""
    data = yaml.safe_load(suite.text)  # the suite's own document of its file
    baseline = suite.case(suite.baseline_for(case))
    cases = [_case_yaml(baseline, baseline.base_name), _case_yaml(case, case.base_name)]  # the case as written: the pick of floors it meets best
    labels: dict[int, list[str]] = {}  # trial -> the floors it is the pick of: one case per trial
    for label, row in picks.items():
        if row is not None:
            labels.setdefault(row["trial"], []).append(label)
    rows = {row["trial"]: row for row in picks.values() if row is not None}
    for trial, names in labels.items():
        row = rows[trial]
        if _as_written(case, row, dims):
            continue  # already in the suite
        name = f"{case.base_name}-{_safe(names[-1])}"
        tuned = with_params(case, {d.key: row[d.key] for d in dims}, name)
        cases.append(_case_yaml(tuned, name, f"tuned for {', '.join(names)}: trial {trial}, {row['speedup']:.3f}x"))
    data.update(name=f"{suite.name}-tuned", baseline=baseline.base_name, cases=cases)
    data.pop("execution", None)  # each case carries its own mode
    path.write_text(
        f"# Written by `dqar-bench tune` from {suite.path} (case '{case.name}'): the baseline, the case as given,\n"
        f"# and the fastest setting found for each quality floor. Measure it with `dqar-bench run {path.name}`.\n"
        + yaml.safe_dump(data, sort_keys=False), encoding="utf-8",
    )
    load_suite(path)  # a suite that does not validate is a bug here, not the user's
    return path


def _case_yaml(case: Case, name: str, description: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name}
    if description or case.description:
        out["description"] = description or case.description
    for kind, spec in case.parts.items():
        out[kind] = {"name": spec.name, **spec.params}
    if case.execution != "eager":
        out["execution"] = case.execution
    return out


def _as_written(case: Case, row: dict[str, Any], dims: list[Dimension]) -> str:
    same = with_params(case, {d.key: row[d.key] for d in dims}, case.name).parts == case.parts
    return f" (the case as written, '{case.name}')" if same else ""


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise DqarError("`dqar-bench tune` needs Optuna, which is not installed; install the extra: pip install 'dqar-bench[tune]'") from None
    return optuna


def _safe(label: str) -> str:
    return label.replace(">=", "-min").replace("<=", "-max")


def _finite_or_inf(value: Any) -> bool:
    return isinstance(value, (int, float)) and not math.isnan(value)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "identical" if math.isinf(value) else f"{value:.4g}"
    return str(value)


def _clock(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s"
