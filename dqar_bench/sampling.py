"""The sampling loop: diffusers' schedulers, classifier-free guidance, fixed seeds.

It is written out (rather than calling `DiTPipeline`) because every step must hand the
strategy a context (step, timestep, latents, predicted x0) before the model runs, and
DiTPipeline exposes none of that. The arithmetic follows DiTPipeline: the conditional and
unconditional branches run as one batch; learned-sigma channels are dropped.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from dqar_bench.context import StepContext


class StepObserver(Protocol):
    def begin(self, num_steps: int, num_blocks: int, device: torch.device) -> None: ...

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
    """Run one sampling call and return the final latents [batch, channels, size, size]."""
    param = next(transformer.parameters())
    device, dtype = param.device, param.dtype
    config = transformer.config
    channels, size = int(config.in_channels), int(config.sample_size)
    batch = len(class_labels)
    latents = initial_noise(seed, batch, channels, size).to(device=device, dtype=dtype)

    scheduler.set_timesteps(num_steps, device=device)
    timesteps = scheduler.timesteps
    alphas_cumprod = scheduler.alphas_cumprod.to(device)
    use_cfg = guidance_scale > 1.0
    labels = torch.tensor(class_labels, device=device)
    if use_cfg:
        labels = torch.cat([labels, torch.full_like(labels, null_class)])
    if observer is not None:
        observer.begin(len(timesteps), len(transformer.transformer_blocks), device)

    x0: torch.Tensor | None = None
    for step, t in enumerate(timesteps):
        if observer is not None:
            alpha_bar = float(scheduler.alphas_cumprod[int(t)])
            observer.before_step(StepContext(step, len(timesteps), int(t), latents, x0, alpha_bar))
        model_input = torch.cat([latents, latents]) if use_cfg else latents
        model_input = scheduler.scale_model_input(model_input, t)
        out = transformer(model_input, timestep=t.expand(model_input.shape[0]), class_labels=labels).sample
        eps = out[:, :channels]
        if use_cfg:
            cond, uncond = eps.chunk(2)
            eps = uncond + guidance_scale * (cond - uncond)
        a = alphas_cumprod[t].to(torch.float32)
        x0 = ((latents.float() - (1 - a).sqrt() * eps.float()) / a.sqrt()).to(dtype)
        latents = scheduler.step(eps, t, latents).prev_sample
        if observer is not None:
            observer.after_step()
    return latents
