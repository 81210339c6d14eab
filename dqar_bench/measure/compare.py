"""Two runs side by side, as a CI gate: did anything get slower, or worse?

A case counts as slower only when both hold: its median time per image grew by more than
`max_slowdown`, and the raw samples of the two runs differ by a two-sided Mann-Whitney U
test at `alpha` (as asv does): a threshold alone flags noise, a test alone flags changes
too small to matter. Quality is compared per case as the PSNR to each run's own baseline
(a drop of more than `max_quality_drop` dB counts) and, where both runs have it, FID (a
rise of more than `max_fid_rise`). Cases present in one run only are listed, not judged.

`benchmark_entries` writes the run in github-action-benchmark's "customSmallerIsBetter"
format: a list of {name, unit, value, range, extra}.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dqar_bench import records
from dqar_bench.errors import DqarError
from dqar_bench.measure.stats import Measurement, mann_whitney_u, min_detectable_p

ENVIRONMENT_KEYS = ("gpu", "driver", "cuda", "torch", "diffusers", "cpu", "dtype", "attention_backend", "git_commit")


@dataclass
class CaseChange:
    case: str
    status: str = "compared"
    """'compared', 'only in base', 'only in new', or 'failed in base/new'."""
    base: Measurement | None = None
    new: Measurement | None = None
    p_value: float | None = None
    psnr_base: float | None = None
    psnr_new: float | None = None
    fid_base: float | None = None
    fid_new: float | None = None
    accuracy_base: float | None = None
    accuracy_new: float | None = None
    verdict: str = ""
    regressions: list[str] = field(default_factory=list)

    @property
    def change(self) -> float | None:
        """Relative change of the median time per image (+0.2 = 20 % slower)."""
        if self.base is None or self.new is None:
            return None
        return self.new.median / self.base.median - 1.0


@dataclass
class Comparison:
    base: Path
    new: Path
    max_slowdown: float
    alpha: float
    max_quality_drop: float | None
    max_fid_rise: float | None
    changes: list[CaseChange]
    notes: list[str]
    max_accuracy_drop: float | None = None

    @property
    def regressed(self) -> bool:
        return any(c.regressions for c in self.changes)


def read_records(path: str | Path) -> dict[str, dict[str, Any]]:
    """The latest record of each case in a run directory (or a records.jsonl file)."""
    path = Path(path)
    records_path = path / records.RECORDS if path.is_dir() else path
    if not records_path.is_file():
        raise DqarError(f"{path}: no records.jsonl there; give a run directory written by `dqar-bench run`")
    latest = {record["case"]: record for record in records.read_records(records_path)}
    if not latest:
        raise DqarError(f"{records_path}: holds no records")
    return latest


def compare_runs(
    base: str | Path,
    new: str | Path,
    max_slowdown: float = 0.05,
    alpha: float = 0.01,
    max_quality_drop: float | None = None,
    max_fid_rise: float | None = None,
    max_accuracy_drop: float | None = None,
) -> Comparison:
    base_records, new_records = read_records(base), read_records(new)
    limits = (max_quality_drop, max_fid_rise, max_accuracy_drop)
    changes = []
    for case in list(base_records) + [c for c in new_records if c not in base_records]:
        changes.append(_compare_case(case, base_records.get(case), new_records.get(case), max_slowdown, alpha, limits))
    notes = _environment_notes(base_records, new_records)
    short = [c.case for c in changes if c.base and c.new and min_detectable_p(c.base.n, c.new.n) > alpha]
    if short:
        notes.append(
            f"too few samples to call any change significant at alpha {alpha:g} for: {', '.join(short)} "
            "(raise timing.repeats or add seeds; 5 or more per run are needed at alpha 0.01)"
        )
    return Comparison(Path(base), Path(new), max_slowdown, alpha, max_quality_drop, max_fid_rise, changes, notes, max_accuracy_drop)


def _compare_case(
    case: str,
    base: dict[str, Any] | None,
    new: dict[str, Any] | None,
    max_slowdown: float,
    alpha: float,
    limits: tuple[float | None, float | None, float | None],
) -> CaseChange:
    change = CaseChange(case)
    if base is None or new is None:
        change.status = "only in new" if base is None else "only in base"
        change.verdict = "not compared"
        return change
    if base.get("status") != "ok" or new.get("status") != "ok":
        change.status = "failed in " + ("base" if base.get("status") != "ok" else "new")
        change.verdict = "not compared"
        if new.get("status") != "ok" and base.get("status") == "ok":
            change.regressions.append(f"failed: {new.get('error', '')}")
            change.verdict = "regression: the case failed"
        return change
    change.base, change.new = _per_image(base), _per_image(new)
    if change.base is None or change.new is None:
        change.verdict = "not compared (no raw samples)"
        return change
    change.p_value = mann_whitney_u(change.new.samples, change.base.samples).p_value
    significant = change.p_value < alpha
    rel = change.change or 0.0
    if rel > max_slowdown and significant:
        change.regressions.append(f"{rel:+.1%} time per image (p={change.p_value:.3g})")
        change.verdict = "slower"
    elif rel > max_slowdown:
        change.verdict = "slower? (not significant)"
    elif rel < -max_slowdown and significant:
        change.verdict = "faster"
    else:
        change.verdict = "no change"
    worse = _quality_regressions(change, base, new, *limits)
    if worse:
        change.regressions += worse
        change.verdict += ", worse quality"
    return change


def _quality_regressions(
    change: CaseChange,
    base: dict[str, Any],
    new: dict[str, Any],
    max_quality_drop: float | None,
    max_fid_rise: float | None,
    max_accuracy_drop: float | None = None,
) -> list[str]:
    change.psnr_base, change.psnr_new = _psnr(base), _psnr(new)
    change.fid_base = (base.get("fidelity") or {}).get("fid")
    change.fid_new = (new.get("fidelity") or {}).get("fid")
    worse = []
    if max_quality_drop is not None and change.psnr_base is not None and change.psnr_new is not None:
        both_identical = math.isinf(change.psnr_base) and math.isinf(change.psnr_new)
        if not both_identical and change.psnr_base - change.psnr_new > max_quality_drop:
            worse.append(f"PSNR {_db(change.psnr_base)} -> {_db(change.psnr_new)} dB")
    if max_fid_rise is not None and change.fid_base is not None and change.fid_new is not None:
        if change.fid_new - change.fid_base > max_fid_rise:
            worse.append(f"FID {change.fid_base:.3f} -> {change.fid_new:.3f}")
    change.accuracy_base, change.accuracy_new = base.get("class_accuracy"), new.get("class_accuracy")
    if max_accuracy_drop is not None and change.accuracy_base is not None and change.accuracy_new is not None:
        if change.accuracy_base - change.accuracy_new > max_accuracy_drop + 1e-12:
            worse.append(f"class accuracy {change.accuracy_base:.1%} -> {change.accuracy_new:.1%}")
    return worse


def render_comparison(comparison: Comparison) -> str:
    """A markdown table of per-case changes, the gate's verdict, and notes."""
    header = ["case", "base ms / image", "new ms / image", "change", "p (Mann-Whitney U)", "PSNR dB base -> new", "FID base -> new", "accuracy base -> new", "verdict"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * 7 + "---|"]
    for c in comparison.changes:
        base = _ms(c.base)
        new = _ms(c.new)
        cells = [
            c.case, base, new,
            "n/a" if c.change is None else f"{c.change:+.1%}",
            "n/a" if c.p_value is None else f"{c.p_value:.3g}",
            "n/a" if c.psnr_base is None and c.psnr_new is None else f"{_db(c.psnr_base)} -> {_db(c.psnr_new)}",
            "n/a" if c.fid_base is None and c.fid_new is None else f"{_num(c.fid_base)} -> {_num(c.fid_new)}",
            "n/a" if c.accuracy_base is None and c.accuracy_new is None else f"{_pct(c.accuracy_base)} -> {_pct(c.accuracy_new)}",
            ("**REGRESSION**: " + "; ".join(c.regressions)) if c.regressions else (c.verdict if c.status == "compared" else f"{c.status}: {c.verdict}"),
        ]
        lines.append("| " + " | ".join(str(x).replace("|", "\\|") for x in cells) + " |")
    gate = [f"slower = median time per image up by more than {comparison.max_slowdown:.1%} and Mann-Whitney U p < {comparison.alpha:g}"]
    if comparison.max_quality_drop is not None:
        gate.append(f"PSNR drop over {comparison.max_quality_drop:g} dB")
    if comparison.max_fid_rise is not None:
        gate.append(f"FID rise over {comparison.max_fid_rise:g}")
    if comparison.max_accuracy_drop is not None:
        gate.append(f"class accuracy drop over {comparison.max_accuracy_drop:.1%}")
    regressed = [c.case for c in comparison.changes if c.regressions]
    verdict = f"**{len(regressed)} regression(s)**: {', '.join(regressed)}" if regressed else "**no regression**"
    out = [f"Comparing {comparison.base} (base) with {comparison.new} (new)", "", "\n".join(lines), "", f"{verdict} (gate: {'; '.join(gate)})"]
    if comparison.notes:
        out += [""] + [f"- {n}" for n in comparison.notes]
    return "\n".join(out)


def benchmark_entries(records: dict[str, dict[str, Any]], suite: str | None = None) -> list[dict[str, Any]]:
    """github-action-benchmark "customSmallerIsBetter" entries for one run."""
    entries: list[dict[str, Any]] = []
    for case, record in records.items():
        if record.get("status") != "ok":
            continue
        prefix = f"{suite or record.get('suite', '')}/{case}".lstrip("/")
        per_image = _per_image(record)
        if per_image is not None:
            ms = per_image.scaled(1000)
            entries.append({
                "name": f"{prefix} time per image",
                "unit": "ms",
                "value": round(ms.median, 4),
                "range": f"± {ms.iqr / 2:.4f}",
                "extra": f"median of {ms.n} calls; mean {ms.mean:.4f}, p10 {ms.p10:.4f}, p90 {ms.p90:.4f}; noise: {ms.noise}",
            })
        energy = (record.get("energy") or {}).get("joules_per_image")
        if energy is not None:
            entries.append({"name": f"{prefix} energy per image", "unit": "J", "value": round(energy, 6)})
        memory = record.get("memory") or {}
        peak = memory.get("torch_peak_reserved_bytes") or memory.get("peak_rss_bytes")
        if peak is not None:
            what = "torch reserved" if memory.get("torch_peak_reserved_bytes") else "peak RSS"
            entries.append({"name": f"{prefix} peak memory", "unit": "MiB", "value": round(peak / 2**20, 3), "extra": what})
        quality = record.get("quality") or {}
        if quality.get("mse") is not None:
            entries.append({"name": f"{prefix} latent MSE to baseline", "unit": "", "value": quality["mse"]})
        fid = (record.get("fidelity") or {}).get("fid")
        if fid is not None:
            entries.append({"name": f"{prefix} FID", "unit": "", "value": fid})
    return entries


def parse_fraction(text: str, option: str = "--max-slowdown") -> float:
    """'5%' or '0.05' -> 0.05."""
    raw = text.strip()
    try:
        return float(raw[:-1]) / 100.0 if raw.endswith("%") else float(raw)
    except ValueError:
        raise DqarError(f"option {option}: '{text}' is not a fraction; write 5% or 0.05") from None


def _per_image(record: dict[str, Any]) -> Measurement | None:
    samples = record.get("latency_s") or []
    if not samples:
        return None
    return Measurement.of(samples).scaled(1.0 / (record.get("batch") or 1))


def _psnr(record: dict[str, Any]) -> float | None:
    quality = record.get("quality") or {}
    if quality.get("psnr_db") is None:
        return math.inf if quality.get("identical") else None
    return float(quality["psnr_db"])


def _environment_notes(base: dict[str, dict[str, Any]], new: dict[str, dict[str, Any]]) -> list[str]:
    env_base = next((r.get("environment") for r in base.values() if r.get("environment")), None) or {}
    env_new = next((r.get("environment") for r in new.values() if r.get("environment")), None) or {}
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


def _ms(m: Measurement | None) -> str:
    if m is None:
        return "n/a"
    ms = m.scaled(1000)
    return f"{ms.median:.3f} (IQR {ms.iqr:.3f})"


def _db(value: float | None) -> str:
    if value is None:
        return "n/a"
    return "identical" if math.isinf(value) else f"{value:.1f}"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"
