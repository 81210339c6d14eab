"""Sampling the flow-matching reference DiT (`digits-flow`) for its model card and tests.

A small loop of its own, so the shipped figures do not depend on the benchmark's sampler; it
follows the harness's conventions step for step (noise drawn on the CPU by
the image calling convention of `dqar_bench.model.inputs`, classifier-free guidance as one batch, conditional half
first, only when guidance > 1), so the harness's flow-matching sampler, given the shipped
`scheduler_config.json`, reproduces these latents exactly.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import DiTTransformer2DModel, FlowMatchEulerDiscreteScheduler

from dqar_bench.model.reference.load import NULL_CLASS


@torch.no_grad()
def sample_flow_digits(
    model: DiTTransformer2DModel,
    scheduler_config: dict[str, Any],
    labels: torch.Tensor,
    seed: int,
    num_inference_steps: int,
    guidance_scale: float,
) -> torch.Tensor:
    """Euler integration of the predicted velocity from noise (sigma 1) to data (sigma 0);
    images clamped to [-1, 1].

    The model is given the scheduler's float timesteps (sigma * 1000) as they are, and guidance
    mixes velocities: v = v_uncond + g (v_cond - v_uncond).
    """
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)
    scheduler.set_timesteps(num_inference_steps)
    config = model.config
    size = int(config.sample_size)  # the harness's draw for image latents: on the CPU, from the seed alone
    latents = torch.randn((int(labels.shape[0]), int(config.in_channels), size, size), generator=torch.Generator().manual_seed(seed))
    use_cfg = guidance_scale > 1.0
    class_labels = torch.cat([labels, torch.full_like(labels, NULL_CLASS)]) if use_cfg else labels
    for t in scheduler.timesteps:
        model_input = torch.cat([latents, latents]) if use_cfg else latents
        velocity = model(model_input, timestep=t.expand(model_input.shape[0]), class_labels=class_labels).sample
        if use_cfg:
            cond, uncond = velocity.chunk(2)
            velocity = uncond + guidance_scale * (cond - uncond)
        latents = scheduler.step(velocity, t, latents).prev_sample
    return latents.clamp(-1.0, 1.0)
