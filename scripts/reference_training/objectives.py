"""The training objectives of the reference DiTs: how a clean batch is noised, which timestep
the model is told, and what it must predict.

One training loop (`reference_training.train.train_dit`) serves both reference models; the
objective is the only thing that differs between epsilon-prediction DDPM training (`digits-dit`)
and rectified flow (`digits-flow`). Each objective draws its randomness from the generator it is
given, timestep first and noise second, so a seeded run is reproducible draw for draw.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


class Objective(Protocol):
    name: str

    def corrupt(self, x0: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(noised input, timestep per image as the model is given it, regression target)."""
        ...


@dataclass(frozen=True)
class EpsilonObjective:
    """DDPM: x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise at an integer t in [0, T); predict the noise."""

    alphas_cumprod: torch.Tensor
    name: str = "epsilon"

    def corrupt(self, x0: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        t = torch.randint(0, self.alphas_cumprod.shape[0], (x0.shape[0],), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        return a.sqrt() * x0 + (1.0 - a).sqrt() * noise, t, noise


SIGMA_SAMPLINGS = ("uniform", "logit-normal")


@dataclass(frozen=True)
class RectifiedFlowObjective:
    """Rectified flow: x_s = (1 - s) x0 + s noise for s in (0, 1); predict the velocity
    v = noise - x0. The model is told s * num_train_timesteps as a float, which is what
    diffusers' `FlowMatchEulerDiscreteScheduler.timesteps` hands it when sampling.

    `sigma_sampling` is how s is drawn: "uniform", or SD3's "logit-normal" (sigmoid of
    N(logit_mean, logit_std)), which spends the steps on mid-range noise levels.
    """

    sigma_sampling: str = "uniform"
    num_train_timesteps: int = 1000
    logit_mean: float = 0.0
    logit_std: float = 1.0
    name: str = "rectified-flow"

    def __post_init__(self) -> None:
        if self.sigma_sampling not in SIGMA_SAMPLINGS:
            raise ValueError(f"unknown sigma sampling '{self.sigma_sampling}' (one of: {', '.join(SIGMA_SAMPLINGS)})")

    def sigmas(self, n: int, gen: torch.Generator) -> torch.Tensor:
        if self.sigma_sampling == "uniform":
            return torch.rand(n, generator=gen)
        return torch.sigmoid(self.logit_mean + self.logit_std * torch.randn(n, generator=gen))

    def corrupt(self, x0: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s = self.sigmas(x0.shape[0], gen)
        noise = torch.randn(x0.shape, generator=gen)
        s4 = s.view(-1, 1, 1, 1)
        return (1.0 - s4) * x0 + s4 * noise, s * self.num_train_timesteps, noise - x0
