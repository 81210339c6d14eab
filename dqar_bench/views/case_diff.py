"""What a case *is*, compared between two runs: field by field, in words a reader knows.

A record's `identity` holds what the case is (its parts with every parameter, defaults
included, and their plugin, distribution and version; model, sampler, steps, guidance,
labels or prompts, seeds, dtype, device type, execution mode and options, probe queries,
the dqar-bench version). Two records of the same case differ in what they measure when
any of it differs, so `compare` prints each difference ("steps: 25 -> 20",
"gate.every: 2 -> 3", "dqar-bench: 0.1.0 -> 0.2.0") and `--strict` fails on them. A record
written before `identity` existed gets one rebuilt from its fields on reading
(`measure.case_record.upgrade`); against it, only what that rebuilt identity says is compared.
"""

from __future__ import annotations

from typing import Any

from dqar_bench.config.identity import MISSING, code_unknown, comparable_changes
from dqar_bench.measure.case_record import CaseRecord


def identity_diff(base: CaseRecord, new: CaseRecord) -> tuple[list[str], bool]:
    """'field: base -> new' for every difference in what the case is; and whether both
    records carried an `identity` (else only what the rebuilt one says is compared)."""
    a, b = base.identity, new.identity
    recorded = base.identity_recorded and new.identity_recorded
    if not recorded:  # compare like with like: what a record from before `identity` could say
        rebuilt = (base if not base.identity_recorded else new).identity
        a = {k: v for k, v in a.items() if k in rebuilt}
        b = {k: v for k, v in b.items() if k in rebuilt}
    return [f"{_identity_label(path)}: {_show(va)} -> {_show(vb)}" for path, va, vb in comparable_changes(a, b)], recorded


def code_unrecorded(base: CaseRecord, new: CaseRecord) -> bool:
    """Whether one record has a part code digest the other lacks (written before digests):
    left out of `identity_diff`, as unknown rather than changed."""
    return base.identity_recorded and new.identity_recorded and bool(code_unknown(base.identity, new.identity))


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
