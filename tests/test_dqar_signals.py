"""DQAR's signals mean one thing on every family: the schedule's SNR, the entropy of the
attention the model really computes (normalised by its key count), and the bad input
that asks for anything else."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
import torch

from dqar_bench.cli import main
from dqar_bench.core.context import StepContext
from dqar_bench.core.parts import Gate, build_part
from dqar_bench.model.conditioning import synthetic_captions
from dqar_bench.model.families import DDPM_LINEAR, flow_schedule
from dqar_bench.model.models import load_model
from dqar_bench.model.sampling import denoise, labels_condition, make_scheduler
from dqar_bench.strategy import signals
from dqar_bench.strategy.adapter import adapter_for
from dqar_bench.strategy.signal_scope import ProjectedProbe
from dqar_bench.strategy.strategy import Strategy

CPU = torch.device("cpu")


@dataclass
class Recorder(Gate):
    """Never reuses; keeps what it was told at each step it was asked."""

    PLUGIN_NAME = "recorder"
    SIGNALS = frozenset({signals.SNR, signals.ENTROPY})
    snr: str = "schedule"
    entropy: str = "normalised"
    seen: list[tuple[StepContext, dict]] = field(default_factory=list)

    def decide(self, ctx: StepContext, eligible: list[bool]) -> list[bool]:
        self.seen.append((ctx, dict(ctx.signals)))
        return [False] * len(eligible)


def _strategy(registry, gate: Gate, probe_queries: int = 16) -> Strategy:
    part = lambda kind, name: build_part(registry.get(kind, name).cls, {})
    return Strategy(part("scheduler", "all"), gate, part("cache", "attention-output"), part("quantizer", "none"), probe_queries)


# --- SNR ------------------------------------------------------------------------------


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "flow"])
def test_the_snr_a_gate_reads_is_the_schedules_closed_form(tiny, registry, prediction):
    """epsilon and v: alpha_bar / (1 - alpha_bar) from the scheduler's own table at the step's
    timestep; flow: ((1 - sigma) / sigma)^2 from its sigmas. And no x0 is computed for it."""
    if prediction == "flow":
        scheduler, sampler = flow_schedule(3.0), "flow-euler"
    else:
        scheduler, sampler = {**DDPM_LINEAR, "prediction_type": prediction}, "ddim"
    scheduler = make_scheduler(sampler, scheduler)
    gate = Recorder()
    s = _strategy(registry, gate)
    assert not s.wants_x0
    with adapter_for(tiny.transformer).install(tiny.transformer, s):
        denoise(tiny.transformer, scheduler, labels_condition([1, 2], tiny.null_class, CPU), 0, 8, 1.0, s)
    assert len(gate.seen) == 7  # steps 1..7 (nothing is cached at step 0)
    for ctx, values in gate.seen:
        assert ctx.x0 is None  # the loop skipped x0: no gate reads it
        if prediction == "flow":
            sigma = float(scheduler.sigmas[ctx.step])
            expected = ((1 - sigma) / sigma) ** 2
        else:
            a = float(scheduler.alphas_cumprod[ctx.timestep])
            expected = a / (1 - a)
        assert values[signals.SNR] == pytest.approx(expected, rel=1e-6)
    snrs = [v[signals.SNR] for _, v in gate.seen]
    assert snrs == sorted(snrs)  # the noise falls step by step


def test_snr_x0_keeps_the_seeds_estimate_from_predicted_x0(tiny, registry):
    gate = Recorder(snr="x0")
    s = _strategy(registry, gate)
    assert s.wants_x0
    with adapter_for(tiny.transformer).install(tiny.transformer, s):
        denoise(tiny.transformer, make_scheduler("ddim", tiny.scheduler_config), labels_condition([1, 2], tiny.null_class, CPU), 0, 6, 1.0, s)
    for ctx, values in gate.seen:
        assert ctx.x0 is not None
        assert values[signals.SNR] == pytest.approx(signals.latent_snr(ctx.latents, ctx.x0).item(), rel=1e-5)


def test_equal_noise_gives_equal_snr_on_every_family():
    """The same signal share: a flow sigma and the alpha_bar with the same SNR read the same."""
    for sigma in (0.98, 0.5, 0.1):
        alpha_bar = (1 - sigma) ** 2 / ((1 - sigma) ** 2 + sigma**2)
        assert signals.schedule_snr(alpha_bar) == pytest.approx(signals.schedule_snr(0.0, sigma), rel=1e-9)
    assert signals.schedule_snr(1.0) == math.inf and signals.schedule_snr(0.0, 0.0) == math.inf


# --- bad input ------------------------------------------------------------------------

SUITE = """\
name: small
model: dit-tiny
sampler: {{name: ddim, steps: 6, guidance_scale: 4.0}}
class_labels: [1, 2]
seeds: [0]
device: cpu
timing: {{warmup: 0, repeats: 1}}
baseline: baseline
cases:
  - name: baseline
  - name: gated
    gate: {gate}
    cache: attention-output
"""


@pytest.mark.parametrize("gate, words", [
    ("{name: snr, snr: latent}", ["parameter 'snr' must be one of 'schedule', 'x0'", "'latent'"]),
    ("{name: dqar, snr: noise}", ["parameter 'snr' must be one of 'schedule', 'x0'"]),
    ("{name: entropy, entropy: bits}", ["parameter 'entropy' must be one of 'normalised', 'nats'", "'bits'"]),
    ("{name: dqar, threshold: 2.0}", ["parameter 'threshold' must be in (0, 1] for normalised entropy", "entropy: nats"]),
    ("{name: entropy, threshold: -0.5}", ["parameter 'threshold' must be > 0"]),
])
def test_an_unknown_signal_form_or_a_normalised_threshold_outside_0_1_is_one_line_exit_2(write_suite, capsys, gate, words):
    path = write_suite(SUITE.format(gate=gate))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert str(path) in err and "case 'gated'" in err and "field 'gate'" in err
    for word in words:
        assert word in err


def test_a_threshold_in_nats_is_accepted_with_entropy_nats(write_suite, capsys):
    assert main(["validate", str(write_suite(SUITE.format(gate="{name: dqar, entropy: nats, threshold: 2.0}")))]) == 0


# --- entropy --------------------------------------------------------------------------


class FullAttention:
    """Every SDPA call's full softmax entropy over all its rows, normalised: the reference."""

    def __init__(self) -> None:
        self.real = torch.nn.functional.scaled_dot_product_attention
        self.calls: list[float] = []

    def __call__(self, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):
        q, k = query, key
        scores = (q.double() @ k.double().transpose(-1, -2)) * (q.shape[-1] ** -0.5 if scale is None else scale)
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, -math.inf) if attn_mask.dtype == torch.bool else scores + attn_mask
        p = torch.softmax(scores, dim=-1)
        h = -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(-1).mean()
        self.calls.append(float(h) / math.log(k.shape[-2]))
        return self.real(query, key, value, attn_mask, dropout_p, is_causal, scale=scale, **kw)


TEMPERATURES = (1.0, 10.0)
"""The range of attention sharpness the accuracy test spreads over a model's blocks: each
block's scores multiplied by a factor from 1 (as built) to 10, log-spaced."""


def spread_attention_sharpness(model) -> list[float]:
    """Give each block's attention its own temperature, so the entropies span a real range.

    Random-weight attention is near uniform: the tiny models' normalised entropies over all
    blocks and steps lie within 0.012 (flux-tiny 0.874-0.886) and 0.003 (sd3-tiny), while a
    trained model's spread wide (digits-dit, shipped: 0.41-0.98 over its 6 blocks and 10
    steps). Over a range of 0.003 a correlation measures the sampling noise of the rows, not
    whether the probe follows the entropy. Scaling each block's query (the per-head query
    norm's weight where the model has one, else the query projections, text ones included)
    multiplies all its scores by the factor, after the norms and through the rotary
    embeddings, as a trained block's sharper attention would: the model still runs its own
    processors, text keys and rotary embeddings, and the reference and the probe read the
    same model. Returns the factors, block by block."""
    attentions = [m for m in model.transformer.modules() if hasattr(m, "to_q")]
    assert len(attentions) == model.num_blocks
    factors = torch.logspace(math.log10(TEMPERATURES[0]), math.log10(TEMPERATURES[1]), len(attentions)).tolist()
    with torch.no_grad():
        for attn, factor in zip(attentions, factors):
            norm = getattr(attn, "norm_q", None)
            names = ("norm_q", "norm_added_q") if getattr(norm, "weight", None) is not None else ("to_q", "add_q_proj")
            for name in names:
                for param in getattr(getattr(attn, name, None), "parameters", lambda: [])():
                    param.mul_(factor)
    return factors


def _condition(model):
    if model.spec.text is None:
        return labels_condition([1, 3], model.null_class, CPU)
    return synthetic_captions([6, 12], model.text_width, CPU, torch.float32, model.spec.text, model.pooled_width, model.text_length)


def _reference_and_probe(registry, monkeypatch, model, rows: int, steps: int = 8, scope=None):
    """Per step and block, the full map's normalised entropy (from an uninstrumented run) and
    what the probe gave the gate; asserts the probe changed no output."""
    condition = _condition(model)
    scheduler = lambda: make_scheduler(model.spec.sampler, model.scheduler_config)
    full = FullAttention()
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", full)
    baseline = denoise(model.transformer, scheduler(), condition, 0, steps, 3.0, None)
    monkeypatch.undo()
    assert len(full.calls) == steps * model.num_blocks  # one attention per block per call
    reference = torch.tensor(full.calls).view(steps, model.num_blocks)
    gate = Recorder()
    s = _strategy(registry, gate, probe_queries=rows)
    with adapter_for(model.transformer).install(model.transformer, s):
        if scope is not None:
            s.scope = scope
        out = denoise(model.transformer, scheduler(), condition, 0, steps, 3.0, s)
    assert torch.equal(out, baseline)
    probed = torch.tensor([values[signals.ENTROPY] for _, values in gate.seen])  # step s reads step s-1's compute
    assert probed.shape == (steps - 1, model.num_blocks)
    return reference[: steps - 1], probed


def _mae_corr(reference: torch.Tensor, probed: torch.Tensor) -> tuple[float, float]:
    corr = torch.corrcoef(torch.stack([probed.flatten(), reference.flatten()]))[0, 1].item()
    return (probed - reference).abs().mean().item(), corr


@pytest.mark.parametrize("name", ["flux-tiny", "sd3-tiny", "dit-tiny"])
def test_the_probe_reads_the_entropy_of_the_attention_the_model_computes(registry, monkeypatch, name):
    """Against the full softmax entropy of every real attention map (FLUX's dual and single
    blocks, SD3's joint attention with its text keys, DiT's self-attention), over blocks and
    steps, with the default 16 sampled query rows: mean absolute error <= 0.02 normalised,
    correlation >= 0.95 (the issue's targets), on the model with its blocks' attention
    spread from as built to 10x sharper (`spread_attention_sharpness`), so the entropies span
    0.15-0.99 and the correlation says whether the probe follows them. The reference comes
    from an uninstrumented model (the same seed), so the probe changes nothing it reads.

    The seed's projection probe (image queries and keys projected again from the block's
    input, no rotary embeddings, no text keys) misses the error target on the joint models,
    so this test can fail: it measures the attention the model computes, not one like it.
    dit-tiny has 16 tokens, so its 16 rows are all of them; it is also probed with 8."""
    model = load_model(name, CPU, torch.float32)
    spread_attention_sharpness(model)
    reference, probed = _reference_and_probe(registry, monkeypatch, model, rows=16)
    assert reference.max() - reference.min() > 0.4  # a range a correlation can speak of
    error, corr = _mae_corr(reference, probed)
    assert error <= 0.02 and corr >= 0.95, (name, error, corr)
    if name == "flux-tiny":  # dual-stream blocks (0, 1) and single-stream blocks (2, 3), each kind on its own
        for kind in (slice(0, 2), slice(2, 4)):
            each = _mae_corr(reference[:, kind], probed[:, kind])
            assert each[0] <= 0.02 and each[1] >= 0.95, (name, kind, each)
    if name == "dit-tiny":  # 16 rows are all of its 16 tokens: sample half of them as well
        reference, probed = _reference_and_probe(registry, monkeypatch, model, rows=8)
        error, corr = _mae_corr(reference, probed)
        assert error <= 0.02 and corr >= 0.95, (name, 8, error, corr)
    else:  # DiT has no text or rotary: there the projection is the same map
        reference, projected = _reference_and_probe(registry, monkeypatch, model, rows=16, scope=ProjectedProbe())
        assert _mae_corr(reference, projected)[0] > 0.02, name


@pytest.mark.parametrize("name", ["flux-tiny", "sd3-tiny", "dit-tiny"])
def test_on_near_uniform_attention_the_probe_is_exact_with_every_row_and_close_with_16(registry, monkeypatch, name):
    """The models as built (random weights, near-uniform attention). With every query row
    probed the probe is the map's entropy to float rounding. With 16 sampled rows (of 28 on
    flux-tiny and sd3-tiny) the error stays far below 0.02 (measured: 0.0014 on FLUX, 2e-4 on
    SD3), but the correlation is not asserted: the entropies vary by 0.012 (FLUX) and 0.002
    (SD3) over blocks and steps, while the rows of one map differ by 0.017 (FLUX, standard
    deviation), so 16 of 28 rows carry a sampling error of the spread's own size (FLUX gives
    0.91, SD3 0.98; no choice of 16 rows is reliably above 0.95: random 16-row subsets give
    a median of 0.89 on FLUX, rows rotated per head or at stratum midpoints 0.92-0.94). The
    correlation target is asserted where the entropies span a range (the test above)."""
    model = load_model(name, CPU, torch.float32)
    for rows in (0, 16):
        reference, probed = _reference_and_probe(registry, monkeypatch, model, rows=rows)
        error, corr = _mae_corr(reference, probed)
        assert error <= (1e-5 if rows == 0 else 0.02), (name, rows, error)
        if rows == 0:
            assert corr >= 0.95, (name, corr)
