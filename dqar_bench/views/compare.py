"""Two runs side by side, as a CI gate: did any case get slower, costlier or worse, or change?

Each case is judged on what can be trusted about it:

- **Timing** is compared as each case's *speedup against its own run's baseline*, from the
  per-round ratios `baseline_round_s[r] / round_s[r]` (the baseline and the case timed in
  the same rounds), never as raw times across two runs, which moves with the machine. A
  case counts as slower when its speedup fell by more than `max_slowdown` (relative) *and*
  a two-sided Mann-Whitney U test on the two runs' ratios gives p < `alpha` (as asv does:
  a threshold alone flags noise, a test alone flags changes too small to matter). Where
  either run's ratios are unreliable (IQR / median over 25 %), or there are too few rounds
  for the test ever to reach `alpha`, or the test does not reach it, the case is
  *inconclusive*, not a regression. Records without rounds (an older dqar-bench) fall back
  to the median time per image across runs, and the table says so; across two different
  machines such raw times are not comparable, and a slowdown there is inconclusive.
- **FLOPs per call and the reuse ratio** are deterministic: any rise in FLOPs or fall in
  reuse is a regression, with no tolerance; the other direction is reported as a change.
- **Quality** is gated by default: PSNR to each run's own baseline down by more than 1 dB,
  class accuracy down by more than 2 points, FID up by more than 50 % (see docs/ci.md for
  why 50 %). Any NaN or inf in the new run's quality or timing is a regression; so is a NaN,
  inf or impossible quality value (a negative FID, an accuracy above 1) in either run,
  named by its column; a non-finite timing in the base run makes the case inconclusive.
- **What each case is** (`identity`: parts with every parameter and their plugin's
  version, model, sampler, steps, seeds, dtype, mode, dqar-bench version) is compared
  field by field and the differences printed; `strict` makes any difference fail.

Cases present in one run only are listed, not judged. The exit status is 0 when clean,
1 on any regression, 3 when some cases are inconclusive and none regressed (2 is a user
error, raised as `DqarError`). `benchmark_entries` writes a run in github-action-benchmark's
"customSmallerIsBetter" format: a list of {name, unit, value, range, extra}.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dqar_bench.core.errors import DqarError
from dqar_bench.measure import records
from dqar_bench.measure.case_record import CaseRecord
from dqar_bench.measure.flops import per_call as flops_per_call
from dqar_bench.measure.record_shape import check_shape
from dqar_bench.measure.rounds import paired_ratios
from dqar_bench.measure.stats import UNRELIABLE, Measurement, mann_whitney_u, min_detectable_p
from dqar_bench.views import markdown
from dqar_bench.views.case_diff import code_unrecorded, identity_diff
from dqar_bench.views.columns import column

ENVIRONMENT_KEYS = ("gpu", "driver", "cuda", "torch", "diffusers", "cpu", "dtype", "attention_backend", "git_commit")

EXIT_CLEAN, EXIT_REGRESSION, EXIT_INCONCLUSIVE = 0, 1, 3

TIMING_FIELDS = ("latency_s", "round_s", "baseline_round_s", "median_s", "per_image_s", "cold_s")
QUALITY_FIELDS = ("quality", "fidelity", "class_accuracy")


@dataclass(frozen=True)
class Rise:
    """How much a figure may rise: by an absolute amount, or relative to the base value."""

    amount: float
    relative: bool = False

    def exceeded(self, base: float, new: float) -> bool:
        limit = self.amount * abs(base) if self.relative else self.amount
        return new - base > limit

    def label(self) -> str:
        return f"{self.amount:.0%}" if self.relative else f"{self.amount:g}"


DEFAULT_MAX_SLOWDOWN = 0.05
DEFAULT_ALPHA = 0.01
DEFAULT_MAX_QUALITY_DROP = 1.0
"""dB of PSNR to each run's own baseline."""
DEFAULT_MAX_ACCURACY_DROP = 0.02
DEFAULT_MAX_FID_RISE = Rise(0.50, relative=True)
"""FID at 100 images is mostly estimator noise: on digits-dit, strategies that all still
draw the right digit (PSNR 23-50 dB to the baseline) score 113-152, the untouched baseline
itself 152.5, so a change that brings a strategy closer to the baseline can raise its FID
by 35 %; a collapsed strategy (PSNR 8.9 dB, 40 % accuracy) scores 2343 (+1436 %). 50 % sits
above the scatter and far below a collapse (docs/ci.md, "Why FID 50 %")."""


@dataclass
class Timing:
    """How one case's timing compares: as speedups (per-round ratios) or, without rounds,
    as times per image across runs."""

    kind: str
    """'speedup' or 'time per image'."""
    base: Measurement
    new: Measurement
    p_value: float
    method: str

    @property
    def change(self) -> float:
        """Relative change of the median figure (speedup or time per image)."""
        return self.new.median / self.base.median - 1.0

    @property
    def slowdown(self) -> float:
        """Positive when the case got slower, whichever figure is compared."""
        return -self.change if self.kind == "speedup" else self.change


@dataclass
class CaseChange:
    case: str
    status: str = "compared"
    """'compared', 'only in base', 'only in new', 'failed in base', 'failed in new',
    'failed in both' or 'unsupported in base / new / both'."""
    timing: Timing | None = None
    psnr_base: float | None = None
    psnr_new: float | None = None
    fid_base: float | None = None
    fid_new: float | None = None
    accuracy_base: float | None = None
    accuracy_new: float | None = None
    flops_base: int | None = None
    flops_new: int | None = None
    reuse_base: float | None = None
    reuse_new: float | None = None
    noise_base: str | None = None
    noise_new: str | None = None
    """The spread of each run's timed calls of the case: `noise` as every table has it (`views.columns`)."""
    identity: list[str] = field(default_factory=list)
    """'field: base -> new' for every difference in what the case is."""
    identity_recorded: bool = True
    regressions: list[str] = field(default_factory=list)
    inconclusive: list[str] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)
    """Differences that are not regressions (faster, fewer FLOPs, more reuse, fixed)."""

    @property
    def p_value(self) -> float | None:
        return self.timing.p_value if self.timing else None

    @property
    def change(self) -> float | None:
        return self.timing.change if self.timing else None

    @property
    def verdict(self) -> str:
        if self.regressions:
            return "**REGRESSION**: " + "; ".join(self.regressions)
        if self.inconclusive:
            return "inconclusive: " + "; ".join(self.inconclusive)
        lead = "" if self.status == "compared" else f"{self.status}: "
        if self.status.startswith(("only in", "unsupported", "failed in both")):
            return lead + "not compared"
        return lead + ("; ".join(self.changes) or "no change")


@dataclass
class Comparison:
    base: Path
    new: Path
    max_slowdown: float
    alpha: float
    max_quality_drop: float | None
    max_fid_rise: Rise | None
    changes: list[CaseChange]
    notes: list[str]
    max_accuracy_drop: float | None = None
    strict: bool = False
    runs_differ: list[str] = field(default_factory=list)
    """How the two runs differ in what they ran on ('model: a -> b'): said before anything else."""

    @property
    def regressed(self) -> bool:
        return any(c.regressions for c in self.changes)

    @property
    def inconclusive(self) -> bool:
        return any(c.inconclusive for c in self.changes)

    @property
    def exit_status(self) -> int:
        if self.regressed:
            return EXIT_REGRESSION
        return EXIT_INCONCLUSIVE if self.inconclusive else EXIT_CLEAN


@dataclass
class RunRecords:
    """A run as compare reads it: the latest record of each case, and its environment."""

    path: Path
    latest: dict[str, CaseRecord]
    environment: dict[str, Any]
    """Of its first case that names one; empty for a run that recorded none."""


def read_run(path: str | Path) -> RunRecords:
    """The latest record of each case in a run directory (or a records.jsonl file), and its environment."""
    path = Path(path)
    records_path = path / records.RECORDS if path.is_dir() else path
    if not records_path.is_file():
        raise DqarError(f"{path}: no records.jsonl there; give a run directory written by `dqar-bench run`")
    run = records.RunDir(records_path.parent)
    latest: dict[str, CaseRecord] = {}
    for record in run.records(records_path):
        check_shape(record, records_path)
        latest[record.case] = record
    if not latest:
        raise DqarError(f"{records_path}: holds no records")
    environment = next((env for env in map(run.environment_of, latest.values()) if env), {})
    return RunRecords(path, latest, environment)


def read_records(path: str | Path) -> dict[str, CaseRecord]:
    """The latest record of each case in a run directory (or a records.jsonl file)."""
    return read_run(path).latest


def compare_runs(
    base: str | Path,
    new: str | Path,
    max_slowdown: float = DEFAULT_MAX_SLOWDOWN,
    alpha: float = DEFAULT_ALPHA,
    max_quality_drop: float | None = DEFAULT_MAX_QUALITY_DROP,
    max_fid_rise: Rise | float | None = DEFAULT_MAX_FID_RISE,
    max_accuracy_drop: float | None = DEFAULT_MAX_ACCURACY_DROP,
    strict: bool = False,
) -> Comparison:
    """Compare every case of two runs; `None` switches a quality gate off."""
    if not 0.0 < alpha < 1.0:
        raise DqarError(f"option --alpha: {alpha} is not a significance level; give a number in (0, 1), e.g. 0.01")
    for option, value in (("--max-slowdown", max_slowdown), ("--max-quality-drop", max_quality_drop), ("--max-accuracy-drop", max_accuracy_drop)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise DqarError(f"option {option}: {value} must be a finite number >= 0")
    if isinstance(max_fid_rise, (int, float)):
        max_fid_rise = Rise(float(max_fid_rise))
    if max_fid_rise is not None and not (math.isfinite(max_fid_rise.amount) and max_fid_rise.amount >= 0):
        raise DqarError(f"option --max-fid-rise: {max_fid_rise.amount} must be a finite number >= 0")
    base_run, new_run = read_run(base), read_run(new)
    base_records, new_records = base_run.latest, new_run.latest
    machines = _machine_differences(base_run.environment, new_run.environment)
    judge = _Judge(max_slowdown, alpha, max_quality_drop, max_fid_rise, max_accuracy_drop, strict, machines)
    changes = [
        judge.case(case, base_records.get(case), new_records.get(case))
        for case in list(base_records) + [c for c in new_records if c not in base_records]
    ]
    notes = _environment_notes(base_run.environment, new_run.environment)
    fallback = [c.case for c in changes if c.timing is not None and c.timing.kind != "speedup"]
    if fallback:
        notes.append(
            f"no per-round timings in one run or both (written by an older dqar-bench) for {', '.join(fallback)}: their "
            "median times per image are compared across runs, so drift of the machine between the runs counts as change"
        )
    unknown = [c for c in base_records if c in new_records and code_unrecorded(base_records[c], new_records[c])]
    if unknown:
        notes.append(
            f"part code digests are recorded in one run only (the other was written before dqar-bench recorded them) for "
            f"{', '.join(unknown)}: whether those parts' code changed between the runs is unknown, and not counted as a change"
        )
    if any(not c.identity_recorded for c in changes if c.status == "compared"):
        notes.append("what a case is was read from record fields (no `identity` recorded: an older dqar-bench); part versions and defaults are not compared")
    return Comparison(Path(base), Path(new), max_slowdown, alpha, max_quality_drop, max_fid_rise, changes, notes, max_accuracy_drop, strict,
                      run_differences(base_run, new_run))


@dataclass
class _Judge:
    max_slowdown: float
    alpha: float
    max_quality_drop: float | None
    max_fid_rise: Rise | None
    max_accuracy_drop: float | None
    strict: bool
    machines: list[str] = field(default_factory=list)
    """How the two runs' machines differ ('cpu: A -> B'); raw times across them mean nothing."""

    def case(self, case: str, base: CaseRecord | None, new: CaseRecord | None) -> CaseChange:
        change = CaseChange(case)
        if base is None or new is None:
            change.status = "only in new" if base is None else "only in base"
            return change
        if base.timer and new.timer and base.timer != new.timer:
            raise DqarError(f"case '{case}': timed with {base.timer} in the base run and {new.timer} in the new one; times on two clocks do not pair (rerun one with the other's timing.clock)")
        change.identity, change.identity_recorded = identity_diff(base, new)
        if self.strict and change.identity:
            change.regressions.append(f"what the case is changed (--strict): {'; '.join(change.identity)}")
        if not (base.ok and new.ok):
            self._status(change, base, new)
            return change
        broken_new, broken_base = nonfinite_fields(new), nonfinite_fields(base)
        if broken_new:
            change.regressions.append(f"non-finite {', '.join(broken_new)}")
        impossible = [f"base {f} non-finite" for f in broken_base if f.startswith(QUALITY_FIELDS)]
        impossible += [f"{side} {f}" for side, r in (("base", base), ("new", new)) for f in impossible_quality(r)]
        if impossible:  # a quality figure that cannot be is a failed measurement, whichever run holds it
            change.regressions.append(f"failed quality measurement: {', '.join(impossible)}")
        elif broken_base:
            change.inconclusive.append(f"the base run holds non-finite {', '.join(broken_base)}, so it is no reference")
        self._timing(change, base, new)
        self._work(change, base, new)
        self._quality(change, base, new)
        return change

    def _status(self, change: CaseChange, base: CaseRecord, new: CaseRecord) -> None:
        s_base, s_new = base.status, new.status
        if "unsupported" in (s_base, s_new):
            sides = [side for side, s in (("base", s_base), ("new", s_new)) if s == "unsupported"]
            change.status = "unsupported in " + ("both" if len(sides) == 2 else sides[0])
        elif s_new != "ok" and s_base == "ok":
            change.status = "failed in new"
            change.regressions.append(f"failed: {new.error or ''}")
        elif s_base != "ok" and s_new == "ok":
            change.status = "failed in base"
            change.changes.append("fixed: it failed in the base run")
        else:
            change.status = "failed in both"

    def _timing(self, change: CaseChange, base: CaseRecord, new: CaseRecord) -> None:
        change.noise_base, change.noise_new = _noise(base), _noise(new)
        timing = compare_timing(base, new)
        change.timing = timing
        if timing is None:
            return
        slower = timing.slowdown > self.max_slowdown
        faster = -timing.slowdown > self.max_slowdown
        if not slower:
            if faster and timing.p_value < self.alpha:
                change.changes.append(f"faster ({_timing_change(timing)})")
            return
        unit = "rounds" if timing.kind == "speedup" else "samples"
        noisy = [side for side, m in (("base", timing.base), ("new", timing.new)) if m.relative_iqr > UNRELIABLE]
        if timing.kind != "speedup" and self.machines:
            change.inconclusive.append(
                f"{_timing_change(timing)} across different machines ({'; '.join(self.machines)}): raw times there are not comparable"
            )
        elif min_detectable_p(timing.base.n, timing.new.n) >= self.alpha:
            change.inconclusive.append(
                f"too few {unit} ({timing.base.n} and {timing.new.n}: the test cannot reach p < {self.alpha:g}) to call {_timing_change(timing)} slower"
            )
        elif noisy:
            change.inconclusive.append(
                f"{unit} too spread to judge ({' and '.join(noisy)}: IQR / median of the per-{unit[:-1]} figures over {UNRELIABLE:.0%}); "
                f"{_timing_change(timing)} not judged"
            )
        elif timing.p_value < self.alpha:
            change.regressions.append(f"slower: {_timing_change(timing)} (p={timing.p_value:.3g})")
        else:
            change.inconclusive.append(f"{_timing_change(timing)} not significant (p={timing.p_value:.3g})")

    def _work(self, change: CaseChange, base: CaseRecord, new: CaseRecord) -> None:
        """FLOPs and reuse are exact figures: any change counts."""
        change.flops_base, change.flops_new = flops_per_call(base.flops), flops_per_call(new.flops)
        if change.flops_base is not None and change.flops_new is not None and change.flops_new != change.flops_base:
            moved = f"FLOPs per call {_rel(change.flops_new, change.flops_base)} ({change.flops_base:,} -> {change.flops_new:,})"
            (change.regressions if change.flops_new > change.flops_base else change.changes).append(moved)
        change.reuse_base, change.reuse_new = base.reuse_ratio, new.reuse_ratio
        if _finite(change.reuse_base) and _finite(change.reuse_new) and change.reuse_new != change.reuse_base:
            moved = f"reuse {_pct(change.reuse_base)} -> {_pct(change.reuse_new)}"
            (change.regressions if change.reuse_new < change.reuse_base else change.changes).append(moved)

    def _quality(self, change: CaseChange, base: CaseRecord, new: CaseRecord) -> None:
        change.psnr_base, change.psnr_new = _psnr(base), _psnr(new)
        change.fid_base = (base.fidelity or {}).get("fid")
        change.fid_new = (new.fidelity or {}).get("fid")
        change.accuracy_base, change.accuracy_new = base.class_accuracy, new.class_accuracy
        worse = change.regressions
        if self.max_quality_drop is not None and _both(change.psnr_base, change.psnr_new):
            both_identical = math.isinf(change.psnr_base) and math.isinf(change.psnr_new)  # type: ignore[arg-type]
            if not both_identical and change.psnr_base - change.psnr_new > self.max_quality_drop:  # type: ignore[operator]
                worse.append(f"PSNR {_db(change.psnr_base)} -> {_db(change.psnr_new)} dB")
        if self.max_fid_rise is not None and _both(change.fid_base, change.fid_new):
            if self.max_fid_rise.exceeded(change.fid_base, change.fid_new):  # type: ignore[arg-type]
                worse.append(f"FID {change.fid_base:.3f} -> {change.fid_new:.3f}")
        if self.max_accuracy_drop is not None and _both(change.accuracy_base, change.accuracy_new):
            if change.accuracy_base - change.accuracy_new > self.max_accuracy_drop + 1e-12:  # type: ignore[operator]
                worse.append(f"class accuracy {change.accuracy_base:.1%} -> {change.accuracy_new:.1%}")


def compare_timing(base: CaseRecord, new: CaseRecord) -> Timing | None:
    """Per-round speedups where both records have rounds, else times per image; None when
    a side has no usable samples."""
    ratios_base, ratios_new = paired_ratios(base.round_s, base.baseline_round_s), paired_ratios(new.round_s, new.baseline_round_s)
    if ratios_base is not None and ratios_new is not None:
        kind, a, b = "speedup", ratios_base, ratios_new
    else:
        a, b = _per_image(base), _per_image(new)  # type: ignore[assignment]
        if a is None or b is None:
            return None
        kind = "time per image"
    test = mann_whitney_u(b, a)
    return Timing(kind, Measurement.of(a), Measurement.of(b), test.p_value, test.method)


def nonfinite_fields(record: CaseRecord) -> list[str]:
    """Names of the quality and timing fields that hold a NaN or an infinity."""
    found = []
    for key in QUALITY_FIELDS + TIMING_FIELDS:
        for path in _nonfinite_paths(getattr(record, key), key):
            found.append(path)
    return found


IMPOSSIBLE = {"fidelity.fid": (0.0, math.inf), "class_accuracy": (0.0, 1.0), "quality.ssim": (-1.0, 1.0), "quality.lpips": (0.0, math.inf)}
"""The range each quality figure can hold; a value outside it is a failed measurement (a FID of -6.4e7 is no improvement)."""


def impossible_quality(record: CaseRecord) -> list[str]:
    """Quality columns of a record holding a value no measurement can give (`IMPOSSIBLE`)."""
    found = []
    for field_path, (low, high) in IMPOSSIBLE.items():
        head, *rest = field_path.split(".")
        value: Any = getattr(record, head, None)
        for key in rest:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and not low <= value <= high:
            found.append(f"{field_path} = {value:g}, impossible")
    return found


def _nonfinite_paths(value: Any, path: str) -> list[str]:
    if isinstance(value, float) and not math.isfinite(value):
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _nonfinite_paths(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [path] if any(_nonfinite_paths(v, path) for v in value) else []
    return []


def render_comparison(comparison: Comparison) -> str:
    """A markdown table of per-case changes, what changed in each case, the gate's verdict, and notes."""
    header = [  # named as the run's tables name them (`views.columns`)
        "case", f"{column('speedup').name} base -> new", "change", "p (Mann-Whitney U)", f"{column('noise').name} base -> new",
        *(f"{column(key).name} base -> new" for key in ("tflop_per_call", "reuse_ratio", "psnr_db", "class_accuracy", "fid")), "verdict",
    ]
    rows = []
    for c in comparison.changes:
        t = c.timing
        rows.append([
            c.case,
            _timing_cells(t),
            "n/a" if t is None else f"{t.change:+.1%}",
            "n/a" if t is None else f"{t.p_value:.3g}",
            _pair(c.noise_base, c.noise_new, str),
            _pair(c.flops_base, c.flops_new, lambda v: f"{v / 1e12:.4g}"),
            _pair(c.reuse_base, c.reuse_new, _pct),
            _pair(c.psnr_base, c.psnr_new, _db),
            _pair(c.accuracy_base, c.accuracy_new, _pct),
            _pair(c.fid_base, c.fid_new, lambda v: f"{v:.3f}"),
            c.verdict,
        ])
    table = markdown.table(header, rows, "l" + "r" * 9 + "l")
    out = [f"Comparing {comparison.base} (base) with {comparison.new} (new)", ""]
    if comparison.runs_differ:
        out += [f"**The runs are of different {_kinds(comparison.runs_differ)}**: {'; '.join(comparison.runs_differ)}. "
                "Their cases measure different things, so what follows compares unlike with unlike.", ""]
    out += [table, ""]
    changed = [c for c in comparison.changes if c.identity]
    if changed:
        lead = "fails with --strict" if not comparison.strict else "each a regression (--strict)"
        out += [f"**What the cases are, changed** ({lead}):", ""]
        out += [f"- {c.case}: {'; '.join(c.identity)}" for c in changed]
        out.append("")
    out.append(_verdict_line(comparison))
    if comparison.notes:
        out += [""] + [f"- {n}" for n in comparison.notes]
    return "\n".join(out)


def _kinds(differences: list[str]) -> str:
    """'models and samplers' for the kinds of difference listed ('model: a -> b', ...); a machine's GPU or CPU counts as its device."""
    names = {"model": "models", "sampler": "samplers"}
    kinds = []
    for line in differences:
        kind = names.get(line.split(":", 1)[0], "devices")
        if kind not in kinds:
            kinds.append(kind)
    return " and ".join([", ".join(kinds[:-1]), kinds[-1]]) if len(kinds) > 1 else kinds[0]


def _verdict_line(comparison: Comparison) -> str:
    regressed = [c.case for c in comparison.changes if c.regressions]
    unsure = [c.case for c in comparison.changes if c.inconclusive and not c.regressions]
    if regressed:
        verdict = f"**{len(regressed)} regression(s)**: {', '.join(regressed)}"
    elif unsure:
        verdict = f"**inconclusive** (no regression): {', '.join(unsure)}"
    else:
        verdict = "**no regression**"
    if regressed and unsure:
        verdict += f"; inconclusive: {', '.join(unsure)}"
    gate = [
        f"slower = speedup against the run's own baseline down by more than {comparison.max_slowdown:.1%} and Mann-Whitney U "
        f"p < {comparison.alpha:g} on the per-round ratios (inconclusive when noisy or too few rounds)",
        "FLOPs per call up or reuse down by any amount",
        "non-finite quality or timing",
    ]
    if comparison.max_quality_drop is not None:
        gate.append(f"PSNR drop over {comparison.max_quality_drop:g} dB")
    if comparison.max_accuracy_drop is not None:
        gate.append(f"class accuracy drop over {comparison.max_accuracy_drop:.1%}")
    if comparison.max_fid_rise is not None:
        gate.append(f"FID rise over {comparison.max_fid_rise.label()}")
    if comparison.strict:
        gate.append("any change in what a case is (--strict)")
    return f"{verdict} (gate: {'; '.join(gate)}); exit status {comparison.exit_status}"


def benchmark_entries(records: dict[str, CaseRecord], suite: str | None = None) -> list[dict[str, Any]]:
    """github-action-benchmark "customSmallerIsBetter" entries for one run."""
    entries: list[dict[str, Any]] = []
    for case, record in records.items():
        if not record.ok:
            continue
        prefix = f"{suite or record.suite}/{case}".lstrip("/")
        per_image = _per_image_measurement(record)
        if per_image is not None:
            ms = per_image.scaled(1000)
            entries.append({
                "name": f"{prefix} time per image",
                "unit": "ms",
                "value": round(ms.median, 4),
                "range": f"± {ms.iqr / 2:.4f}",
                "extra": f"median of {ms.n} calls; mean {ms.mean:.4f}, p10 {ms.p10:.4f}, p90 {ms.p90:.4f}; noise: {ms.noise}",
            })
        flops = flops_per_call(record.flops)
        if flops is not None:
            entries.append({"name": f"{prefix} TFLOP per call", "unit": "TFLOP", "value": flops / 1e12, "extra": f"{flops} FLOPs, exact"})
        energy = (record.energy or {}).get("joules_per_image")
        if energy is not None:
            entries.append({"name": f"{prefix} energy per image", "unit": "J", "value": round(energy, 6)})
        memory = record.memory or {}
        peak = memory.get("torch_peak_reserved_bytes") or memory.get("peak_rss_bytes")
        if peak is not None:
            what = "torch reserved" if memory.get("torch_peak_reserved_bytes") else "peak RSS"
            entries.append({"name": f"{prefix} peak memory", "unit": "MiB", "value": round(peak / 2**20, 3), "extra": what})
        quality = record.quality or {}
        if quality.get("mse") is not None:
            entries.append({"name": f"{prefix} latent MSE to baseline", "unit": "", "value": quality["mse"]})
        fid = (record.fidelity or {}).get("fid")
        if fid is not None:
            entries.append({"name": f"{prefix} FID", "unit": "", "value": fid})
    return entries


def parse_fraction(text: str, option: str = "--max-slowdown") -> float:
    """'5%' or '0.05' -> 0.05."""
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100.0 if raw.endswith("%") else float(raw)
    except ValueError:
        raise DqarError(f"option {option}: '{text}' is not a fraction; write 5% or 0.05") from None
    if not (math.isfinite(value) and value >= 0):
        raise DqarError(f"option {option}: '{text}' must be a finite fraction >= 0; write 5% or 0.05")
    return value


def parse_limit(text: str, option: str, percent: bool = True) -> float | None:
    """A gate's limit, or None for 'off'; with `percent`, '2%' means 0.02."""
    if text.strip().lower() in ("off", "none"):
        return None
    if percent:
        return parse_fraction(text, option)
    try:
        value = float(text)
    except ValueError:
        raise DqarError(f"option {option}: '{text}' is not a number; give one (or 'off' to switch the gate off)") from None
    if not (math.isfinite(value) and value >= 0):
        raise DqarError(f"option {option}: '{text}' must be a finite number >= 0 (or 'off')")
    return value


def parse_rise(text: str, option: str = "--max-fid-rise") -> Rise | None:
    """'50%' (relative to the base value), '10' (absolute) or 'off'."""
    raw = text.strip()
    if raw.endswith("%"):
        value = parse_fraction(raw, option)
        return Rise(value, relative=True)
    value = parse_limit(raw, option, percent=False)  # type: ignore[assignment]
    return None if value is None else Rise(value)


def _noise(record: CaseRecord) -> str | None:
    samples = record.latency_s or []
    return Measurement.of(samples).noise if samples and all(_finite(s) for s in samples) else None


def _per_image(record: CaseRecord) -> list[float] | None:
    m = _per_image_measurement(record)
    return list(m.samples) if m is not None else None


def _per_image_measurement(record: CaseRecord) -> Measurement | None:
    samples = record.latency_s or []
    if not samples or not all(_finite(s) for s in samples):
        return None
    return Measurement.of(samples).scaled(1.0 / (record.batch or 1))


def _psnr(record: CaseRecord) -> float | None:
    quality = record.quality or {}
    if quality.get("psnr_db") is None:
        return math.inf if quality.get("identical") else None
    return float(quality["psnr_db"])


MACHINE_KEYS = ("gpu", "driver", "cuda", "cpu")

RUN_KEYS = ("model", "sampler", "device")
"""What makes two runs not like for like, whatever their cases are called."""


def run_differences(base: RunRecords, new: RunRecords) -> list[str]:
    """'model: a -> b' for each of model, sampler and device (and the machine's GPU or CPU)
    in which the two runs differ: their cases then measure different things."""
    out = []
    for key in RUN_KEYS:
        a, b = _values(base.latest, key), _values(new.latest, key)
        if a != b:
            out.append(f"{key}: {a} -> {b}")
    return out + _machine_differences(base.environment, new.environment)


def _values(latest: dict[str, CaseRecord], key: str) -> str:
    return ", ".join(sorted({str(getattr(r, key)) for r in latest.values()}))


def _machine_differences(env_base: dict[str, Any], env_new: dict[str, Any]) -> list[str]:
    if not env_base or not env_new:
        return []
    return [f"{k}: {env_base.get(k)} -> {env_new.get(k)}" for k in MACHINE_KEYS if env_base.get(k) != env_new.get(k)]


def _environment_notes(env_base: dict[str, Any], env_new: dict[str, Any]) -> list[str]:
    if not env_base or not env_new:
        which = " and ".join(n for n, e in (("base", env_base), ("new", env_new)) if not e)
        return [f"the {which} run records no environment (written by an older dqar-bench): settings not compared"]
    differ = [f"{k}: {env_base.get(k)} -> {env_new.get(k)}" for k in ENVIRONMENT_KEYS if env_base.get(k) != env_new.get(k) and k != "git_commit"]
    notes = []
    if differ:
        notes.append("the runs ran in different settings, so timings may not be comparable: " + "; ".join(differ))
    if env_base.get("git_commit") != env_new.get("git_commit"):
        notes.append(f"commits: {env_base.get('git_commit')} -> {env_new.get('git_commit')}")
    return notes


def _timing_cells(t: Timing | None) -> str:
    if t is None:
        return "n/a"
    if t.kind == "speedup":
        return f"{t.base.median:.2f}x -> {t.new.median:.2f}x"
    return f"{t.base.median * 1000:.3f} -> {t.new.median * 1000:.3f} ms / image (no rounds)"


def _timing_change(t: Timing) -> str:
    if t.kind == "speedup":
        return f"speedup {t.base.median:.2f}x -> {t.new.median:.2f}x ({t.change:+.1%})"
    return f"time per image {t.change:+.1%}"


def _pair(base: Any, new: Any, fmt: Any) -> str:
    if base is None and new is None:
        return "n/a"
    return f"{'n/a' if base is None else fmt(base)} -> {'n/a' if new is None else fmt(new)}"


def _rel(new: float, base: float) -> str:
    return f"{new / base - 1:+.1%}" if base else "from 0"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _both(a: Any, b: Any) -> bool:
    """Both present and comparable (a NaN on either side is judged as non-finite instead)."""
    return a is not None and b is not None and not (isinstance(a, float) and math.isnan(a)) and not (isinstance(b, float) and math.isnan(b))


def _db(value: float | None) -> str:
    if value is None:
        return "n/a"
    return "identical" if math.isinf(value) else f"{value:.1f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"
