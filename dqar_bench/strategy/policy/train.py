"""Fitting the policy MLP to a trace: a fixed split, early stopping, and the figures that matter.

The split is by sampling call (suite, case, seed) whenever the trace holds more than one,
so validation asks about sampling calls the MLP never saw, not about neighbours of its
training lines; a trace of a single call is split by line. Training stops when the
validation loss has not improved for `patience` epochs and keeps the best epoch. The
figures reported are the validation accuracy next to the majority-class accuracy (what a
constant answer would score) and the reuse rate the policy would give on the validation
candidates at threshold 0.5, with the share of those reuses that were really safe.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from dqar_bench.core.errors import DqarError
from dqar_bench.strategy.policy.features import FEATURES
from dqar_bench.strategy.policy.model import MAX_PARAMETERS, PolicyMLP, parameter_count

DEFAULT_HIDDEN = (64, 32)


@dataclass
class TraceSet:
    """A trace read into tensors: features [n, len(FEATURES)] (NaN where unmeasured), labels [n]."""

    path: Path
    features: torch.Tensor
    labels: torch.Tensor
    groups: list[tuple[str, str, str]]
    tolerance: float | None

    def __len__(self) -> int:
        return len(self.groups)


@dataclass
class TrainReport:
    samples: int
    train_size: int
    val_size: int
    split: str
    parameters: int
    epochs: int
    best_epoch: int
    val_loss: float
    val_accuracy: float
    majority_accuracy: float
    safe_rate: float
    reuse_rate: float
    reuse_precision: float | None

    def describe(self) -> str:
        precision = "n/a" if self.reuse_precision is None else f"{self.reuse_precision:.1%}"
        return "\n".join([
            f"samples: {self.samples} ({self.train_size} train, {self.val_size} validation, split by {self.split}); "
            f"MLP with {self.parameters} parameters",
            f"early stopping: best validation loss {self.val_loss:.4f} at epoch {self.best_epoch} of {self.epochs}",
            f"validation accuracy: {self.val_accuracy:.1%} (majority class: {self.majority_accuracy:.1%})",
            f"reuse rate at threshold 0.5: {self.reuse_rate:.1%} of validation candidates "
            f"({precision} of them truly safe; {self.safe_rate:.1%} of candidates are safe)",
        ])


def read_traces(path: str | Path) -> TraceSet:
    """Read a `dqar-bench trace` file; a malformed line is a one-line error naming its number."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DqarError(f"{path}: cannot read the trace file ({getattr(exc, 'strerror', None) or exc})") from None
    rows: list[list[float]] = []
    labels: list[float] = []
    groups: list[tuple[str, str, str]] = []
    tolerances: set[float] = set()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        row, label, group, tolerance = _parse_line(path, number, line)
        rows.append(row)
        labels.append(label)
        groups.append(group)
        if tolerance is not None:
            tolerances.add(tolerance)
    if len(rows) < 2:
        raise DqarError(f"{path}: holds {len(rows)} trace line(s); training needs at least 2 (trace more seeds or cases)")
    return TraceSet(
        path,
        torch.tensor(rows, dtype=torch.float32),
        torch.tensor(labels, dtype=torch.float32),
        groups,
        tolerances.pop() if len(tolerances) == 1 else None,
    )


def _parse_line(path: Path, number: int, line: str) -> tuple[list[float], float, tuple[str, str, str], float | None]:
    where = f"{path}:{number}"
    fix = "each line must be a JSON object written by `dqar-bench trace`"
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DqarError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno}); {fix}") from None
    if not isinstance(data, dict):
        raise DqarError(f"{where}: not a JSON object; {fix}")
    features = data.get("features")
    if not isinstance(features, dict):
        raise DqarError(f"{where}: field 'features' is missing or not an object; {fix}")
    missing = [n for n in FEATURES if n not in features]
    extra = [n for n in features if n not in FEATURES]
    if missing or extra:
        problem = f"lacks feature '{missing[0]}'" if missing else f"has feature '{extra[0]}' this version does not compute"
        raise DqarError(f"{where}: {problem} (features: {', '.join(FEATURES)}); trace again with this version")
    row = []
    for name in FEATURES:
        value = features[name]
        if value is None:
            row.append(math.nan)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise DqarError(
                    f"{where}: feature '{name}' is {value}, not a finite number; `dqar-bench trace` writes a feature it "
                    "could not measure as null, so this file was edited or damaged: trace again"
                )
            row.append(float(value))
        else:
            raise DqarError(f"{where}: feature '{name}' must be a number or null, got {value!r}")
    label = data.get("label")
    if label not in (0, 1) or isinstance(label, float):
        raise DqarError(f"{where}: field 'label' must be 0 or 1, got {label!r}")
    tolerance = data.get("tolerance")
    tolerance = float(tolerance) if isinstance(tolerance, (int, float)) and not isinstance(tolerance, bool) else None
    group = (str(data.get("suite", "")), str(data.get("case", "")), str(data.get("seed", "")))
    return row, float(label), group, tolerance


def train_policy(
    data: TraceSet,
    hidden: Sequence[int] = DEFAULT_HIDDEN,
    seed: int = 0,
    val_fraction: float = 0.2,
    max_epochs: int = 500,
    patience: int = 30,
    lr: float = 3e-3,
    batch_size: int = 256,
) -> tuple[PolicyMLP, TrainReport]:
    """Fit a PolicyMLP; deterministic for a given trace, seed and machine."""
    if not 0.0 < val_fraction < 1.0:
        raise DqarError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    if max_epochs < 1 or patience < 1:
        raise DqarError(f"--max-epochs and --patience must be >= 1, got {max_epochs} and {patience}")
    if not hidden or any(h < 1 for h in hidden):
        raise DqarError(f"--hidden must be one or more positive layer widths, got {list(hidden)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = PolicyMLP(len(FEATURES), hidden)
        if parameter_count(model) >= MAX_PARAMETERS:
            raise DqarError(f"--hidden {' '.join(map(str, hidden))} gives {parameter_count(model)} parameters; the limit is {MAX_PARAMETERS}")
        train_idx, val_idx, split = _split(data, val_fraction, seed)
        x_train, y_train = data.features[train_idx], data.labels[train_idx]
        x_val, y_val = data.features[val_idx], data.labels[val_idx]
        model.feature_mean.copy_(_nanmean(x_train))
        model.feature_std.copy_(_nanstd(x_train, model.feature_mean))
        loss_fn = torch.nn.BCEWithLogitsLoss()
        optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
        best_loss, best_epoch, best_state, epoch = math.inf, 0, None, 0
        for epoch in range(1, max_epochs + 1):
            model.train()
            for batch in torch.randperm(len(train_idx)).split(batch_size):
                optimizer.zero_grad()
                loss_fn(model(x_train[batch]), y_train[batch]).backward()
                optimizer.step()
            model.eval()
            with torch.no_grad():
                val_loss = float(loss_fn(model(x_val), y_val))
            if val_loss < best_loss - 1e-6:
                best_loss, best_epoch = val_loss, epoch
                best_state = {k: v.clone() for k, v in model.state_dict().items()}
            elif epoch - best_epoch >= patience:
                break
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval().requires_grad_(False)
    predicted = model.probability(x_val) > 0.5
    truth = y_val > 0.5
    reuses = int(predicted.sum())
    safe_rate = float(truth.float().mean())
    report = TrainReport(
        samples=len(data),
        train_size=len(train_idx),
        val_size=len(val_idx),
        split=split,
        parameters=parameter_count(model),
        epochs=epoch,
        best_epoch=best_epoch,
        val_loss=best_loss,
        val_accuracy=float((predicted == truth).float().mean()),
        majority_accuracy=max(safe_rate, 1.0 - safe_rate),
        safe_rate=safe_rate,
        reuse_rate=reuses / len(val_idx),
        reuse_precision=float((predicted & truth).sum()) / reuses if reuses else None,
    )
    return model, report


def _split(data: TraceSet, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    generator = torch.Generator().manual_seed(seed)
    groups = sorted(set(data.groups))
    if len(groups) >= 2:
        order = torch.randperm(len(groups), generator=generator).tolist()
        n_val = min(max(1, round(len(groups) * val_fraction)), len(groups) - 1)
        val_groups = {groups[i] for i in order[:n_val]}
        is_val = torch.tensor([g in val_groups for g in data.groups])
        return (~is_val).nonzero().squeeze(1), is_val.nonzero().squeeze(1), "sampling call"
    order = torch.randperm(len(data), generator=generator)
    n_val = min(max(1, round(len(data) * val_fraction)), len(data) - 1)
    return order[n_val:], order[:n_val], "line"


def _nanmean(x: torch.Tensor) -> torch.Tensor:
    mean = torch.nanmean(x, dim=0)
    return torch.nan_to_num(mean, nan=0.0)


def _nanstd(x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    std = torch.nanmean((x - mean).pow(2), dim=0).sqrt()
    std = torch.nan_to_num(std, nan=1.0)
    return torch.where(std > 1e-6, std, torch.ones_like(std))
