"""Weights files a user names are read as data, never run as code.

A `.pth` file is a pickle, and unpickling can call any function the file names (its
objects' `__reduce__`): a downloaded "Inception checkpoint" could delete files. So every
weights path a user gives is checked here before anything else runs: a `.safetensors` file
by its header, anything else with `torch.load(..., weights_only=True)`, whose unpickler
builds tensors and plain containers only and refuses every other global. A file that
needs more is refused in one line.

Libraries that load weights themselves (torch-fidelity calls `torch.load(path,
weights_only=False)` for Inception, transformers a CLIP checkpoint's `.bin`) are called inside
`weights_only_loads()`, which sets torch's own `TORCH_FORCE_WEIGHTS_ONLY_LOAD` switch, so
even their loads cannot run code if a file changed after the check.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Iterator

import torch

from dqar_bench.core.errors import DqarError

FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
SAFE_FORMATS = "dqar-bench reads weights only as safetensors or as plain tensors saved with torch.save"


def check_weights_file(path: str | Path, what: str) -> None:
    """Refuse, in one line naming `what` (the option it came from), a weights file that is
    missing, unreadable, or a pickle that would build anything but tensors."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DqarError(f"{what}: no file at {path}")
    if path.suffix == ".safetensors":
        _check_safetensors(path, what)
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols: not the user's business
            torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if _is_safetensors(path):
            return
        raise DqarError(
            f"{what}: {path} is refused: it is not plain weights ({_unpickler_detail(exc, path)}), and a pickle that builds "
            f"other objects can run code when loaded; {SAFE_FORMATS}"
        ) from None
    except Exception as exc:  # a truncated zip, an empty file, ...
        if _is_safetensors(path):
            return
        raise DqarError(f"{what}: {path} cannot be read as weights ({type(exc).__name__}: {_first_line(exc)}); {SAFE_FORMATS}") from None


@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """Inside, every `torch.load` is weights-only, whatever its caller asks for."""
    previous = os.environ.get(FORCE_WEIGHTS_ONLY)
    os.environ[FORCE_WEIGHTS_ONLY] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(FORCE_WEIGHTS_ONLY, None)
        else:
            os.environ[FORCE_WEIGHTS_ONLY] = previous


def _check_safetensors(path: Path, what: str) -> None:
    try:
        _read_safetensors_header(path)
    except Exception as exc:
        raise DqarError(f"{what}: {path} is not a readable safetensors file ({type(exc).__name__}: {_first_line(exc)})") from None


def _is_safetensors(path: Path) -> bool:
    try:
        _read_safetensors_header(path)
    except Exception:
        return False
    return True


def _read_safetensors_header(path: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as handle:
        handle.keys()


def _unpickler_detail(exc: BaseException, path: Path | None = None) -> str:
    """What the file would have called (`it calls posix.system`), read from its pickle
    opcodes; else torch's message, cut to what the unpickler refused."""
    called = _refused_globals(path) if path is not None else []
    if called:
        return "it calls " + ", ".join(called[:3]) + (f" and {len(called) - 3} more" if len(called) > 3 else "")
    text = str(exc)
    match = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\s+was not an allowed global|\n\n|$)", text, re.S)
    detail = " ".join(match.group(1).split()) if match else _first_line(exc)
    return detail[:160]


def _refused_globals(path: Path) -> list[str]:
    """The globals a pickle (bare, or `data.pkl` in torch's zip) names that torch's weights-only
    unpickler does not allow, in order; found by reading opcodes, never by unpickling."""
    import pickletools
    import zipfile

    from torch._weights_only_unpickler import _get_allowed_globals

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                name = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
                data = archive.read(name) if name else b""
        else:
            data = path.read_bytes()
        allowed = set(_get_allowed_globals())
        found: list[str] = []
        strings: list[str] = []
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8", "SHORT_BINSTRING", "BINSTRING", "STRING"):
                strings.append(str(arg))
            elif op.name in ("GLOBAL", "STACK_GLOBAL"):
                name = str(arg).replace(" ", ".") if op.name == "GLOBAL" else ".".join(strings[-2:])
                if name not in allowed and not name.startswith("torch.") and name not in found:
                    found.append(name)
        return found
    except Exception:  # noqa: BLE001 - a pickle too broken to scan: torch's own words stand
        return []


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:160]
