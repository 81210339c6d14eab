"""Whether a case record read from disk has the shape `CaseRecord` declares.

Run directories travel (CI artifacts, shared results), so a records.jsonl may have been
edited by hand or damaged: a number written as text, a list where a mapping belongs. A
view that meets one deep inside its arithmetic fails with an AttributeError and a
traceback; checked once where records are read, it is one line naming the file, the case
and the field. The class's own annotations are the specification (one place says what a
field holds); the numbers the views read inside the mapping fields are listed in
`INNER_NUMBERS`, since the annotation there is only `dict[str, Any]`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Union

from dqar_bench.core.errors import DqarError
from dqar_bench.measure.case_record import CaseRecord

INNER_NUMBERS: dict[str, tuple[str, ...]] = {
    "flops": ("per_call",),
    "fidelity": ("fid", "kid"),
    "quality": ("psnr_db", "mse", "ssim", "lpips"),
    "clip": ("clip_score",),
    "energy": ("joules_per_image",),
    "memory": ("torch_peak_reserved_bytes", "peak_rss_bytes"),
}
"""Numbers (or null) inside a record's mapping fields that tables and `compare` compute with."""

_HINTS = typing.get_type_hints(CaseRecord)
_FIELDS = tuple(f.name for f in dataclasses.fields(CaseRecord) if f.name != "extra")


def shape_problem(record: CaseRecord) -> str | None:
    """The first field whose value does not have its declared shape, said in one line; None if all do."""
    for name in _FIELDS:
        value = getattr(record, name)
        hint = _HINTS[name]
        if not _fits(value, hint):
            return f"field '{name}' must be {_describe(hint)}, got {_short(value)}"
    for name, keys in INNER_NUMBERS.items():
        mapping = getattr(record, name) or {}
        for key in keys:
            value = mapping.get(key)
            if value is not None and not _fits(value, float):
                return f"field '{name}.{key}' must be a number, got {_short(value)}"
    return None


def check_shape(record: CaseRecord, path: Path) -> None:
    """Refuse a record of the wrong shape: one line naming the file, the case and the field."""
    problem = shape_problem(record)
    if problem:
        raise DqarError(f"{path}: case {_short(record.case)}: {problem}; fix the line (or remove it and rerun the case)")


def _fits(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint in (str, bool):
        return isinstance(value, hint)
    if origin is list:
        return isinstance(value, list) and all(_fits(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) and _fits(v, args[1]) for k, v in value.items())
    return True


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        kinds = [_describe(a) for a in args if a is not type(None)]
        return " or ".join(kinds) + (" or null" if type(None) in args else "")
    if origin is list:
        return f"a list of ({_describe(args[0])})"
    if origin is dict:
        return "a mapping" if args[1] is Any else f"a mapping of ({_describe(args[1])})"
    words = {str: "text", int: "an integer", float: "a number", bool: "true or false"}
    return words.get(hint, "anything") if hint is not Any else "anything"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
