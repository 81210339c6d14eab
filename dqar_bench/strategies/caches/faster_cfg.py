"""FasterCache's CFG cache: the unconditional branch from the conditional one, by frequency.

FasterCache (Lv et al. 2024, Eq. 9-10) observes that the difference between the two
guidance branches' outputs changes slowly in frequency space: its low frequencies over the
early steps, its high frequencies over the late ones. On a full step it keeps
`delta_low = low(uncond) - low(cond)` and `delta_high = high(uncond) - high(cond)`
(`low` / `high`: the centred 2-D FFT over the last two axes, inside / outside a disc of
radius min(H, W) // 5); on a skipped step it runs the conditional branch alone, scales
the deltas by `alpha_low` / `alpha_high` where the timestep is inside their windows (else
by 1), and returns `uncond = real(ifft2(ifftshift(low(cond) + delta_low + high(cond) + delta_high)))`.

Which steps skip, and every constant, follow diffusers' `FasterCacheDenoiserHook`
(diffusers 0.42.1, `hooks/faster_cache.py`): skip where the call index is > 0, not a
multiple of `every` (`unconditional_batch_skip_range`, 5) and `window[0] < t < window[1]`
(`unconditional_batch_timestep_skip_range`, (-1, 641)); `alpha_low` / `alpha_high` 1.1
inside `low_window` (99, 901) / `high_window` (-1, 301) (`low_frequency_weight_callback`
and its high twin, lines 534-562); the deltas are scaled in place, so a run of skipped
steps compounds them (lines 306-312); the FFT runs in float32 (lines 319, 335-336). Each
(batch, channel, frame) slice is transformed on its own, so the latent layout's leading
axes do not matter (the hook flattens frames into the batch first: the same slices).

The sampler asks it per step (`skips`), hands it both outputs on a full step
(`observe`) and the conditional one on a skipped step (`approximate`). It runs where CFG
is two passes (the unconditional call is not made); diffusers' hook needs CFG in one batch
with the unconditional half first, which is how its test here drives it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


def split_frequencies(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The centred FFT of `x` over its last two axes, inside and outside a disc of radius min(H, W) // 5."""
    shifted = torch.fft.fftshift(torch.fft.fft2(x))
    height, width = x.shape[-2:]
    radius = min(height, width) // 5
    y, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    low = ((xs - width // 2) ** 2 + (y - height // 2) ** 2 <= radius**2).to(x.device)
    return shifted * low, shifted * ~low


@dataclass
class FasterCfg:
    """Skip the unconditional pass on most steps; rebuild it from the conditional one and the kept frequency deltas."""

    every: int = 5
    window: tuple[float, float] = (-1, 641)
    alpha_low: float = 1.1
    alpha_high: float = 1.1
    low_window: tuple[float, float] = (99, 901)
    high_window: tuple[float, float] = (-1, 301)
    _low: torch.Tensor | None = field(default=None, init=False, repr=False)
    _high: torch.Tensor | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"parameter 'cfg_every' must be >= 1 (1: never skip), got {self.every}")

    def reset(self) -> None:
        self._low = self._high = None

    def skips(self, step: int, timestep: float) -> bool:
        """Run the conditional branch alone at this step?"""
        return step > 0 and step % self.every != 0 and self.window[0] < timestep < self.window[1] and self._low is not None

    def observe(self, cond: torch.Tensor, uncond: torch.Tensor) -> None:
        """A full step: keep the branches' frequency deltas."""
        low_u, high_u = split_frequencies(uncond.float())
        low_c, high_c = split_frequencies(cond.float())
        self._low, self._high = low_u - low_c, high_u - high_c

    def approximate(self, cond: torch.Tensor, timestep: float) -> torch.Tensor:
        """A skipped step: the unconditional output, from the conditional one."""
        assert self._low is not None and self._high is not None, "observe() a full step first"
        self._low = self._low * (self.alpha_low if self.low_window[0] < timestep < self.low_window[1] else 1.0)
        self._high = self._high * (self.alpha_high if self.high_window[0] < timestep < self.high_window[1] else 1.0)
        low_c, high_c = split_frequencies(cond.float())
        freq = (self._low + low_c) + (self._high + high_c)
        return torch.fft.ifft2(torch.fft.ifftshift(freq)).real.to(cond.dtype)
