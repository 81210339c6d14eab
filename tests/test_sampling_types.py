"""Sampling for every prediction type and guidance mode, against closed forms.

An oracle model knows the clean sample x0: at each step it returns exactly the epsilon,
v or flow velocity that makes the step's latents x_t a mix of x0 and noise, so the x0 the
sampler hands the gates must be x0 itself, at every step, on every schedule.
"""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dqar_bench.core.parts import build_part
from dqar_bench.model import families
from dqar_bench.model.conditioning import synthetic_captions
from dqar_bench.model.families import COGVIDEOX_SCHEDULE, DDPM_LINEAR, flow_schedule
from dqar_bench.model.models import load_model
from dqar_bench.model.sampling import denoise, guidance_mode, labels_condition, make_scheduler, plain_forward
from dqar_bench.strategy.adapter import adapter_for
from dqar_bench.strategy.strategy import Strategy

CPU = torch.device("cpu")


class Oracle(torch.nn.Module):
    """Predicts the exact target for a fixed x0 (of the sampler's layout) from the step's x_t and t."""

    def __init__(self, family: str, prediction: str, x0: torch.Tensor, scheduler) -> None:
        super().__init__()
        self.dqar_family = family
        self.prediction, self.x0, self.scheduler = prediction, x0, scheduler
        shape = x0.shape[1:]
        self.config = SimpleNamespace(in_channels=shape[0], sample_size=shape[-1], patch_size=2, sample_frames=shape[1] if len(shape) == 4 else None)
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.transformer_blocks = torch.nn.ModuleList()
        self.blocks = torch.nn.ModuleList()

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, **inputs) -> SimpleNamespace:
        x_t, x0 = hidden_states.double(), self.x0.double().repeat(hidden_states.shape[0] // self.x0.shape[0], *([1] * (self.x0.dim() - 1)))
        if self.prediction == "flow":
            sigma = float(timestep[0]) / 1000
            noise = (x_t - (1 - sigma) * x0) / sigma
            return SimpleNamespace(sample=(noise - x0).float())
        a = self.scheduler.alphas_cumprod[int(timestep[0])].double()
        noise = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        target = noise if self.prediction == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * x0
        return SimpleNamespace(sample=target.float())


class Seen:
    """An observer that keeps every step's context."""

    def __init__(self) -> None:
        self.contexts = []

    def begin(self, *args, **kwargs) -> None:
        self.contexts.clear()

    def before_step(self, ctx) -> None:
        self.contexts.append(ctx)

    def after_step(self) -> None:
        pass


@pytest.mark.parametrize("family, sampler, config, prediction, shape", [
    ("dit", "ddim", DDPM_LINEAR, "epsilon", (4, 8, 8)),
    ("dit", "dpm-solver", DDPM_LINEAR, "epsilon", (4, 8, 8)),
    ("dit", "ddim", {**DDPM_LINEAR, "prediction_type": "v_prediction"}, "v_prediction", (4, 8, 8)),
    ("cogvideox", "ddim", COGVIDEOX_SCHEDULE, "v_prediction", (4, 3, 8, 8)),  # zero terminal SNR, CogVideoX's shifted alphas
    ("sd3", "flow-euler", flow_schedule(3.0), "flow", (4, 8, 8)),
    ("wan", "flow-euler", flow_schedule(3.0), "flow", (4, 3, 8, 8)),  # 5-D video latents
])
def test_the_x0_the_gates_see_is_the_clean_sample_for_every_prediction_type(family, sampler, config, prediction, shape):
    x0 = torch.randn((2, *shape), generator=torch.Generator().manual_seed(3))
    scheduler = make_scheduler(sampler, config)
    oracle = Oracle(family, prediction, x0, scheduler)
    if family == "cogvideox":
        oracle = _FramesFirstOracle(oracle, x0)
    seen = Seen()
    out = denoise(oracle, scheduler, labels_condition([0, 1], 2, CPU), 0, 6, 1.0, seen)
    assert [c.prediction for c in seen.contexts] == [prediction] * 6
    assert seen.contexts[0].x0 is None
    for ctx in seen.contexts[1:]:
        torch.testing.assert_close(ctx.x0, x0, rtol=1e-4, atol=1e-4)
    if prediction == "flow":
        sigmas = [float(s) for s in scheduler.sigmas[:6]]
        assert [c.sigma for c in seen.contexts] == pytest.approx(sigmas)
        assert [c.alpha_bar for c in seen.contexts] == pytest.approx([(1 - s) ** 2 / ((1 - s) ** 2 + s**2) for s in sigmas])
        assert [c.timestep for c in seen.contexts] == [round(s * 1000) for s in sigmas]
    else:
        assert all(c.sigma is None for c in seen.contexts)
        assert [c.alpha_bar for c in seen.contexts] == pytest.approx([float(scheduler.alphas_cumprod[c.timestep]) for c in seen.contexts])
    if family != "cogvideox":  # its trailing DDIM schedule ends at t = 0, not at zero noise
        torch.testing.assert_close(out, x0, rtol=1e-3, atol=1e-3)  # the exact target walks the sampler onto x0


class _FramesFirstOracle(torch.nn.Module):
    """CogVideoX's layout: the model sees [batch, frames, channels, h, w]."""

    def __init__(self, inner: Oracle, x0: torch.Tensor) -> None:
        super().__init__()
        self.inner = inner
        self.dqar_family = "cogvideox"
        self.config = SimpleNamespace(in_channels=x0.shape[1], sample_frames=(x0.shape[2] - 1) * 4 + 1, sample_height=x0.shape[3],
                                      sample_width=x0.shape[4], patch_size=2, temporal_compression_ratio=4)
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.transformer_blocks = torch.nn.ModuleList()

    def forward(self, hidden_states, timestep, **inputs):
        out = self.inner(hidden_states.transpose(1, 2), timestep).sample
        return SimpleNamespace(sample=out.transpose(1, 2))


def test_flux_dynamic_shifting_uses_mu_from_the_image_token_count():
    """FluxPipeline: sigmas linspace(1, 1/n, n), mu = calculate_shift(tokens), sigma' = e^mu / (e^mu + 1/sigma - 1)."""
    flux = load_model("flux-tiny", CPU, torch.float32)
    seen = Seen()
    condition = synthetic_captions([4], 32, CPU, torch.float32, flux.spec.text, 16)
    denoise(flux.transformer, make_scheduler("flow-euler", flux.scheduler_config), condition, 0, 5, 3.5, seen)
    tokens = (8 // 2) * (8 // 2)
    m = (1.15 - 0.5) / (4096 - 256)
    mu = tokens * m + 0.5 - m * 256
    expected = [math.exp(mu) / (math.exp(mu) + (1 / s - 1)) for s in np.linspace(1.0, 1 / 5, 5)]
    assert [c.sigma for c in seen.contexts] == pytest.approx(expected, rel=1e-5)


def test_hunyuan_video_sigmas_run_from_one_to_zero_with_its_shift():
    model = load_model("hunyuan-video-tiny", CPU, torch.float32)
    seen = Seen()
    condition = synthetic_captions([4], 32, CPU, torch.float32, model.spec.text, 16)
    denoise(model.transformer, make_scheduler("flow-euler", model.scheduler_config), condition, 0, 4, 6.0, seen)
    expected = [7 * s / (1 + 6 * s) for s in np.linspace(1.0, 0.0, 5)[:-1]]
    assert [c.sigma for c in seen.contexts] == pytest.approx(expected, rel=1e-5)


class Calls:
    """A forward that records what each model call was given."""

    def __init__(self, transformer) -> None:
        self.plain, self.calls = plain_forward(transformer), []

    def __call__(self, hidden_states, timestep, **inputs):
        self.calls.append((hidden_states.shape[0], dict(inputs)))
        return self.plain(hidden_states, timestep, **inputs)


def _text_condition(model, lengths=(3, 5)):
    return synthetic_captions(list(lengths), model.text_width, CPU, torch.float32, model.spec.text, model.pooled_width, model.text_length)


@pytest.mark.parametrize("name, mode, calls_per_step, batch", [
    ("sd3-tiny", "cfg-batch", 1, 4),
    ("wan-tiny", "cfg-separate", 2, 2),
    ("flux-tiny", "embedded", 1, 2),
    ("hunyuan-video-tiny", "embedded", 1, 2),
])
def test_guidance_as_the_model_needs_it(name, mode, calls_per_step, batch):
    model = load_model(name, CPU, torch.float32)
    assert guidance_mode(model.spec, model.transformer.config, 4.5) == mode
    condition = _text_condition(model)
    forward = Calls(model.transformer)
    out = denoise(model.transformer, make_scheduler(model.spec.sampler, model.scheduler_config), condition, 0, 3, 4.5, None, forward)
    assert torch.isfinite(out).all()
    assert len(forward.calls) == 3 * calls_per_step and all(b == batch for b, _ in forward.calls)
    embeds = model.spec.text.embeds
    if mode == "cfg-separate":  # conditional, then unconditional
        assert torch.equal(forward.calls[0][1][embeds], condition.inputs[embeds])
        assert torch.equal(forward.calls[1][1][embeds], condition.null_inputs[embeds])
    if mode == "embedded":  # the scale is an input; nothing unconditional is run
        given = forward.calls[0][1]["guidance"]
        assert given.tolist() == [4.5 * model.spec.guidance_input] * 2
    else:
        assert "guidance" not in forward.calls[0][1]


def test_guidance_one_or_below_runs_one_pass_and_a_missing_guidance_embedding_falls_back_to_cfg():
    flux = families.get("flux")
    assert guidance_mode(families.get("sd3"), SimpleNamespace(), 1.0) == "none"
    assert guidance_mode(families.get("wan"), SimpleNamespace(), 1.0) == "none"
    assert guidance_mode(flux, SimpleNamespace(guidance_embeds=True), 1.0) == "embedded"
    assert guidance_mode(flux, SimpleNamespace(guidance_embeds=False), 3.5) == "cfg-separate"  # FLUX.1-schnell with true CFG


def test_two_guidance_passes_keep_a_cache_per_branch_and_match_one_batch(monkeypatch, registry):
    """Wan's two passes with a reusing strategy give what the same strategy gives on one CFG batch:
    each branch reuses its own cached outputs, never the other branch's."""
    wan = load_model("wan-tiny", CPU, torch.float32)
    condition = _text_condition(wan)

    def run(guidance: str, gate=("interval", {"every": 2}), cache="attention-mlp-output"):
        table = tuple(dataclasses.replace(f, guidance=guidance) if f.name == "wan" else f for f in families.FAMILIES)
        monkeypatch.setattr(families, "FAMILIES", table)
        s = _strategy(registry, gate, cache)
        with adapter_for(wan.transformer).install(wan.transformer, s):
            out = denoise(wan.transformer, make_scheduler("flow-euler", wan.scheduler_config), condition, 0, 5, 4.0, s)
        return out, s

    for cache in ("attention-mlp-output", "block-residual"):
        separate, s2 = run("cfg-separate", cache=cache)
        batched, s1 = run("cfg-batch", cache=cache)
        assert s1.stats.reused == s2.stats.reused == 2 * wan.num_blocks  # steps 1 and 3 reuse
        torch.testing.assert_close(separate, batched, rtol=1e-4, atol=1e-5)
    never, _ = run("cfg-separate", gate="never")
    assert (separate - never).abs().max() > 1e-4  # the reuse changed something, the same in both modes


def _strategy(registry, gate, cache) -> Strategy:
    def part(kind, spec):
        name, params = (spec, {}) if isinstance(spec, str) else spec
        return build_part(registry.get(kind, name).cls, params)

    return Strategy(part("scheduler", "all"), part("gate", gate), part("cache", cache), part("quantizer", "none"))


def test_video_latents_are_five_dimensional_and_frames_first_models_see_their_layout():
    cog = load_model("cogvideox-tiny", CPU, torch.float32)
    seen = []
    plain = plain_forward(cog.transformer)

    def forward(hidden_states, timestep, **inputs):
        seen.append(tuple(hidden_states.shape))
        return plain(hidden_states, timestep, **inputs)

    out = denoise(cog.transformer, make_scheduler("ddim", cog.scheduler_config), _text_condition(cog), 0, 2, 1.0, None, forward)
    assert out.shape == (2, 4, 3, 8, 8) and seen[0] == (2, 3, 4, 8, 8)  # [batch, frames, channels, h, w] inside
    assert cog.latent_shape == (4, 3, 8, 8)
