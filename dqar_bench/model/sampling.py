"""The sampling loop: diffusers' schedulers, guidance as the model needs it, fixed seeds.

It is written out (rather than calling a pipeline) because every step must hand the
strategy a context (step, timestep, latents, predicted x0) before the model runs, and the
pipelines expose none of that. The arithmetic follows each family's pipeline: the model's
family entry (`dqar_bench.model.families`) says how it is called (`dqar_bench.model.inputs`:
latent layout, packing, timestep scaling) and how it is guided:

- `cfg-batch`: the conditional and unconditional branches run as one batch (DiTPipeline,
  PixArt, SD3, CogVideoX);
- `cfg-separate`: two model calls per step (WanPipeline); the observer is told which
  branch runs, so each keeps its own cache entries; an observer with a `cfg_cache`
  (FasterCache's, `dqar_bench.strategies.caches.faster_cfg`) may have the unconditional
  call skipped and its output rebuilt from the conditional one;
- `embedded`: the guidance scale is a model input and there is no unconditional pass
  (FLUX.1-dev, HunyuanVideo).

A guidance scale <= 1 turns classifier-free guidance off. Three prediction types, read from
the scheduler: epsilon and v-prediction (DDIM, DPM-Solver++) and flow matching
(`FlowMatchEulerDiscreteScheduler`, with the model's `shift`, or `mu` from the image token
count as the pipelines compute it when the schedule shifts dynamically). The x0 every step
hands the gates is derived for the type: epsilon x0 = (x_t - sqrt(1 - a) eps) / sqrt(a),
v-prediction x0 = sqrt(a) x_t - sqrt(1 - a) v, flow x0 = x_t - sigma v.

Latents are `[batch, channels, h, w]` (images) or `[batch, channels, frames, h, w]` (video)
for every family. What the model is conditioned on is a `Condition`
(`dqar_bench.model.conditioning` builds them). `forward` lets an execution mode
(`dqar_bench.strategy.execution`: compiled, CUDA graphs) run the transformer instead of a plain call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np
import torch

from dqar_bench.core.context import StepContext
from dqar_bench.model.families import Family, family_of
from dqar_bench.model.inputs import convention

Forward = Callable[..., torch.Tensor]
"""`forward(hidden_states, timestep, **condition_inputs) -> model output` (the model's own layout)."""


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
    """What the loop tells a strategy. A model run as two passes per step also calls
    `begin(..., branches=2)` and, if the observer has it, `branch(i)` before each pass.
    `noise` is every step's `(alpha_bar, sigma)` (`noise_levels`), known before the loop."""

    def begin(
        self, num_steps: int, num_blocks: int, device: torch.device, timesteps: list[int] | None = None,
        noise: list[tuple[float, float | None]] | None = None,
    ) -> None: ...

    def before_step(self, ctx: StepContext) -> None: ...

    def after_step(self) -> None: ...


SAMPLERS: dict[str, str] = {
    "ddim": "DDIM (epsilon or v-prediction models; CogVideoX's own DDIM where its schedule says so)",
    "dpm-solver": "DPM-Solver++ 2M (epsilon or v-prediction models)",
    "flow-euler": "flow-matching Euler (FlowMatchEulerDiscreteScheduler, with the model's shift)",
}
FLOW_SAMPLERS = frozenset({"flow-euler"})

SIGMA_SCHEDULES: dict[str, Callable[[int], Any] | None] = {
    "scheduler": None,
    "1..1/n": lambda n: np.linspace(1.0, 1.0 / n, n),
    "1..0": lambda n: np.linspace(1.0, 0.0, n + 1)[:-1],
}
"""Flow sigmas as pipelines pass them: the scheduler's own, FluxPipeline's, HunyuanVideoPipeline's."""


def prediction_type(config: dict[str, Any]) -> str:
    """What a model with this scheduler config predicts: epsilon, v_prediction, sample or flow."""
    kind = str(config.get("prediction_type") or "epsilon")
    flow_keys = "shift" in config and "beta_start" not in config
    if kind == "flow_prediction" or config.get("use_flow_sigmas") or flow_keys:
        return "flow"
    return kind


def sampler_refusal(sampler: str, prediction: str) -> str | None:
    """Why `sampler` cannot sample a model that predicts `prediction` (one line), or None."""
    if (sampler in FLOW_SAMPLERS) == (prediction == "flow"):
        return None
    if prediction == "flow":
        return f"sampler '{sampler}' cannot sample a flow-matching model; use {', '.join(sorted(FLOW_SAMPLERS))}"
    return f"sampler '{sampler}' samples flow-matching models only; this model predicts {prediction} (use ddim or dpm-solver)"


def make_scheduler(name: str, config: dict[str, Any]) -> Any:
    """A fresh diffusers scheduler of kind `name` with the model's noise schedule."""
    from diffusers import CogVideoXDDIMScheduler, DDIMScheduler, DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler

    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler '{name}' (samplers: {', '.join(SAMPLERS)})")
    reason = sampler_refusal(name, prediction_type(config))
    if reason:
        raise ValueError(reason)
    if name == "flow-euler":
        config = dict(config)
        if "flow_shift" in config:  # a UniPC flow config (Wan) names the shift so
            config.setdefault("shift", config["flow_shift"])
        return FlowMatchEulerDiscreteScheduler.from_config(config)
    if name == "ddim":
        return (CogVideoXDDIMScheduler if "snr_shift_scale" in config else DDIMScheduler).from_config(config)
    return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2)


def calculate_shift(image_tokens: int, config: Any) -> float:
    """mu for dynamic shifting from the image token count, as the FLUX and SD3 pipelines compute it."""
    base_len, max_len = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    base_shift, max_shift = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
    m = (max_shift - base_shift) / (max_len - base_len)
    return image_tokens * m + base_shift - m * base_len


def set_timesteps(scheduler: Any, num_steps: int, device: torch.device, image_tokens: int, sigmas: str = "scheduler") -> None:
    """The scheduler's timesteps for `num_steps`, with a flow schedule's sigmas and mu as the pipeline sets them."""
    kwargs: dict[str, Any] = {}
    if _is_flow(scheduler):
        schedule = SIGMA_SCHEDULES[sigmas]
        if schedule is not None:
            kwargs["sigmas"] = schedule(num_steps)
        if scheduler.config.get("use_dynamic_shifting"):
            kwargs["mu"] = calculate_shift(image_tokens, scheduler.config)
    scheduler.set_timesteps(num_steps, device=device, **kwargs)


def guidance_mode(family: Family, config: Any, guidance_scale: float) -> str:
    """How this model is guided in this call: none, cfg-batch, cfg-separate or embedded.

    An `embedded` family whose checkpoint has no guidance embedding (FLUX.1-schnell) takes
    classifier-free guidance as two passes instead, as FluxPipeline's true CFG does.
    """
    if family.guidance == "embedded":
        if getattr(config, "guidance_embeds", True):
            return "embedded"
        return "cfg-separate" if guidance_scale > 1.0 else "none"
    return family.guidance if guidance_scale > 1.0 else "none"


def num_blocks(transformer: torch.nn.Module) -> int:
    """Blocks of every block list of the transformer's family."""
    return sum(len(blocks) for _, blocks in family_of(transformer).block_lists(transformer))


def latents_shape(transformer: torch.nn.Module) -> tuple[int, ...]:
    """The per-image latent shape `denoise` draws and returns for this transformer: its config's
    size, or the suite's `resolution` where one was set on it (`dqar_bench.model.resolution`)."""
    family = family_of(transformer)
    shape = convention(family).latent_shape(transformer.config, family)
    size = getattr(transformer, "dqar_latent_size", None)
    return (shape[0], *size) if size is not None else shape


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
    """Run one sampling call under `condition`; the final latents [batch, channels, (frames,) h, w]."""
    family = family_of(transformer)
    conv = convention(family)
    param = next(transformer.parameters())
    device, dtype = param.device, param.dtype
    config = transformer.config
    shape = latents_shape(transformer)
    latents = conv.noise(seed, condition.batch, shape).to(device=device, dtype=dtype)
    forward = forward or plain_forward(transformer)
    prediction = prediction_of(scheduler)
    flow = prediction == "flow"

    set_timesteps(scheduler, num_steps, device, conv.image_tokens(config, shape), family.sigmas)
    timesteps = scheduler.timesteps
    alphas_cumprod = None if flow else scheduler.alphas_cumprod.to(device)
    mode = guidance_mode(family, config, guidance_scale)
    constants = conv.extra(transformer, shape, condition.inputs, device, dtype)
    if mode == "embedded":
        constants["guidance"] = torch.full((condition.batch,), guidance_scale, device=device, dtype=dtype) * family.guidance_input
    if mode == "cfg-separate":
        branches = [{**condition.inputs, **constants}, {**condition.null_inputs, **constants}]
    else:
        branches = [{**condition.for_batch(mode == "cfg-batch"), **constants}]
    host_timesteps = [round(float(t)) for t in timesteps.tolist()]
    if observer is not None:
        more = {"branches": 2} if mode == "cfg-separate" else {}
        noise = noise_levels(scheduler, host_timesteps, prediction)
        observer.begin(len(timesteps), num_blocks(transformer), device, timesteps=host_timesteps, noise=noise, **more)

    def run(model_input: torch.Tensor, t: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
        out = forward(conv.to_model(model_input), conv.timestep(t, model_input.shape[0], dtype), **inputs)
        return conv.from_model(out, shape)

    x0: torch.Tensor | None = None
    wants_x0 = observer is not None and getattr(observer, "wants_x0", True)  # only a gate reading x0 pays for it
    for step, t in enumerate(timesteps):
        sigma = scheduler.sigmas[step] if flow else None
        if observer is not None:
            observer.before_step(step_context(scheduler, step, host_timesteps, latents, x0, condition.cond_len, prediction))
        if mode == "cfg-separate":
            model_input = _scale(scheduler, latents, t)
            cfg = getattr(observer, "cfg_cache", None)  # FasterCache's CFG cache: the unconditional pass rebuilt
            skip = cfg is not None and cfg.skips(step, host_timesteps[step])
            predictions = []
            for index, inputs in enumerate(branches[:1] if skip else branches):
                if observer is not None and hasattr(observer, "branch"):
                    observer.branch(index)
                predictions.append(run(model_input, t, inputs))
            if skip:
                predictions.append(cfg.approximate(predictions[0], host_timesteps[step]))
            elif cfg is not None:
                cfg.observe(*predictions)
            cond, uncond = predictions
            pred = uncond + guidance_scale * (cond - uncond)
        else:
            model_input = torch.cat([latents, latents]) if mode == "cfg-batch" else latents
            model_input = _scale(scheduler, model_input, t)
            pred = run(model_input, t, branches[0])
            if mode == "cfg-batch":
                cond, uncond = pred.chunk(2)
                pred = uncond + guidance_scale * (cond - uncond)
        if wants_x0:  # the untouched baseline, and gates that never read x0, pay for nothing they do not use
            x0 = predicted_x0(prediction, latents, pred, alphas_cumprod[t] if alphas_cumprod is not None else None, sigma).to(dtype)
        latents = scheduler.step(pred, t, latents).prev_sample
        if observer is not None:
            observer.after_step()
    return latents


def step_context(
    scheduler: Any, step: int, host_timesteps: list[int], latents: torch.Tensor, x0: torch.Tensor | None, cond_len: int, prediction: str
) -> StepContext:
    """What a strategy is told before `step`: one recipe for the lean loop and the pipeline
    path's hooks (a flow step's alpha_bar is the signal-to-total ratio of its sigma)."""
    t_host = host_timesteps[step]
    alpha_bar, sigma = noise_level(scheduler, step, host_timesteps, prediction)
    return StepContext(step, len(host_timesteps), t_host, latents, x0, alpha_bar, cond_len, sigma=sigma, prediction=prediction)


def noise_level(scheduler: Any, step: int, host_timesteps: list[int], prediction: str) -> tuple[float, float | None]:
    """`(alpha_bar, sigma)` at `step`, as `StepContext` carries them (sigma None for diffusion schedules)."""
    if prediction == "flow":
        sigma = float(scheduler.sigmas[step])
        return (1 - sigma) ** 2 / ((1 - sigma) ** 2 + sigma**2), sigma
    return float(scheduler.alphas_cumprod[host_timesteps[step]]), None


def noise_levels(scheduler: Any, host_timesteps: list[int], prediction: str) -> list[tuple[float, float | None]]:
    """Every step's `noise_level`, known before the loop: an observer's `begin` gets them, so a
    gate whose answers follow the schedule can say at the start where it never reuses."""
    return [noise_level(scheduler, step, host_timesteps, prediction) for step in range(len(host_timesteps))]


def predicted_x0(prediction: str, latents: torch.Tensor, pred: torch.Tensor, alpha_bar: torch.Tensor | None, sigma: torch.Tensor | None) -> torch.Tensor:
    """The clean sample the model's prediction implies at this step, in float32.

    epsilon: (x_t - sqrt(1 - a) eps) / sqrt(a); v: sqrt(a) x_t - sqrt(1 - a) v; flow
    (x_t = (1 - sigma) x0 + sigma noise, v = noise - x0): x_t - sigma v; sample: the prediction.
    """
    if prediction == "flow":
        assert sigma is not None
        return latents.float() - sigma.to(latents.device, torch.float32) * pred.float()
    if prediction == "sample":
        return pred.float()
    assert alpha_bar is not None
    a = alpha_bar.to(torch.float32)
    if prediction == "v_prediction":
        return a.sqrt() * latents.float() - (1 - a).sqrt() * pred.float()
    return (latents.float() - (1 - a).sqrt() * pred.float()) / a.sqrt()


def prediction_of(scheduler: Any) -> str:
    """What the model predicts, as the scheduler it is sampled with says."""
    if _is_flow(scheduler):
        return "flow"
    return prediction_type(dict(scheduler.config))


def _is_flow(scheduler: Any) -> bool:
    return type(scheduler).__name__.startswith("FlowMatch")


def _scale(scheduler: Any, sample: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    scale = getattr(scheduler, "scale_model_input", None)
    return scale(sample, t) if scale is not None else sample
