"""What `--resume` may keep: finished cases found by content (`case_key`), not by name.

A case is done when the run holds a record with its key whose status is `ok` (and whose
outputs file still reads) or `unsupported` (trying again cannot help); a failed case is
tried again. A case recorded under the same name with a different key has changed: the
resume is refused with one line naming those cases and what differs, unless
`--rerun-changed` asks to rerun just them. A case under a new name whose key matches a
finished record is that record, renamed.

A kept record's paired figures (quality against the baseline's outputs, FID against its
images, speedup against its rounds) stand only while its case is paired with the same
baseline: the baseline's name and key it was recorded with (`baseline_case`,
`baseline_key`) must be those of the suite's baseline for it now. A swapped or edited
baseline makes every such record a changed case, refused with the reason like any other
change, or rerun under `--rerun-changed` (timings cannot be recomputed from stored
outputs, so re-pairing in place would be half a fix).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch

from dqar_bench.config.identity import differences
from dqar_bench.config.suite import Case
from dqar_bench.core.errors import DqarError
from dqar_bench.measure.case_record import CaseRecord
from dqar_bench.measure.records import OutputsError, RunDir

DONE = ("ok", "unsupported")
SHOWN = 5
"""Changed cases named in the refusal before "and N more"."""


@dataclass
class ResumePlan:
    done: dict[str, CaseRecord] = field(default_factory=dict)
    """Case name -> the record that stands for it (already in the run)."""
    renamed: dict[str, CaseRecord] = field(default_factory=dict)
    """Case name -> a finished record of the same content under another name."""
    rerun: list[str] = field(default_factory=list)
    """Changed cases that `--rerun-changed` reruns."""
    notes: list[str] = field(default_factory=list)
    """One line each: outputs that could not be used, so their case is rerun."""


def plan_resume(
    run: RunDir,
    cases: list[Case],
    keys: dict[str, str],
    identities: dict[str, dict[str, Any]],
    settings: dict[str, Any],
    rerun_changed: bool = False,
    baselines: dict[str, str] | None = None,
) -> ResumePlan:
    """What this resume keeps and reruns; `baselines` maps each case to its baseline's name now."""
    plan = ResumePlan()
    records = run.records()
    latest = {r.case: r for r in records}
    by_key: dict[str, CaseRecord] = {}
    for record in records:
        if record.status in DONE and record.case_key:
            by_key[record.case_key] = record
    changed: list[str] = []
    for case in cases:
        key = keys[case.name]
        record = latest.get(case.name)
        paired_with = baselines.get(case.name) if baselines else None
        if record is not None and record.case_key == key:
            if record.status in DONE:
                moved = _pairing_changed(record, paired_with, keys, latest)
                if moved:
                    changed.append(f"{case.name} ({moved})")
                    plan.rerun.append(case.name)
                elif _usable(run, record, plan):
                    plan.done[case.name] = record
            continue  # failed (or its outputs are gone): run again
        found = by_key.get(key)
        if found is not None and not _pairing_changed(found, paired_with, keys, latest) and _usable(run, found, plan):
            plan.renamed[case.name] = found
            continue
        if record is not None:
            changed.append(f"{case.name} ({_what_changed(record, identities[case.name], settings)})")
            plan.rerun.append(case.name)
    if changed and not rerun_changed:
        shown = ", ".join(changed[:SHOWN]) + (f" and {len(changed) - SHOWN} more" if len(changed) > SHOWN else "")
        raise DqarError(
            f"--resume {run.path}: the suite differs from the recorded run in {len(changed)} case(s): {shown}; "
            f"pass --rerun-changed to rerun just those, or start a new run with --output"
        )
    return plan


def _pairing_changed(record: CaseRecord, baseline: str | None, keys: dict[str, str], latest: dict[str, CaseRecord]) -> str | None:
    """Why a finished record's paired figures no longer hold (None: they do).

    A record written before `baseline_key` was kept is taken as paired with the latest
    record of its baseline's name (what that run scored it against)."""
    if baseline is None or record.status != "ok":
        return None  # nothing paired: an unsupported case has no figures
    then = record.baseline_case
    then_key = record.baseline_key or (latest[then].case_key if then in latest else None)
    if then_key == keys[baseline]:
        return None
    if then != baseline:
        return f"paired with baseline '{then}' when recorded, now with '{baseline}'"
    return f"its baseline '{baseline}' changed since its quality and speedup were measured against it"


def _usable(run: RunDir, record: CaseRecord, plan: ResumePlan) -> bool:
    """An ok record counts only while its outputs file reads and holds what was recorded
    (quality is computed from it): its digest, where the record has one, and finite values."""
    if not record.ok:
        return True
    try:
        outputs = run.load_outputs(record.case)
    except OutputsError as exc:
        plan.notes.append(f"{exc}; case '{record.case}' is run again")
        return False
    path = run.outputs_path(record.case)
    recorded = record.outputs_sha256
    if recorded is not None and recorded != outputs_digest(outputs):
        plan.notes.append(f"{path}: its data changed since it was recorded (sha256 differs); case '{record.case}' is run again")
        return False
    if not all(bool(torch.isfinite(t).all()) for t in outputs.values()):
        plan.notes.append(f"{path}: holds NaN or inf, which no recorded case has; case '{record.case}' is run again")
        return False
    return True


def outputs_digest(outputs: dict[int, torch.Tensor]) -> str:
    """sha256 of a case's outputs as saved (float32, by seed): recorded with the case, so a
    resume sees data changed under an intact header."""
    digest = hashlib.sha256()
    for seed in sorted(outputs):
        t = outputs[seed].detach().float().cpu().contiguous()
        digest.update(f"{seed}:{tuple(t.shape)}:".encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()


def _what_changed(record: CaseRecord, identity: dict[str, Any], settings: dict[str, Any]) -> str:
    if not record.identity_recorded:
        return "recorded without a case key"
    diffs = differences(record.identity, identity) + [f"settings.{d}" for d in differences(record.settings or {}, settings)]
    return ", ".join(diffs[:4]) + (", ..." if len(diffs) > 4 else "") if diffs else "its key differs"
