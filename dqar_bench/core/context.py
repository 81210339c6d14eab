"""What the sampler tells the strategy parts at each denoising step."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class StepContext:
    """The state of one sampling call at step `step`, before the model is evaluated.

    `x0` is the sampler's latest prediction of the clean sample (from the previous step;
    None at step 0), derived for the model's prediction type (`prediction`: epsilon,
    v_prediction or flow), so the SNR a gate reads is right on every model. `timestep` is
    the scheduler's timestep, rounded (flow matching: 1000 sigma). `alpha_bar` is the
    signal's share of the variance at this step: the scheduler's cumulative alpha for
    diffusion schedules; for flow matching, where x_t = (1 - sigma) x0 + sigma noise, the
    alpha-bar of the variance-preserving schedule with the same SNR,
    (1 - sigma)^2 / ((1 - sigma)^2 + sigma^2). `sigma` is the flow-matching sigma (None for
    diffusion schedules). `signals` holds the cheap measurements the gate asked for, as
    host values.
    """

    step: int
    num_steps: int
    timestep: int
    latents: torch.Tensor
    x0: torch.Tensor | None = None
    alpha_bar: float = 1.0
    cond_len: int = 1
    signals: dict[str, Any] = field(default_factory=dict)
    sigma: float | None = None
    prediction: str = "epsilon"

    @property
    def progress(self) -> float:
        """Share of the sampling call already done, in [0, 1)."""
        return self.step / max(self.num_steps, 1)
