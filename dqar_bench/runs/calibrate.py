"""`dqar-bench calibrate`: measure a model's signals and find each case's threshold for a target reuse.

A threshold is a property of one model, sampler and step count, not of a method: TeaCache's
0.4 skips other steps on FLUX than on Wan, and normalised entropy sits at other heights on a
16-token digit model than on a 4096-token FLUX. So before a table compares methods, each
is set on the model at hand, on inputs of its own (seeds after the suite's, never the
measured ones):

1. Signals. One untouched sampling call per calibration seed records what every gate reads
   (`dqar_bench.runs.signal_record`): entropy per block, schedule SNR, the residual change
   FirstBlockCache reads, TeaCache's modulated-input change with the output's, MagCache's
   ratios per CFG branch. From them the two published fits are made as their authors make
   them: MagCache's ratios, TeaCache's rescale polynomial (`numpy.polyfit`).
2. Thresholds. For each case whose gate has a threshold (`Gate.THRESHOLD`), the value that
   gives each target reuse is found by running the case itself: the reuse of a threshold
   depends on everything else in the case (its cache, scheduler, warm-up, caps) and, for
   gates that accumulate (TeaCache, MagCache), on which steps were skipped before, so no
   reading of the untouched signals alone would give it exactly. Reuse only grows (or, for
   `THRESHOLD_RAISES_REUSE = False`, only falls) with the threshold, so a bisection in log
   space finds the edge between two reuse levels; the level nearer the target wins.

The file (`dqar_bench.config.calibration`) keeps one entry per model, sampler, steps and
guidance; a suite reads it through `calibration: FILE` and `{calibrated: 0.5}`.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from dqar_bench.config import calibration as calib
from dqar_bench.config.calibration import MARKER, CalibrationError, Entry, Tag, Threshold, config_hash
from dqar_bench.config.part_spec import PartSpec
from dqar_bench.config.suite import Case, Suite
from dqar_bench.core.errors import DqarError
from dqar_bench.core.parts import build_part
from dqar_bench.core.plugins import Registry, get_registry
from dqar_bench.measure.progress import eta
from dqar_bench.model.loaded import LoadedModel
from dqar_bench.model.models import model_config
from dqar_bench.model.sampling import Condition
from dqar_bench.runs.case_run import build_strategy
from dqar_bench.runs.suite_model import lean_call, load_for_suite, resolve_device, suite_threads
from dqar_bench.strategy.adapter import adapter_for

Say = Callable[[str], None]

GRID = sorted({10.0 ** k for k in range(-6, 7)} | {round(0.1 * k, 1) for k in range(1, 10)} | {0.99, 0.999})
"""Where the search first looks: decades from 1e-6 to 1e6, and the tenths of (0, 1) where
normalised entropies and probabilities live; values a part refuses are left out."""
BISECTIONS = 24
"""Halvings of the log-space gap between two grid points: 2^-24 of a decade, far below any
difference a threshold's reuse can see, and at most 24 calls per target."""
CLOSE = 1e-4
"""Relative gap at which the bisection stops: the two ends give adjacent reuse levels."""


@dataclass
class CalibrateOptions:
    output: Path | None = None
    targets: tuple[float, ...] = calib.DEFAULT_TARGETS
    seeds: list[int] | None = None
    """Calibration seeds; None: as many as the suite has, right after its largest."""
    cases: list[str] | None = None
    """Cases whose threshold is searched; None: every case whose gate has one."""
    thresholds: bool = True
    """Search thresholds at all; False: the signals and fits only (one call per seed: what a
    large model on a GPU can afford before its run)."""


@dataclass
class CalibrationResult:
    path: Path
    entries: list[Entry]
    page: Path | None = None
    unreachable: list[str] = field(default_factory=list)
    """Markers of the suite (`{calibrated: t}`) whose target no threshold reaches, one line each."""


def check_targets(targets: tuple[float, ...]) -> None:
    bad = next((t for t in targets if not (isinstance(t, (int, float)) and 0 < t < 1)), None)
    if bad is not None:
        raise DqarError(f"--target-reuse: {bad:g} is not a share of block evaluations in (0, 1); give targets like 0.3 0.5 0.7")
    if not targets:
        raise DqarError("--target-reuse: give at least one target, e.g. 0.3 0.5 0.7")


def calibration_seeds(suite: Suite, seeds: list[int] | None) -> list[int]:
    """Seeds of the calibration's own: never the ones the suite measures."""
    if seeds is None:
        start = max(suite.seeds) + 1
        return list(range(start, start + len(suite.seeds)))
    shared = sorted(set(seeds) & set(suite.seeds))
    if shared:
        raise DqarError(f"--seeds: seed {shared[0]} is one the suite measures; calibrate on inputs of their own (e.g. --seeds {max(suite.seeds) + 1})")
    return list(seeds)


def default_output(suite: Suite) -> Path:
    return suite.calibration or Path("results") / "calibration" / f"{suite.path.stem}.json"


def calibrate(suites: list[Suite], options: CalibrateOptions, registry: Registry | None = None, say: Say = print) -> CalibrationResult:
    """Calibrate every suite (one per model of the file) into one file; see the module docstring."""
    registry = registry or get_registry()
    check_targets(options.targets)
    path = Path(options.output) if options.output is not None else default_output(suites[0])
    chosen = [_chosen_cases(suite, options.cases) if options.thresholds else [] for suite in suites]
    entries, unreachable, traces = [], [], []
    for suite, cases in zip(suites, chosen):
        entry, trace, missed = _calibrate_one(suite, cases, options, registry, say)
        entries.append(entry)
        traces.append((suite, trace))
        unreachable += missed
    written = calib.write(path, entries)
    page = _page(path, traces)
    say(render(entries))
    say(f"calibration: {written.path} (digest {written.digest})" + (f"\nsignals: {page}" if page else ""))
    return CalibrationResult(written.path, entries, page, unreachable)


def _chosen_cases(suite: Suite, names: list[str] | None) -> list[Case]:
    searchable = [c for c in suite.cases if c.parts and _threshold_param(c) is not None]
    if not names:
        return searchable
    out = []
    for name in names:
        if not any(c.name == name for c in suite.cases):
            raise DqarError(f"{suite.path}: --case '{name}': no such case (cases: {', '.join(c.name for c in suite.cases)})")
        case = suite.case(name)
        if case not in searchable:
            raise DqarError(f"{suite.path}: --case '{name}': its gate has no threshold to calibrate (gates with one: dqar, entropy, snr, residual-change, dbcache, teacache, magnitude, policy)")
        out.append(case)
    return out


def _threshold_param(case: Case) -> str | None:
    gate = case.parts.get("gate")
    return getattr(gate.info.cls, "THRESHOLD", None) if gate is not None and gate.info is not None else None


def _calibrate_one(suite: Suite, cases: list[Case], options: CalibrateOptions, registry: Registry, say: Say) -> tuple[Entry, Any, list[str]]:
    seeds = calibration_seeds(suite, options.seeds)
    device = resolve_device(suite.device)
    with suite_threads(suite, device):
        model, condition = load_for_suite(suite, device)
        say(f"{suite.name}: calibrating {suite.model} ({suite.sampler}, {suite.steps} steps) on seeds {seeds}")
        entry, trace = _signals(suite, model, condition, seeds, registry, say)
        missed: list[str] = []
        started = time.perf_counter()
        groups: dict[str | None, list[Case]] = {}
        for case in cases:  # a sweep over {calibrated: R} is one case as far as the search goes
            groups.setdefault(case.calibration_key or case.name, []).append(case)
        for n, same in enumerate(groups.values()):
            asked = sorted({float(m) for c in same for k, m in c.calibrated.items() if m != MARKER})
            threshold = _search(suite, same[0], entry, model, condition, seeds, tuple(sorted({*options.targets, *asked})), registry)
            for case in same:
                entry.thresholds[case.name] = threshold
                missed += _missed(suite, case, threshold)
            names = ", ".join(c.name for c in same)
            say(f"  {names}: {_describe(threshold)} ({eta(n + 1, len(groups), time.perf_counter() - started)})")
        return entry, trace, missed


def _signals(suite: Suite, model: LoadedModel, condition: Condition, seeds: list[int], registry: Registry, say: Say) -> tuple[Entry, Any]:
    """The untouched model's signals, and MagCache's and TeaCache's fits from them."""
    from dqar_bench.runs.signal_record import record_signals

    tag = Tag(suite.model, config_hash(model_config(suite.model, suite.allow_download)), suite.sampler, suite.steps, suite.guidance_scale)
    trace = record_signals(model, suite, condition, seeds, registry)
    try:
        coefficients = trace.teacache_fit()
    except ValueError as exc:  # too few steps and seeds for a degree-4 fit: no fit, and a line saying so
        coefficients = None
        say(f"  no TeaCache fit: {exc}")
    entry = Entry(tag, seeds, mag_ratios=trace.mag_ratios, teacache_coefficients=coefficients, signals=trace.to_json())
    say(f"  signals: {trace.steps} steps x {trace.blocks} blocks x {trace.branches} branch(es)"
        + (f"; TeaCache fit {', '.join(f'{c:.4g}' for c in coefficients)}" if coefficients else "; no TeaCache input on this family"))
    return entry, trace


# ---- the threshold search ----


class _Reuse:
    """Reuse of one case at a threshold value, measured by running it on the calibration seeds (cached by value)."""

    def __init__(self, suite: Suite, case: Case, param: str, model: LoadedModel, condition: Condition, seeds: list[int], registry: Registry) -> None:
        self.suite, self.case, self.param, self.model, self.condition, self.seeds, self.registry = suite, case, param, model, condition, seeds, registry
        self.seen: dict[float, float | None] = {}
        gate = case.parts["gate"]
        self.gate_cls, self.gate_params = gate.info.cls, gate.params  # type: ignore[union-attr]

    def valid(self, value: float) -> bool:
        try:
            build_part(self.gate_cls, {**self.gate_params, self.param: value})
        except (ValueError, TypeError):
            return False
        return True

    def __call__(self, value: float) -> float:
        if value not in self.seen:
            self.seen[value] = self._measure(value)
        result = self.seen[value]
        assert result is not None
        return result

    def _measure(self, value: float) -> float:
        gate = self.case.parts["gate"]
        parts = {**self.case.parts, "gate": PartSpec("gate", gate.name, {**gate.params, self.param: value})}
        strategy = build_strategy(dataclasses.replace(self.case, parts=parts), self.registry, self.suite.probe_queries)
        assert strategy is not None
        transformer = self.model.transformer
        with adapter_for(transformer).install(transformer, strategy), torch.no_grad():
            for seed in self.seeds:
                lean_call(self.suite, self.model, self.condition, seed, strategy)
        return strategy.stats.reuse_ratio


def _missed(suite: Suite, case: Case, threshold: Threshold) -> list[str]:
    """One line per `{calibrated: R}` of the case that no threshold reaches."""
    low, high = threshold.reachable
    return [
        f"{suite.path}: case '{case.name}': gate.{threshold.param}: {{calibrated: {float(m):g}}} is out of reach: "
        f"the case reuses {low:.1%} to {high:.1%} on this model; choose a target in that range"
        for k, m in case.calibrated.items() if k == f"gate.{threshold.param}" and threshold.values.get(float(m)) is None
    ]


def _search(
    suite: Suite, case: Case, entry: Entry, model: LoadedModel, condition: Condition, seeds: list[int], targets: tuple[float, ...], registry: Registry,
) -> Threshold:
    param = _threshold_param(case)
    assert param is not None
    case = _with_fits(suite, case, entry)
    wanted = sorted({float(t) for t in targets})
    reuse = _Reuse(suite, case, param, model, condition, seeds, registry)
    raises = getattr(case.parts["gate"].info.cls, "THRESHOLD_RAISES_REUSE", True)  # type: ignore[union-attr]
    grid = [v for v in GRID if reuse.valid(v)]
    if not raises:
        grid = grid[::-1]  # ordered so that reuse grows along it
    if not grid:
        raise DqarError(f"{suite.path}: case '{case.name}': gate '{case.parts['gate'].name}' takes no value of '{param}' between 1e-6 and 1e6 with its other parameters; check them")
    low, high = reuse(grid[0]), reuse(grid[-1])
    key = case.calibration_key or ""
    threshold = Threshold(case.parts["gate"].name, param, key, (low, high))
    for target in wanted:
        if not low - 1e-9 <= target <= high + 1e-9:
            threshold.values[target], threshold.reuse[target] = None, None
            continue
        value, got = _closest(reuse, grid, target)
        threshold.values[target], threshold.reuse[target] = value, got
    return threshold


def _with_fits(suite: Suite, case: Case, entry: Entry) -> Case:
    """The case with its `calibrated` fits (MagCache ratios, TeaCache coefficients) set from this calibration."""
    fits = {k: m for k, m in case.calibrated.items() if m == MARKER}
    if not fits:
        return case
    parts = dict(case.parts)
    for key in fits:
        kind, _, name = key.partition(".")
        value = getattr(entry, calib.FITS[name])
        if value is None:
            raise CalibrationError(f"{suite.path}: case '{case.name}': field '{key}': the model has no such signal to fit; give a value")
        spec = parts[kind]
        parts[kind] = dataclasses.replace(PartSpec(kind, spec.name, {**spec.params, name: value}), info=spec.info)
    return dataclasses.replace(case, parts=parts)


def _closest(reuse: _Reuse, grid: list[float], target: float) -> tuple[float, float]:
    """The grid neighbours around the target, then bisection in log space between them; the nearer level wins (ties: the higher reuse)."""
    lo, hi = 0, len(grid) - 1
    if reuse(grid[lo]) >= target:
        return grid[lo], reuse(grid[lo])
    while hi - lo > 1:  # reuse(grid[lo]) < target <= reuse(grid[hi])
        mid = (lo + hi) // 2
        if reuse(grid[mid]) >= target:
            hi = mid
        else:
            lo = mid
    a, b = grid[lo], grid[hi]
    for _ in range(BISECTIONS):
        if abs(math.log(b / a)) <= CLOSE:
            break
        mid = math.sqrt(a * b)
        if not reuse.valid(mid):
            break
        if reuse(mid) >= target:
            b = mid
        else:
            a = mid
    below, above = reuse(a), reuse(b)
    if target - below < above - target:
        return _tidy(a, toward=b), below
    return _tidy(b, toward=a), above


def _tidy(value: float, toward: float) -> float:
    """`value` to 6 significant digits, rounded away from `toward` so it stays on its side of the edge."""
    if value == 0:
        return value
    digits = 5 - math.floor(math.log10(abs(value)))
    scale = 10.0 ** digits
    rounded = (math.floor if toward > value else math.ceil)(value * scale) / scale
    return rounded if rounded > 0 else value


# ---- what it prints ----


def _describe(t: Threshold) -> str:
    reached = ", ".join(
        f"{target:g} -> {t.param} {t.values[target]:.6g} ({t.reuse[target]:.1%})" if t.values[target] is not None else f"{target:g} -> out of reach"
        for target in sorted(t.values)
    )
    return f"reuse {t.reachable[0]:.1%}..{t.reachable[1]:.1%}; {reached}"


def render(entries: list[Entry]) -> str:
    """One table per model: case, gate, parameter, then the value (and reuse reached) per target."""
    from dqar_bench.views.markdown import left_then_right, table

    blocks = []
    for entry in entries:
        targets = sorted({t for th in entry.thresholds.values() for t in th.values})
        head = ["case", "gate", "parameter", "reachable reuse", *(f"reuse {t:g}" for t in targets)]
        rows = []
        for case, th in entry.thresholds.items():
            cells = [
                "-" if th.values.get(t) is None else f"{th.values[t]:.4g} ({th.reuse[t]:.0%})" for t in targets
            ]
            rows.append([case, th.gate, th.param, f"{th.reachable[0]:.0%}-{th.reachable[1]:.0%}", *cells])
        fits = []
        if entry.mag_ratios is not None:
            fits.append(f"MagCache ratios: {_short_list(entry.mag_ratios)}")
        if entry.teacache_coefficients is not None:
            fits.append(f"TeaCache fit: [{', '.join(f'{c:.4g}' for c in entry.teacache_coefficients)}]")
        blocks.append(f"**{entry.tag.describe()}** (seeds {entry.seeds})\n\n" + (table(head, rows, left_then_right(len(head), 3)) if rows else "no threshold searched")
                      + ("\n\n" + "\n".join(fits) if fits else ""))
    return "\n\n".join(blocks)


def _short_list(values: Any) -> str:
    if values and isinstance(values[0], list):
        return " / ".join(_short_list(v) for v in values)
    shown = ", ".join(f"{v:.4g}" for v in values[:6])
    return f"[{shown}{', ...' if len(values) > 6 else ''}] ({len(values)})"


def _page(path: Path, traces: list[tuple[Suite, Any]]) -> Path | None:
    """The signals per step as a small HTML page beside the file."""
    from dqar_bench.views.calibration_page import write_signal_page

    if len(traces) == 1:
        suite, trace = traces[0]
        return write_signal_page(trace, path.with_suffix(".html"), f"{suite.name}: {suite.model}, {suite.sampler} {suite.steps} steps")
    pages = [write_signal_page(trace, path.with_name(f"{path.stem}-{suite.model}.html"), f"{suite.name}: {suite.model}") for suite, trace in traces]
    return pages[0] if pages else None


def report_unreachable(result: CalibrationResult) -> int:
    """Exit status: 2 with one line per out-of-reach marker (the file is written either way)."""
    for line in result.unreachable:
        print(f"error: {line}", file=sys.stderr)
    return 2 if result.unreachable else 0
