"""What a case *is*, compared between two runs: field by field, in words a reader knows.

A record's `identity` holds what the case is (its parts with every parameter, defaults
included, and their plugin, distribution and version; model, sampler, steps, guidance,
labels or prompts, seeds, dtype, device type, execution mode and options, probe queries,
the dqar-bench version). Two records of the same case differ in what they measure when
any of it differs, so `compare` prints each difference ("steps: 25 -> 20",
"gate.every: 2 -> 3", "dqar-bench: 0.1.0 -> 0.2.0") and `--strict` fails on them. Records
written before `identity` existed are compared on the record fields that say the same.
"""

from __future__ import annotations

from typing import Any

from dqar_bench.config.identity import MISSING, code_unknown, comparable_changes

IDENTITY_FALLBACK = ("parts", "model", "sampler", "steps", "guidance_scale", "batch", "seeds", "dtype", "device", "execution_mode", "dqar_bench")
"""What a record without `identity` (an older dqar-bench) says about what its case is."""


def identity_of(record: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """What the case is: the record's `identity`, or (older records) the fields that say it."""
    identity = record.get("identity")
    if isinstance(identity, dict):
        return identity, True
    return {k: record[k] for k in IDENTITY_FALLBACK if k in record}, False


def identity_diff(base: dict[str, Any], new: dict[str, Any]) -> tuple[list[str], bool]:
    """'field: base -> new' for every difference in what the case is; and whether both
    records carried an `identity` (else the record fields of both are compared)."""
    (a, recorded_a), (b, recorded_b) = identity_of(base), identity_of(new)
    recorded = recorded_a and recorded_b
    if not recorded:  # compare like with like
        a = {k: base[k] for k in IDENTITY_FALLBACK if k in base}
        b = {k: new[k] for k in IDENTITY_FALLBACK if k in new}
    return [f"{_identity_label(path)}: {_show(va)} -> {_show(vb)}" for path, va, vb in comparable_changes(a, b)], recorded


def code_unrecorded(base: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether one record has a part code digest the other lacks (written before digests):
    left out of `identity_diff`, as unknown rather than changed."""
    (a, recorded_a), (b, recorded_b) = identity_of(base), identity_of(new)
    return recorded_a and recorded_b and bool(code_unknown(a, b))


def _identity_label(path: tuple[str, ...]) -> str:
    """`parts.gate.params.every` reads as `gate.every`, `parts.gate.name` as `gate`,
    `parts.gate.version` as `gate version`, `dqar_bench` as `dqar-bench`."""
    if len(path) >= 2 and path[0] == "parts":
        kind, rest = path[1], path[2:]
        if not rest or rest == ("name",):
            return kind
        if rest[0] == "params" and len(rest) > 1:
            return kind + "." + ".".join(rest[1:])
        return f"{kind} {'.'.join(rest)}"
    if path and path[0] in ("dqar_bench", "dqar_bench_version"):
        return "dqar-bench" + ("." + ".".join(path[1:]) if len(path) > 1 else "")
    return ".".join(path)


def _show(value: Any) -> str:
    return "(none)" if value is MISSING else str(value)
