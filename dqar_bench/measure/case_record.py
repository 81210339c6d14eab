"""The case record: one line of `records.jsonl`, as one typed object.

A record used to be a dict of about 60 keys that held the case three times (top-level
fields, `parts`, `identity`) and a copy of the environment. Now:

- what the case *is* is said once, by its `identity` (`config.identity.case_identity`: parts
  with every parameter, defaults filled in, model, sampler, steps, guidance, conditioning,
  seeds, dtype, mode, ...), the very dict its `case_key` hashes; `model`, `steps` and the
  rest are read from it through properties, so no second copy can disagree with it. Only
  how the suite *spelled* the parts (`parts`: name and the parameters given, which the
  tables show) is kept beside it, as the identity cannot tell a given value from a default;
- the environment is a file of the run directory (`environment-<hash>.json`, one per
  distinct environment, so a resumed run on another machine keeps both) and the record
  names that file (`RunDir.environment_of` reads it);
- every line carries `schema_version`. Lines written before it existed (version 1, the
  committed CI reference among them) are brought up to date by `upgrade`, the one place
  that knows the old shape.

The runner builds a record with `CaseRecord.start` and fills it as the case goes
(`update`); `RunDir.append` writes `to_json()`; `RunDir.records()` reads `from_json`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 2

_V1_CASE_FIELDS = ("diffusers_hook", "model", "sampler", "steps", "guidance_scale", "seeds", "dtype",
                   "execution_mode", "parallel", "resolution", "dqar_bench")
"""Version 1's top-level copies of what `identity` says."""


@dataclass
class CaseRecord:
    """One case of one run: what it is, where it ran, what was measured."""

    case: str
    identity: dict[str, Any]
    """What the case is: the one description (see the module's docstring)."""
    case_key: str = ""
    parts: dict[str, dict[str, Any]] = field(default_factory=dict)
    """kind -> {name, params}: the parts as the suite gave them (empty: the untouched model);
    the identity has them with every default."""
    description: str = ""
    suite: str = ""
    baseline_case: str | None = None
    baseline_key: str | None = None
    """The case key of the baseline this record's paired figures were measured against (resume checks it)."""
    settings: dict[str, Any] | None = None
    """The measurement settings the key hashes with the identity (timing, quality, threads)."""
    identity_recorded: bool = True
    """False for a record upgraded from one written before `identity` existed: the identity was
    rebuilt from its fields, without part versions or defaults."""
    renamed_from: str | None = None

    # where and how it ran
    batch: int = 1
    latent_shape: list[int] | None = None
    cond_len: int | None = None
    device: str = "cpu"
    rank: int = 0
    world_size: int = 1
    suite_hash: str | None = None
    pipeline_class: str | None = None
    environment: str | None = None
    """The run directory's file holding the environment this case ran in."""
    started: str | None = None
    finished: str | None = None

    status: str = "pending"
    error: str | None = None
    traceback: str | None = None
    outputs_file: str | None = None
    outputs_sha256: str | None = None
    """sha256 of the outputs as saved (`run.resume.outputs_digest`): a resume sees data changed under an intact header."""

    # preparation: warmup, scored calls
    execution: dict[str, Any] | None = None
    """What the execution mode did (`strategy.execution.Execution.report`)."""
    timer: str | None = None
    cold_s: float | None = None
    warmup_s: list[float] | None = None
    memory: dict[str, Any] | None = None
    reused: int | None = None
    evaluations: int | None = None
    reuse_ratio: float | None = None
    cache_bytes: int | None = None
    reuse_map: list[list[int]] | None = None
    reuse_map_calls: int | None = None
    nonfinite_cached: int | None = None
    flops: dict[str, Any] | None = None
    quality: dict[str, Any] | None = None
    class_accuracy: float | None = None
    clip: dict[str, Any] | None = None
    fidelity: dict[str, Any] | None = None
    ranks: list[dict[str, Any]] | None = None

    # timing
    latency_s: list[float] | None = None
    median_s: float | None = None
    per_image_s: float | None = None
    latency: dict[str, Any] | None = None
    step_s: list[list[float]] | None = None
    round_s: list[float] | None = None
    baseline_round_s: list[float] | None = None
    rounds: int | None = None
    round_ids: list[int] | None = None
    timing_order: str | None = None
    round_seed: int | None = None
    energy: dict[str, Any] | None = None
    timing_note: str | None = None
    parallel_note: str | None = None

    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)
    """Keys this version does not know (a newer writer's), kept so that nothing read is lost."""

    # -- what the case is, read from its identity -------------------------------------------

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def diffusers_hook(self) -> dict[str, Any] | None:
        return self.identity.get("diffusers_hook")

    @property
    def model(self) -> str | None:
        return self.identity.get("model")

    @property
    def sampler(self) -> str | None:
        return self.identity.get("sampler")

    @property
    def steps(self) -> int | None:
        return self.identity.get("steps")

    @property
    def guidance_scale(self) -> float | None:
        return self.identity.get("guidance_scale")

    @property
    def seeds(self) -> list[int]:
        return list(self.identity.get("seeds") or [])

    @property
    def dtype(self) -> str | None:
        return self.identity.get("dtype")

    @property
    def execution_mode(self) -> str:
        return (self.identity.get("execution") or {}).get("mode", "eager")

    @property
    def parallel(self) -> dict[str, int] | None:
        return self.identity.get("parallel")

    @property
    def resolution(self) -> dict[str, Any] | None:
        return self.identity.get("resolution")

    @property
    def dqar_bench(self) -> str | None:
        return self.identity.get("dqar_bench")

    # -- building ---------------------------------------------------------------------------

    def update(self, **values: Any) -> None:
        """Set fields by name; an unknown name is a bug in the writer, so it raises."""
        for name, value in values.items():
            if name not in _FIELDS:
                raise AttributeError(f"CaseRecord has no field '{name}'")
            setattr(self, name, value)

    # -- the JSON line ----------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The line's object: `schema_version` first, unknown keys kept, empty optionals left out."""
        out: dict[str, Any] = {"schema_version": self.schema_version}
        for f in dataclasses.fields(self):
            if f.name in ("schema_version", "extra"):
                continue
            value = getattr(self, f.name)
            if value is None and f.default is None:
                continue
            out[f.name] = value
        if self.identity_recorded:
            del out["identity_recorded"]
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "CaseRecord":
        """A record from a line of any version (older ones through `upgrade`)."""
        line, _ = upgrade(raw)
        known = {k: v for k, v in line.items() if k in _FIELDS and k != "extra"}
        extra = {k: v for k, v in line.items() if k not in _FIELDS}
        return cls(**known, extra=extra)


_FIELDS = {f.name for f in dataclasses.fields(CaseRecord)}


def environment_file(environment: dict[str, Any]) -> str:
    """`environment-<12 hex>.json`: the name a run directory keeps this environment under,
    the same for the same content, so sessions on one machine share it."""
    digest = hashlib.sha256(json.dumps(environment, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:12]
    return f"environment-{digest}.json"


def upgrade(raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A record line of any earlier version as a current one, and the environment it
    carried inline (version 1), to be kept once for the run; the current version passes.

    Version 1 (no `schema_version`) repeated the case as top-level fields beside `identity`
    and embedded the environment. Its identity is kept as it was recorded (its key hashed it);
    a line older still, without `identity`, gets one built from those fields and is marked
    `identity_recorded: false`. `pipeline` (the pipeline's class) became `pipeline_class`.
    """
    version = raw.get("schema_version", 1)
    if version == SCHEMA_VERSION:
        return raw, None
    if version != 1:
        raise ValueError(f"record schema_version {version} is newer than this dqar-bench reads ({SCHEMA_VERSION}); upgrade dqar-bench")
    line = dict(raw)
    identity = line.get("identity")
    if not isinstance(identity, dict):
        identity = {"parts": line.get("parts") or {}}  # in `case_identity`'s order, so differences list alike
        identity.update({k: line[k] for k in ("model", "sampler", "steps", "guidance_scale", "seeds", "dtype", "dqar_bench") if line.get(k) is not None})
        identity["execution"] = {"mode": line.get("execution_mode", "eager")}
        for key in ("parallel", "resolution", "diffusers_hook"):
            if line.get(key) is not None:
                identity[key] = line[key]
        line["identity_recorded"] = False
    line["identity"] = identity
    for key in _V1_CASE_FIELDS:
        line.pop(key, None)
    line.pop("dqar_bench_version", None)
    if "pipeline" in line:
        line["pipeline_class"] = line.pop("pipeline")
    environment = line.pop("environment", None)
    if isinstance(environment, dict) and environment:
        line["environment"] = environment_file(environment)
    else:
        environment = None
    line["schema_version"] = SCHEMA_VERSION
    return line, environment
