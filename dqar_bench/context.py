"""What the sampler tells the strategy parts at each denoising step."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class StepContext:
    """The state of one sampling call at step `step`, before the model is evaluated.

    `x0` is the sampler's latest prediction of the clean sample (from the previous step;
    None at step 0). `alpha_bar` is the active scheduler's cumulative alpha at `timestep`.
    `signals` holds the cheap measurements the gate asked for, as host values.
    """

    step: int
    num_steps: int
    timestep: int
    latents: torch.Tensor
    x0: torch.Tensor | None = None
    alpha_bar: float = 1.0
    cond_len: int = 1
    signals: dict[str, Any] = field(default_factory=dict)

    @property
    def progress(self) -> float:
        """Share of the sampling call already done, in [0, 1)."""
        return self.step / max(self.num_steps, 1)
