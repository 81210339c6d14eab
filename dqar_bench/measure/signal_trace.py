"""What a calibration recorded on the untouched model: every signal a threshold gate reads, per step.

A threshold means nothing across models: a tiny model's residuals move more than a trained
one's, and FLUX's TeaCache fit or MagCache ratios are FLUX.1-dev's, not another
checkpoint's. So `dqar-bench calibrate` runs the model's baseline on calibration inputs
and keeps, per step (and per block or CFG branch where that applies), averaged over the
calibration seeds, the numbers each gate compares with its threshold, in the form that
gate reads them (`dqar_bench.runs.signal_record` records them through the gates' own
signal path). Thresholds for a target reuse, TeaCache's rescale polynomial and MagCache's
ratios are all read from it. Plain data (no torch), so it sits in a calibration file as
JSON and loads without a model.

The TeaCache fit. The official repository (ali-vilab/TeaCache at 7c10efc4) ships no
fitting script; its scripts only apply the fit, e.g. `TeaCache4FLUX/teacache_flux.py`
lines 113-115: `np.poly1d(coefficients)` of the modulated input's relative L1,
`(m_t - m_{t-1}).abs().mean() / m_{t-1}.abs().mean()`. How the fit was made the authors
state in issue #2 (LiewFeng, 2024-12-12 and 2024-12-16): `np.polyfit(x, y, 4)`, x the
relative L1 of "the timestep embedding modulated noisy input", y that of "the model
output", over every step of every calibration prompt (the paper, arXiv 2411.19108, measures
the model output's change between consecutive timesteps as a relative L1 distance, against
the earlier step's output, the form the scripts use for the input). So `output_change` is
the relative L1 of the transformer's output (its `sample`, the prediction the sampler
reads, before guidance combines the branches) against the previous step's, and
`fit_rescale` fits `rescale_pairs`, every (input, output) pair of every seed, not the
seed means.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Sequence

VERSION = 1
"""The layout of `to_json`; `from_json` refuses another."""

Value = float | None
"""A measured number, or None where the signal is undefined (a first step, a block never probed)."""


@dataclass
class SignalTrace:
    """The signals of one calibration, per step; None where a signal is undefined or not recorded.

    - `snr[t]`: the noise schedule's SNR at step t (`dqar_bench.strategy.signals.schedule_snr`,
      the `snr` gate's default source); None where it is infinite (no noise left).
    - `entropy[t][b]`: block b's normalised attention entropy (H / log N_keys) as the
      `entropy` gate reads it at step t, i.e. from the block's compute at step t - 1 (the
      strategy's probe, on the SDPA call the block's own processor makes); None at step 0
      and where no probe ran.
    - `residual_change[t]`: FirstBlockCache / DBCache F1B0's relative L1 change of block 0's
      residual since step t - 1 (`signals.residual_change`); None at step 0.
    - `modulation_change[t]`: TeaCache's relative L1 change of block 0's timestep-modulated
      input since step t - 1 (the `teacache` gate's input, the family's default mode); the
      whole list None on a family without one.
    - `output_change[t]`: the relative L1 change of the transformer's output since step t - 1
      (the TeaCache fit's y, see the module docstring); None at step 0.
    - `mag_ratios`: MagCache's ratios (`magnitude_ratios`), one list, or [cond, uncond] where
      `branches` is 2, the form the `magnitude` gate's `mag_ratios` takes.
    - `rescale_pairs`: every (modulation change, output change) of every seed and step where
      both are defined: the points TeaCache's fit is made from.

    Where CFG runs as two passes (`branches` 2), the per-step signals other than
    `mag_ratios` are the conditional pass's: the gates decide on it for both.
    """

    timesteps: list[int]
    steps: int
    blocks: int
    branches: int
    snr: list[Value]
    entropy: list[list[Value]]
    residual_change: list[Value]
    modulation_change: list[Value] | None
    output_change: list[Value]
    mag_ratios: list[float] | list[list[float]]
    rescale_pairs: list[list[float]] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        per_step = {"timesteps": self.timesteps, "snr": self.snr, "entropy": self.entropy,
                    "residual_change": self.residual_change, "output_change": self.output_change}
        if self.modulation_change is not None:
            per_step["modulation_change"] = self.modulation_change
        for name, values in per_step.items():
            if len(values) != self.steps:
                raise ValueError(f"signal trace: '{name}' has {len(values)} values, expected one per step ({self.steps})")
        if any(len(row) != self.blocks for row in self.entropy):
            raise ValueError(f"signal trace: 'entropy' must have {self.blocks} values (one per block) at every step")
        if self.branches not in (1, 2):
            raise ValueError(f"signal trace: 'branches' must be 1 or 2, got {self.branches}")
        lists = self.branch_ratios
        if len(lists) != self.branches or any(len(r) != self.steps for r in lists):
            raise ValueError(f"signal trace: 'mag_ratios' must hold {self.branches} list(s) of {self.steps} ratios")

    @property
    def branch_ratios(self) -> list[list[float]]:
        """MagCache's ratios per branch, always as a list of lists."""
        ratios = self.mag_ratios
        if ratios and all(isinstance(r, list) for r in ratios):
            return ratios  # type: ignore[return-value]
        return [ratios]  # type: ignore[list-item]

    def teacache_fit(self, degree: int = 4) -> list[float] | None:
        """TeaCache's rescale polynomial for this model (highest power first), or None where
        the family has no modulated input."""
        if self.modulation_change is None:
            return None
        return fit_rescale([p[0] for p in self.rescale_pairs], [p[1] for p in self.rescale_pairs], degree)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data: every non-finite number becomes null."""
        out: dict[str, Any] = {"version": VERSION}
        for f in fields(self):
            out[f.name] = json_safe(getattr(self, f.name))
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "SignalTrace":
        """The trace `to_json` wrote; a ValueError naming the field for anything else."""
        if not isinstance(data, dict):
            raise ValueError(f"signal trace: expected a JSON object, got {type(data).__name__}")
        if data.get("version") != VERSION:
            raise ValueError(f"signal trace: 'version' must be {VERSION}, got {data.get('version')!r}; calibrate again")
        names = [f.name for f in fields(cls)]
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [n for n in required if n not in data]
        if missing:
            raise ValueError(f"signal trace: missing field(s) {', '.join(missing)}")
        unknown = sorted(set(data) - set(names) - {"version"})
        if unknown:
            raise ValueError(f"signal trace: unknown field(s) {', '.join(unknown)}")
        try:
            return cls(**{n: data[n] for n in names if n in data})
        except TypeError as exc:
            raise ValueError(f"signal trace: {exc}") from None


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float made None (JSON has no inf or NaN), through lists and mappings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    return value


def fit_rescale(x: Sequence[Value], y: Sequence[Value], degree: int = 4) -> list[float]:
    """TeaCache's rescale polynomial: `numpy.polyfit(x, y, degree)`, highest power first.

    x is the modulated input's relative L1 change per step, y the output's (the official
    fit, see the module docstring); pairs where either is undefined (a first step: None,
    inf or NaN) are skipped. The result is the `teacache` gate's `coefficients`.
    """
    import numpy as np

    if len(x) != len(y):
        raise ValueError(f"fit_rescale: x has {len(x)} values and y {len(y)}; give one pair per step")
    pairs = [(a, b) for a, b in zip(x, y) if _defined(a) and _defined(b)]
    if len(pairs) <= degree:
        raise ValueError(
            f"fit_rescale: a degree-{degree} fit needs at least {degree + 1} defined pairs, got {len(pairs)}; "
            "calibrate with more steps or seeds"
        )
    xs, ys = (np.array(v, dtype=np.float64) for v in zip(*pairs))
    return [float(c) for c in np.polyfit(xs, ys, degree)]


def _defined(value: Value) -> bool:
    return value is not None and math.isfinite(value)
