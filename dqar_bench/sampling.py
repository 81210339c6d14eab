"""The sampling loop: diffusers' schedulers, classifier-free guidance, fixed seeds.

It is written out (rather than calling `DiTPipeline`) because every step must hand the
strategy a context (step, timestep, latents, predicted x0) before the model runs, and
DiTPipeline exposes none of that. The arithmetic follows DiTPipeline: the conditional and
unconditional branches run as one batch; learned-sigma channels are dropped.

What the model is conditioned on is a `Condition` (`dqar_bench.conditioning` builds them):
class labels for DiT, caption embeddings for PixArt. `forward` lets an execution mode
(`dqar_bench.execution`: compiled, CUDA graphs) run the transformer instead of a plain call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch

from dqar_bench.context import StepContext

Forward = Callable[..., torch.Tensor]
"""`forward(hidden_states, timestep, **condition_inputs) -> model output [batch, channels, h, w]`."""


@dataclass(frozen=True)
class Condition:
    """The model inputs besides latents and timestep, for `batch` images.

    `inputs` conditions each image, `null_inputs` is the unconditional branch of
    classifier-free guidance (same batch size); values are tensors with the batch first,
    None, or dicts of those (PixArt's `added_cond_kwargs`). `cond_len` is the number of
    conditioning tokens the strategy's gates see (`StepContext.cond_len`).
    """

    batch: int
    inputs: dict[str, Any]
    null_inputs: dict[str, Any] = field(default_factory=dict)
    cond_len: int = 1

    def for_batch(self, use_cfg: bool) -> dict[str, Any]:
        """The inputs of one model call: conditional half first when guidance doubles the batch."""
        return _cat(self.inputs, self.null_inputs) if use_cfg else dict(self.inputs)


def labels_condition(class_labels: list[int], null_class: int, device: torch.device) -> Condition:
    """Class-conditioned DiT: the labels, and DiT's reserved null label for guidance."""
    labels = torch.tensor(class_labels, device=device)
    return Condition(len(class_labels), {"class_labels": labels}, {"class_labels": torch.full_like(labels, null_class)})


def _cat(a: Any, b: Any) -> Any:
    if isinstance(a, torch.Tensor):
        return torch.cat([a, b])
    if isinstance(a, dict):
        return {k: _cat(v, b[k]) for k, v in a.items()}
    return a


def plain_forward(transformer: torch.nn.Module) -> Forward:
    """A plain call of the transformer: eager execution."""

    def forward(hidden_states: torch.Tensor, timestep: torch.Tensor, **inputs: Any) -> torch.Tensor:
        return transformer(hidden_states, timestep=timestep, **inputs).sample

    return forward


class StepObserver(Protocol):
    def begin(self, num_steps: int, num_blocks: int, device: torch.device, timesteps: list[int] | None = None) -> None: ...

    def before_step(self, ctx: StepContext) -> None: ...

    def after_step(self) -> None: ...


SAMPLERS = ("ddim", "dpm-solver")


def make_scheduler(name: str, config: dict[str, Any]) -> Any:
    """A fresh diffusers scheduler of kind `name` with the model's noise schedule."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    if name == "ddim":
        return DDIMScheduler.from_config(config)
    if name == "dpm-solver":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2)
    raise ValueError(f"unknown sampler '{name}' (samplers: {', '.join(SAMPLERS)})")


def initial_noise(seed: int, batch: int, channels: int, size: int) -> torch.Tensor:
    """Noise drawn on the CPU, so the same seed gives the same start on every device."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((batch, channels, size, size), generator=generator)


@torch.no_grad()
def sample(
    transformer: torch.nn.Module,
    scheduler: Any,
    class_labels: list[int],
    seed: int,
    num_steps: int,
    guidance_scale: float,
    null_class: int,
    observer: StepObserver | None = None,
) -> torch.Tensor:
    """Run one class-conditioned sampling call; the final latents [batch, channels, size, size]."""
    device = next(transformer.parameters()).device
    condition = labels_condition(class_labels, null_class, device)
    return denoise(transformer, scheduler, condition, seed, num_steps, guidance_scale, observer)


@torch.no_grad()
def denoise(
    transformer: torch.nn.Module,
    scheduler: Any,
    condition: Condition,
    seed: int,
    num_steps: int,
    guidance_scale: float,
    observer: StepObserver | None = None,
    forward: Forward | None = None,
) -> torch.Tensor:
    """Run one sampling call under `condition`; the final latents [batch, channels, size, size]."""
    param = next(transformer.parameters())
    device, dtype = param.device, param.dtype
    config = transformer.config
    channels, size = int(config.in_channels), int(config.sample_size)
    latents = initial_noise(seed, condition.batch, channels, size).to(device=device, dtype=dtype)
    forward = forward or plain_forward(transformer)

    scheduler.set_timesteps(num_steps, device=device)
    timesteps = scheduler.timesteps
    alphas_cumprod = scheduler.alphas_cumprod.to(device)
    use_cfg = guidance_scale > 1.0
    inputs = condition.for_batch(use_cfg)
    host_timesteps = [int(t) for t in timesteps.tolist()]
    if observer is not None:
        observer.begin(len(timesteps), len(transformer.transformer_blocks), device, timesteps=host_timesteps)

    x0: torch.Tensor | None = None
    for step, t in enumerate(timesteps):
        if observer is not None:
            t_host = host_timesteps[step]
            alpha_bar = float(scheduler.alphas_cumprod[t_host])
            observer.before_step(StepContext(step, len(timesteps), t_host, latents, x0, alpha_bar, condition.cond_len))
        model_input = torch.cat([latents, latents]) if use_cfg else latents
        model_input = scheduler.scale_model_input(model_input, t)
        out = forward(model_input, t.expand(model_input.shape[0]), **inputs)
        eps = out[:, :channels]
        if use_cfg:
            cond, uncond = eps.chunk(2)
            eps = uncond + guidance_scale * (cond - uncond)
        if observer is not None:  # the untouched baseline pays for nothing it does not use
            a = alphas_cumprod[t].to(torch.float32)
            x0 = ((latents.float() - (1 - a).sqrt() * eps.float()) / a.sqrt()).to(dtype)
        latents = scheduler.step(eps, t, latents).prev_sample
        if observer is not None:
            observer.after_step()
    return latents
