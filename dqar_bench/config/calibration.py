"""A calibration file: one model's measured signals and fitted settings, and how a suite reads them.

MagCache and TeaCache each ask their users to calibrate on their own model before they pick a
threshold; a threshold fitted on one model means another reuse on the next. `dqar-bench
calibrate` (`dqar_bench.runs.calibrate`) measures, on the untouched model and inputs of its
own, what every gate reads, and writes it here: MagCache's ratios per CFG branch,
TeaCache's rescale polynomial, and per case the threshold that gives each target reuse.

A suite reads it with `calibration: FILE` (at suite or case level) and two markers in a
part's parameters:

- `{calibrated: 0.5}` on the case's threshold parameter: the threshold calibrate found for
  50 % reuse of this case;
- `calibrated` (the word) on a fitted parameter (`mag_ratios`, `coefficients`): the fit.

The file holds one entry per (model, sampler, steps, guidance), so a suite over several
models shares one file, and an entry is found by that tag: a file made for another model,
sampler or step count is refused in one line. Each threshold remembers the case's other
parts as they were calibrated (`parts_key`), so an edited case is told to recalibrate
instead of silently running a threshold fitted for something else. A case that reads the
file carries the digest of its model's entry in its identity (`Entry.digest`), so
`--resume` reruns it when that calibration changes, and only then.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dqar_bench.core.errors import DqarError
from dqar_bench.core.files import write_atomic
from dqar_bench.measure.signal_trace import json_safe

FORMAT = "dqar-bench-calibration"
VERSION = 1
MARKER = "calibrated"
DEFAULT_TARGETS = (0.3, 0.5, 0.7)
FITS = {"mag_ratios": "mag_ratios", "coefficients": "teacache_coefficients"}
"""A fitted parameter -> the entry's field that holds its fit (the word `calibrated` reads it)."""


class CalibrationError(DqarError):
    """A calibration file or marker that cannot be used; one line, exit 2."""


@dataclass(frozen=True)
class Tag:
    """What an entry was measured on; a suite reads only the entry of its own tag."""

    model: str
    config_hash: str | None
    sampler: str
    steps: int
    guidance_scale: float

    def describe(self) -> str:
        return f"model '{self.model}', {self.sampler} {self.steps} steps, guidance {self.guidance_scale:g}"

    def matches(self, other: "Tag") -> bool:
        same_model = (self.config_hash == other.config_hash) if (self.config_hash and other.config_hash) else self.model == other.model
        return same_model and (self.sampler, self.steps, self.guidance_scale) == (other.sampler, other.steps, other.guidance_scale)


@dataclass
class Threshold:
    """One case's searched parameter: the value found for each target reuse (None: out of reach)."""

    gate: str
    param: str
    parts_key: str
    reachable: tuple[float, float]
    values: dict[float, float | None] = field(default_factory=dict)
    reuse: dict[float, float | None] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "gate": self.gate, "param": self.param, "parts_key": self.parts_key, "reachable": list(self.reachable),
            "targets": [{"target": t, "value": self.values[t], "reuse": self.reuse.get(t)} for t in sorted(self.values)],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Threshold":
        targets = data["targets"]
        return cls(
            data["gate"], data["param"], data["parts_key"], tuple(data["reachable"]),  # type: ignore[arg-type]
            {float(t["target"]): t["value"] for t in targets}, {float(t["target"]): t.get("reuse") for t in targets},
        )


@dataclass
class Entry:
    """One model's calibration."""

    tag: Tag
    seeds: list[int]
    thresholds: dict[str, Threshold] = field(default_factory=dict)
    """By case name."""
    mag_ratios: list[float] | list[list[float]] | None = None
    teacache_coefficients: list[float] | None = None
    signals: dict[str, Any] | None = None
    """The recorded signals (`dqar_bench.measure.signal_trace.SignalTrace.to_json`)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.tag.model, "config_hash": self.tag.config_hash, "sampler": self.tag.sampler, "steps": self.tag.steps,
            "guidance_scale": self.tag.guidance_scale, "seeds": self.seeds,
            "mag_ratios": self.mag_ratios, "teacache_coefficients": self.teacache_coefficients,
            "thresholds": {case: t.to_json() for case, t in self.thresholds.items()},
            "signals": self.signals,
        }

    @property
    def digest(self) -> str:
        """sha256 of the entry's canonical JSON (16 hex digits): what a case that read it carries
        in its identity, so recalibrating another model of the same file reruns nothing here."""
        return hashlib.sha256(json.dumps(json_safe(self.to_json()), sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Entry":
        tag = Tag(data["model"], data.get("config_hash"), data["sampler"], int(data["steps"]), float(data["guidance_scale"]))
        return cls(
            tag, list(data.get("seeds", [])), {case: Threshold.from_json(t) for case, t in (data.get("thresholds") or {}).items()},
            data.get("mag_ratios"), data.get("teacache_coefficients"), data.get("signals"),
        )


@dataclass
class CalibrationFile:
    path: Path
    entries: list[Entry]
    digest: str
    """sha256 of the file's bytes (16 hex digits): what a case's identity records."""

    def entry(self, tag: Tag) -> Entry:
        found = next((e for e in self.entries if e.tag.matches(tag)), None)
        if found is None:
            made = "; ".join(e.tag.describe() for e in self.entries) or "nothing"
            raise CalibrationError(
                f"calibration {self.path} was made for {made}, not for {tag.describe()}; "
                f"calibrate this one: dqar-bench calibrate SUITE -o {self.path}"
            )
        return found


def config_hash(config: dict[str, Any] | None) -> str | None:
    """A digest of a transformer config (None where the config cannot be read without building the model)."""
    if config is None:
        return None
    public = {k: v for k, v in config.items() if not str(k).startswith("_")}
    return hashlib.sha256(json.dumps(public, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read(path: Path) -> CalibrationFile:
    """The file, checked; a missing or foreign file is one line."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CalibrationError(f"calibration {path} does not exist; make it with: dqar-bench calibrate SUITE -o {path}") from None
    except OSError as exc:
        raise CalibrationError(f"calibration {path} cannot be read ({exc.strerror or exc})") from None
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise CalibrationError(f"calibration {path} is not JSON ({exc}); make it again with dqar-bench calibrate") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CalibrationError(f"calibration {path} is not a dqar-bench calibration file (no \"format\": \"{FORMAT}\"); make it with dqar-bench calibrate")
    if data.get("version") != VERSION:
        raise CalibrationError(f"calibration {path} is version {data.get('version')}, this dqar-bench reads version {VERSION}; make it again with dqar-bench calibrate")
    try:
        entries = [Entry.from_json(e) for e in data["entries"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise CalibrationError(f"calibration {path} is damaged ({type(exc).__name__}: {exc}); make it again with dqar-bench calibrate") from None
    return CalibrationFile(path, entries, hashlib.sha256(raw).hexdigest()[:16])


def write(path: Path, entries: list[Entry]) -> CalibrationFile:
    """Write `entries` into `path`, keeping the file's entries of other tags."""
    kept: list[Entry] = []
    if path.exists():
        try:
            kept = [e for e in read(path).entries if not any(e.tag.matches(n.tag) for n in entries)]
        except CalibrationError:
            kept = []  # a damaged or foreign file is replaced, not merged
    data = {"format": FORMAT, "version": VERSION, "entries": [e.to_json() for e in (*kept, *entries)]}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(json_safe(data), indent=1, allow_nan=False) + "\n")
    return read(path)


# ---- markers in a case's parameters ----


def markers(params: dict[str, Any]) -> dict[str, Any]:
    """The parameters that read the calibration: {param: target reuse} or {param: 'calibrated'}."""
    out: dict[str, Any] = {}
    for name, value in params.items():
        if value == MARKER:
            out[name] = MARKER
        elif isinstance(value, dict) and set(value) == {MARKER}:
            out[name] = value[MARKER]
    return out


def check_marker(name: str, value: Any, threshold_param: str | None) -> None:
    """A marker the calibration can answer; ValueError (one line) otherwise."""
    if value == MARKER:
        if name not in FITS:
            raise ValueError(f"parameter '{name}': 'calibrated' reads a fit, and the calibration fits only {', '.join(FITS)}; give a value")
        return
    if threshold_param is None:
        raise ValueError(f"parameter '{name}': {{calibrated: {value}}} needs a gate whose threshold calibrate searches (dqar, entropy, snr, residual-change, dbcache, teacache, magnitude)")
    if name != threshold_param:
        raise ValueError(f"parameter '{name}': {{calibrated: ...}} sets this gate's threshold parameter '{threshold_param}', not '{name}'")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(f"parameter '{name}': {{calibrated: {value!r}}}: the target reuse must be a number in (0, 1), e.g. {{calibrated: 0.5}}")


def without_markers(params: dict[str, Any]) -> dict[str, Any]:
    """The parameters with every marker left out (the part's default stands in until resolved)."""
    found = markers(params)
    return {k: v for k, v in params.items() if k not in found}


def parts_key(parts: dict[str, tuple[str, dict[str, Any]]], searched: str | None) -> str:
    """A digest of a case's parts as written, without the searched parameter: a threshold
    calibrated for one setting of the others does not hold for another."""
    canonical = {
        kind: {"name": name, "params": {k: v for k, v in params.items() if not (kind == "gate" and k == searched)}}
        for kind, (name, params) in sorted(parts.items())
    }
    return hashlib.sha256(json.dumps(canonical, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_seeds(entry: Entry, seeds: list[int], path: Path) -> None:
    """A calibration made on the inputs a suite measures would grade itself on its own answers."""
    shared = sorted(set(entry.seeds) & set(seeds))
    if shared:
        raise CalibrationError(
            f"calibration {path} was made on seed {shared[0]}, which the suite measures; calibrate on seeds of its own: "
            f"dqar-bench calibrate SUITE --seeds {max(seeds) + 1} -o {path}"
        )


def resolve(params: dict[str, Any], kind: str, entry: Entry, case: str, key: str, where: str) -> dict[str, Any]:
    """`params` with each marker replaced by the calibration's value, or a one-line error naming the fix."""
    found = markers(params)
    if not found:
        return params
    out = dict(params)
    for name, marker in found.items():
        if marker == MARKER:
            fit = getattr(entry, FITS[name])
            if fit is None:
                raise CalibrationError(f"{where}: field '{kind}.{name}': the calibration of {entry.tag.describe()} holds no {name} (the model has no such signal); give a value")
            out[name] = fit
            continue
        threshold = entry.thresholds.get(case)
        if threshold is None or threshold.param != name:
            raise CalibrationError(
                f"{where}: field '{kind}.{name}': the calibration of {entry.tag.describe()} has no threshold for this case; "
                "calibrate the suite again: dqar-bench calibrate SUITE -o FILE"
            )
        if threshold.parts_key != key:
            raise CalibrationError(
                f"{where}: field '{kind}.{name}': the case's parts changed since it was calibrated; calibrate the suite again: dqar-bench calibrate SUITE -o FILE"
            )
        value = threshold.values.get(float(marker))
        if value is None:
            low, high = threshold.reachable
            known = ", ".join(f"{t:g}" for t in sorted(threshold.values))
            reach = f"reaches reuse {low:.1%} to {high:.1%}"
            if float(marker) in threshold.values or not low <= float(marker) <= high:
                raise CalibrationError(f"{where}: field '{kind}.{name}': target reuse {marker:g} is out of reach: the case {reach}; choose a target in that range")
            raise CalibrationError(
                f"{where}: field '{kind}.{name}': target reuse {marker:g} was not calibrated (targets: {known}; the case {reach}); "
                f"calibrate it: dqar-bench calibrate SUITE --target-reuse {marker:g}"
            )
        out[name] = value
    return out
