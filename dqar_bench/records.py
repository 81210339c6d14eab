"""A run directory: records appended as cases finish, outputs beside them, views derived.

`records.jsonl` gets one line per finished case, flushed and fsynced at once, so a crash
loses at most the case in flight and `--resume` can skip what is done. Outputs (final
latents per case) are kept in `outputs/` for quality against the baseline, also after a
resume. Files that are views (`results.csv`, `table.md`) are rewritten atomically.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

RECORDS = "records.jsonl"


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "outputs").mkdir(exist_ok=True)

    @property
    def records_path(self) -> Path:
        return self.path / RECORDS

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, default=_plain) + "\n"
        with open(self.records_path, "a+b") as fh:
            if fh.tell() > 0:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":  # a torn line from a crash: start a fresh one
                    line = "\n" + line
            fh.write(line.encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())

    def records(self) -> list[dict[str, Any]]:
        """Every complete record; a torn last line (a crash mid-write) is ignored."""
        return read_records(self.records_path)

    def finished(self) -> dict[str, dict[str, Any]]:
        """The latest record of each case that finished without error."""
        return {r["case"]: r for r in self.records() if r.get("status") == "ok"}

    def save_outputs(self, case: str, outputs: dict[int, torch.Tensor]) -> None:
        path = self._outputs_path(case)
        tmp = path.with_suffix(".tmp")
        save_file({f"seed_{seed}": t.detach().float().cpu().contiguous() for seed, t in outputs.items()}, str(tmp))
        os.replace(tmp, path)

    def load_outputs(self, case: str) -> dict[int, torch.Tensor] | None:
        path = self._outputs_path(case)
        if not path.exists():
            return None
        return {int(k.split("_", 1)[1]): v for k, v in load_file(str(path)).items()}

    def save_previews(self, case: str, previews: dict[int, torch.Tensor], meta: dict[str, str] | None = None) -> None:
        """Small uint8 images of a case's outputs per seed (decoded at run time), for the report."""
        path = self._previews_path(case)
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({f"seed_{seed}": t.contiguous() for seed, t in previews.items()}, str(tmp), metadata=meta)
        os.replace(tmp, path)

    def load_previews(self, case: str) -> tuple[dict[int, torch.Tensor], dict[str, str]] | None:
        """The previews saved for `case` and their metadata, or None when the run kept none."""
        path = self._previews_path(case)
        if not path.exists():
            return None
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
            return {int(k.split("_", 1)[1]): fh.get_tensor(k) for k in fh.keys()}, meta

    def write_text(self, name: str, text: str) -> Path:
        path = self.path / name
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
        return path

    def _outputs_path(self, case: str) -> Path:
        return self.path / "outputs" / (re.sub(r"[^A-Za-z0-9_.=-]+", "_", case) + ".safetensors")

    def _previews_path(self, case: str) -> Path:
        return self.path / "previews" / self._outputs_path(case).name


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a `records.jsonl`, in order; a torn or blank line is skipped.

    Reading never creates anything, so views (`compare`) can read any run directory."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "case" in record:
            out.append(record)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"cannot record {type(value).__name__}")
