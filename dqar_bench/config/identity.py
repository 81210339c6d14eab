"""What a case is, as data, and a key for it: results are found by content, not by name.

A case's `identity` holds everything that decides what its sampling calls compute: every
part with all its parameters (defaults included) and where the part came from (plugin,
distribution, version; for a built-in part, whose version is dqar-bench's and never moves
with an edit, also the digest of its code, `dqar_bench.config.code_hash`), the model, sampler, steps, guidance, conditioning, seeds, dtype,
device type, execution mode and options, probe queries and the dqar-bench version. Its
`case_key` hashes the identity together with how the case is measured (timing and
quality settings). `--resume` matches finished cases by key, so a renamed case is still
found and a changed one is never taken for done; `compare` prints what differs between
two identities.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import json
import sys
from typing import Any

from dqar_bench import __version__
from dqar_bench.config.code_hash import code_digest
from dqar_bench.config.part_spec import PartSpec, bound
from dqar_bench.config.suite import Case, Suite
from dqar_bench.core.plugins import BUILTIN_DISTRIBUTION, PartInfo, Registry


def case_identity(suite: Suite, case: Case, registry: Registry, device_type: str) -> dict[str, Any]:
    """Everything that decides what the case's sampling calls compute."""
    execution: dict[str, Any] = {"mode": case.execution}
    if case.execution != "eager":
        execution.update(dataclasses.asdict(suite.execution_options))
    identity: dict[str, Any] = {
        "parts": {kind: _part(bound(spec, registry)) for kind, spec in case.parts.items()},
        "model": suite.model,
        "sampler": suite.sampler,
        "steps": suite.steps,
        "guidance_scale": suite.guidance_scale,
        "conditioning": _conditioning(suite),
        "seeds": list(suite.seeds),
        "dtype": suite.dtype,
        "device_type": device_type,
        "execution": execution,
        "probe_queries": suite.probe_queries,
        "dqar_bench": __version__,
    }
    if suite.pipeline:  # run through the checkpoint's own pipeline: another computation than the lean loop's
        identity["pipeline"] = suite.model
    if suite.resolution is not None:  # only where set, so the keys of suites without it stay as they were
        identity["resolution"] = suite.resolution.as_dict()
    if case.parallel is not None:  # absent for one rank, so the keys of earlier runs stay as they were
        identity["parallel"] = case.parallel.as_dict()
    if case.calibration_digest is not None:  # the calibration it read: a new one reruns the case on --resume
        identity["calibration"] = case.calibration_digest
    if case.hook is not None:  # only hook cases carry it, so every other case keeps its key
        identity["diffusers_hook"] = {**case.hook, "diffusers": _version("diffusers")}
    return identity


def measurement_settings(suite: Suite) -> dict[str, Any]:
    """How a case is measured: part of its key, not of what it is."""
    return {
        "timing": {
            "warmup": suite.warmup,
            "repeats": suite.repeats,
            "per_step": suite.per_step,
            "nvml_interval_s": suite.nvml_interval_s,
            "order": suite.timing_order,
            "round_seed": suite.round_seed,
        },
        "quality": dataclasses.asdict(suite.quality),
        "threads": suite.threads,
    }


def case_key(identity: dict[str, Any], settings: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of identity and measurement settings."""
    return hashlib.sha256(canonical_json({"identity": identity, "settings": settings}).encode("utf-8")).hexdigest()


def canonical_json(value: Any) -> str:
    """Sorted keys, no spaces, tuples as lists: equal content gives equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


MISSING: Any = object()
"""The side of a change that lacks the field."""


def changes(old: Any, new: Any) -> list[tuple[tuple[str, ...], Any, Any]]:
    """Every leaf where two identities (or any JSON-like values) differ: (path, old, new),
    `MISSING` on the side that lacks it; old's leaves in its order, then new's extra ones.

    Values are compared as their JSON (a tuple equals the list a record read back holds);
    an empty mapping (no parts, no parameters) is no leaf at all."""
    a, b = _leaves(_plain(old)), _leaves(_plain(new))
    keys = list(a) + [k for k in b if k not in a]
    return [(k, a.get(k, MISSING), b.get(k, MISSING)) for k in keys if a.get(k, MISSING) != b.get(k, MISSING)]


def differences(old: Any, new: Any) -> list[str]:
    """Dotted paths where two identities differ, e.g. `steps`, `parts.gate.params.every`."""
    return [".".join(path) or "(value)" for path, _, _ in changes(old, new)]


def _leaves(value: Any, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    if isinstance(value, dict):
        return {p: v for k, item in value.items() for p, v in _leaves(item, (*path, str(k))).items()}
    return {path: value}


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, ensure_ascii=False, default=str))


CODE_FIELD = "code"
"""A part's code digest (`dqar_bench.config.code_hash`), where its version cannot say an edit."""


def _part(spec: PartSpec) -> dict[str, Any]:
    """A part as the identity holds it: its validated object's parameters (defaults
    included), where it comes from, and, for a built-in part or one of no installed
    distribution, the digest of its code (a version that never moves cannot tell an edit)."""
    info, part = spec.info, spec.part
    assert info is not None and part is not None
    distribution, version = part_distribution(info)
    out = {"name": info.name, "params": part.params(), "plugin": info.plugin, "distribution": distribution, "version": version}
    if info.distribution == BUILTIN_DISTRIBUTION or version is None:
        out[CODE_FIELD] = code_digest(info.cls)
    return out


def code_unknown(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The kinds of the parts in both identities whose code digest only one of them holds:
    a record written before digests existed (the committed CI reference). Such code is
    unknown there, which is not a change: `compare` leaves it out (`comparable_changes`)
    and says so in a note, in `--strict` too. `--resume` still reruns such a case, since its
    key differs and its code cannot be shown to be the same."""
    a, b = old.get("parts") or {}, new.get("parts") or {}
    return [
        kind for kind in a
        if isinstance(a[kind], dict) and isinstance(b.get(kind), dict) and (CODE_FIELD in a[kind]) != (CODE_FIELD in b[kind])
    ]


def comparable_changes(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[tuple[str, ...], Any, Any]]:
    """`changes` of two identities, less the code digests that only one side knows (`code_unknown`)."""
    unknown = {("parts", kind, CODE_FIELD) for kind in code_unknown(old, new)}
    return [change for change in changes(old, new) if change[0] not in unknown]


def part_distribution(info: PartInfo) -> tuple[str | None, str | None]:
    """The installed distribution a part comes from and its version (None where unknown).

    Built-in parts are dqar-bench's; an entry-point part's distribution is the one the
    registry found it in; a part registered in code is looked up by its top-level module."""
    if info.distribution == BUILTIN_DISTRIBUTION:
        return "dqar-bench", __version__
    if info.dist_name is not None:
        return info.dist_name, _version(info.dist_name) or info.dist_version
    top = info.cls.__module__.split(".")[0]
    names = _packages().get(top) or []
    if names:
        return names[0], _version(names[0])
    return None, None


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def _packages() -> dict[str, list[str]]:
    return dict(importlib.metadata.packages_distributions())


def _conditioning(suite: Suite) -> dict[str, Any]:
    if suite.prompt_lengths is not None:
        return {"prompt_lengths": list(suite.prompt_lengths)}
    if suite.prompts is not None:
        return {"prompts": list(suite.prompts)}
    if suite.prompt_embeddings is not None:
        return {"prompt_embeddings": suite.prompt_embeddings, "sha256": _file_hash(suite.prompt_embeddings)}
    return {"class_labels": list(suite.class_labels)}


def _file_hash(path: str) -> str | None:
    try:
        with open(path, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest() if sys.version_info >= (3, 11) else hashlib.sha256(fh.read()).hexdigest()
    except OSError:
        return None
