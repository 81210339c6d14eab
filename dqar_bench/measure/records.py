"""A run directory: records appended as cases finish, outputs beside them, views derived.

`records.jsonl` gets one line per finished case (a `measure.case_record.CaseRecord`),
flushed and fsynced at once; the environment is kept once, in `environment-<hash>.json`,
which the records name; the timed
rounds go to `rounds.jsonl` as each finishes (`dqar_bench.measure.rounds`), so a crash loses at
most the round in flight. Outputs (final latents per case) are kept in `outputs/` for
quality against the baseline, also after a resume; each is fsynced before its atomic
rename, and named by a sanitised, length-capped case name plus a short hash of the name,
so no two case names share a file and no case name can reach the harness's own files.
Files that are views (`results.csv`, `table.md`) are rewritten atomically.

A run holds an exclusive lock (`run.lock`, `fcntl.flock`) for as long as it writes, so a
second run into the same directory is refused instead of interleaving its lines.
Reading (`RunDir(path).records()`) creates and locks nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import IO, Any, Callable

import torch
from safetensors.torch import load, save

from dqar_bench.core.errors import DqarError
from dqar_bench.core.files import UnsafeFile, check_tree, open_append, read_bytes, read_text, write_atomic
from dqar_bench.measure.case_record import CaseRecord, environment_file, upgrade

try:
    import fcntl
except ImportError:  # pragma: no cover - not a POSIX system: no lock
    fcntl = None  # type: ignore[assignment]

RECORDS = "records.jsonl"
ROUNDS = "rounds.jsonl"
LOCK = "run.lock"
FID_REFERENCE = "fid-reference-features.safetensors"
"""The features of the baseline's images when they are the FID reference: outside `outputs/`, where only case files live."""
MAX_NAME = 60
"""Characters of a case name kept in its file name (the hash keeps names apart)."""


def outputs_file_name(case: str) -> str:
    """`<sanitised name>-<10 hex of sha256(name)>.safetensors`: distinct for distinct names."""
    safe = re.sub(r"[^A-Za-z0-9_.=-]+", "_", case)[:MAX_NAME].lstrip(".") or "case"
    digest = hashlib.sha256(case.encode("utf-8")).hexdigest()[:10]
    return f"{safe}-{digest}.safetensors"


def is_run(path: Path) -> bool:
    """Was this directory written by `dqar-bench run`?"""
    return (path / LOCK).exists() or (path / RECORDS).exists() or (path / ROUNDS).exists()


def check_target(path: Path, resume: bool) -> None:
    """Refuse (one line, nothing created) a directory a run cannot write into."""
    flag = "--resume" if resume else "--output"
    if resume:
        if not path.exists():
            raise DqarError(f"{flag} {path}: no such directory, so nothing to resume; start a run with --output {path}")
        if not path.is_dir():
            raise DqarError(f"{flag} {path}: is a file, not a run directory")
        if not is_run(path):
            raise DqarError(f"{flag} {path}: not a dqar-bench run directory (no {RECORDS}); give the directory a run wrote")
    elif path.exists():
        if not path.is_dir():
            raise DqarError(f"{flag} {path}: is a file; give a new or empty directory")
        if any(path.iterdir()):
            if not is_run(path):
                raise DqarError(f"{flag} {path}: is a non-empty directory that is not a dqar-bench run; give a new or empty directory")
            if _nonempty(path / RECORDS) or _nonempty(path / ROUNDS):
                raise DqarError(f"{path} already holds a run; pass --resume {path} to continue it, or choose another --output")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise DqarError(f"{flag} {path}: {existing} is a file, so the run directory cannot be made there")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DqarError(f"{flag} {path}: {existing} is not writable; choose another --output")


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock: IO[bytes] | None = None
        self._environments: dict[str, dict[str, Any]] = {}
        """Environments read so far, by file name (an upgraded old record brings its own)."""

    @classmethod
    def open(cls, path: str | Path, resume: bool) -> "RunDir":
        """Make (or reopen, on resume) the directory and take its lock for this run."""
        run = cls(path)
        run.path.mkdir(parents=True, exist_ok=True)
        check_tree(run.path, ("outputs", "previews"))  # no link or FIFO where the run writes or reads
        run._take_lock()
        try:
            if not resume and (run.records() or _nonempty(run.rounds_path)):
                raise DqarError(f"{run.path} already holds a run; pass --resume {run.path} to continue it, or choose another --output")
            (run.path / "outputs").mkdir(exist_ok=True)
        except BaseException:
            run.close()
            raise
        return run

    @classmethod
    def check_free(cls, path: str | Path) -> None:
        """Refuse a directory another run holds, making nothing: `--nproc` asks before it starts
        ranks, since a rank refused there leaves the others saying it died, and exit 1."""
        run = cls(path)
        if not (run.path / LOCK).is_file():
            return
        run._take_lock()
        run.close()

    def _take_lock(self) -> None:
        fh = open_append(self.path / LOCK)
        if fcntl is not None:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.close()
                raise DqarError(f"{self.path} is in use by another dqar-bench run (it holds {self.path / LOCK}); wait for it to finish or choose another --output") from None
        self._lock = fh

    def close(self) -> None:
        """Release the lock (the lock file stays: it marks the directory as a run)."""
        if self._lock is not None:
            if fcntl is not None:
                fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    @property
    def records_path(self) -> Path:
        return self.path / RECORDS

    @property
    def rounds_path(self) -> Path:
        return self.path / ROUNDS

    @property
    def fid_reference_path(self) -> Path:
        return self.path / FID_REFERENCE

    def append(self, record: CaseRecord) -> None:
        """The one place a case record is written."""
        append_line(self.records_path, record.to_json())

    def records(self, path: Path | None = None) -> list[CaseRecord]:
        """Every complete record (of `records.jsonl`, or of another records file `path`), of any
        schema version; a torn last line (a crash mid-write) is ignored."""
        return read_records(path or self.records_path, self._environments)

    def latest(self) -> dict[str, CaseRecord]:
        """The latest record of each case, whatever its status."""
        return {r.case: r for r in self.records()}

    def finished(self) -> dict[str, CaseRecord]:
        """The latest record of each case that finished without error."""
        return {r.case: r for r in self.records() if r.ok}

    def save_environment(self, environment: dict[str, Any]) -> str:
        """Keep the environment once for the run (`environment-<hash>.json`); its file name, for records to name."""
        name = environment_file(environment)
        self.write_text(name, json.dumps(environment, indent=1) + "\n")
        self._environments[name] = environment
        return name

    def environment_of(self, record: CaseRecord) -> dict[str, Any]:
        """The environment a record ran in; empty when it names none (or its file is gone)."""
        name = record.environment
        if not name:
            return {}
        if name not in self._environments:
            path = self.path / name
            if "/" in name or not path.is_file():
                return {}
            self._environments[name] = json.loads(path.read_text(encoding="utf-8"))
        return self._environments[name]

    def outputs_path(self, case: str) -> Path:
        return self.path / "outputs" / outputs_file_name(case)

    def save_outputs(self, case: str, outputs: dict[int, torch.Tensor]) -> Path:
        path = self.outputs_path(case)
        return write_atomic(path, save({f"seed_{seed}": t.detach().float().cpu().contiguous() for seed, t in outputs.items()}), self.path)

    def load_outputs(self, case: str) -> dict[int, torch.Tensor]:
        """The case's saved outputs; `OutputsError` (naming the file) if missing or unreadable."""
        path = self.outputs_path(case)
        if not path.exists() and not path.is_symlink():
            raise OutputsError(f"{path}: missing")
        try:
            return {int(k.split("_", 1)[1]): v for k, v in load(read_bytes(path, self.path)).items()}
        except UnsafeFile as exc:
            raise OutputsError(str(exc)) from None
        except Exception as exc:
            raise OutputsError(f"{path}: unreadable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'corrupt'})") from None

    def save_previews(self, case: str, previews: dict[int, torch.Tensor], meta: dict[str, str] | None = None) -> None:
        """Small uint8 images of a case's outputs per seed (decoded at run time), for the report."""
        path = self._previews_path(case)
        path.parent.mkdir(exist_ok=True)
        write_atomic(path, save({f"seed_{seed}": t.contiguous() for seed, t in previews.items()}, metadata=meta), self.path)

    def load_previews(self, case: str) -> tuple[dict[int, torch.Tensor], dict[str, str]] | None:
        """The previews saved for `case` and their metadata, or None when the run kept none."""
        path = self._previews_path(case)
        if not path.exists() and not path.is_symlink():
            return None
        data = read_bytes(path, self.path)
        meta = (json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")]).get("__metadata__") or {}) if len(data) >= 8 else {}  # the safetensors header
        return {int(k.split("_", 1)[1]): v for k, v in load(data).items()}, meta

    def _previews_path(self, case: str) -> Path:
        return self.path / "previews" / outputs_file_name(case)

    def write_text(self, name: str, text: str) -> Path:
        return write_atomic(self.path / name, text, self.path)


class OutputsError(Exception):
    """A case's outputs file cannot be used; the message names the file."""

def append_line(path: Path, entry: dict[str, Any]) -> None:
    """One JSON line appended and fsynced, so a crash loses at most the line in flight; a
    torn last line (a crash mid-write) is left as it is and the new line starts fresh."""
    line = json.dumps(entry, default=_plain) + "\n"
    with open_append(path) as fh:
        if fh.tell() > 0:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                line = "\n" + line
        fh.write(line.encode("utf-8"))
        fh.flush()
        os.fsync(fh.fileno())


def read_records(path: Path, environments: dict[str, dict[str, Any]] | None = None) -> list[CaseRecord]:
    """The records of a `records.jsonl`, in order, each brought to the current schema
    (`case_record.upgrade`); a torn or blank line is skipped. An old record's inline
    environment goes to `environments`, by the file name the record now names.

    Reading never creates anything, so views (`compare`) can read any run directory."""
    out = []
    for line in read_lines(path, lambda entry: "case" in entry):
        try:
            raw, environment = upgrade(line)
        except ValueError as exc:
            raise DqarError(f"{path}: case '{line['case']}': {exc}") from None
        record = CaseRecord.from_json(raw)
        if environment is not None and environments is not None and record.environment:
            environments.setdefault(record.environment, environment)
        out.append(record)
    return out


def read_lines(path: Path, accept: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file that `accept` takes, in order; a torn or blank
    line (a crash mid-write) is skipped, and a missing file has none."""
    if not path.exists() and not path.is_symlink():
        return []
    out = []
    for line in read_text(path).splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and accept(entry):
            out.append(entry)
    return out


def _nonempty(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"cannot record {type(value).__name__}")
