"""DQAR's gates (dqar, entropy, snr) on every cache that reuses a block's work
(attention-output, attention-mlp-output, block-residual), on both trained reference models:
each reuses where its signals say, and a gate over a whole-block cache reads the entropy
of the attention its block computed when it last ran (a reused block runs no attention)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
import torch

from dqar_bench.core.parts import Gate, build_part
from dqar_bench.core.plugins import load_registry
from dqar_bench.model.conditioning import synthetic_captions
from dqar_bench.model.models import default_sampler, load_model
from dqar_bench.model.sampling import denoise, labels_condition, make_scheduler
from dqar_bench.strategy import signals
from dqar_bench.strategy.adapter import adapter_for
from dqar_bench.strategy.strategy import Strategy

CPU = torch.device("cpu")
STEPS = 10
GUIDANCE = 1.5
GATES = ("dqar", "entropy", "snr")
CACHES = ("attention-output", "attention-mlp-output", "block-residual")
MODELS = ("digits-dit", "digits-flow")


@pytest.fixture(scope="module")
def models():
    return {name: load_model(name, CPU, torch.float32) for name in MODELS}


def _condition(model):
    if model.spec.text is None:
        return labels_condition([1, 3, 7], model.null_class, CPU)
    return synthetic_captions([6, 12], model.text_width, CPU, torch.float32, model.spec.text, model.pooled_width, model.text_length)


def _sample(model, strategy: Strategy | None, steps: int = STEPS) -> torch.Tensor:
    scheduler = make_scheduler(default_sampler(model.name), model.scheduler_config)
    if strategy is None:
        return denoise(model.transformer, scheduler, _condition(model), 0, steps, GUIDANCE, None)
    with adapter_for(model.transformer).install(model.transformer, strategy):
        return denoise(model.transformer, scheduler, _condition(model), 0, steps, GUIDANCE, strategy)


def _strategy(registry, gate: Gate, cache: str, probe_queries: int = 0) -> Strategy:
    part = lambda kind, name: build_part(registry.get(kind, name).cls, {})
    return Strategy(part("scheduler", "all"), gate, part("cache", cache), part("quantizer", "none"), probe_queries)


def _listening(gate: Gate) -> list[tuple[int, dict, list[bool], list[bool]]]:
    """What the gate is told and answers at each step it is asked: (step, signals, eligible, answer)."""
    heard: list[tuple[int, dict, list[bool], list[bool]]] = []
    decide = gate.decide

    def listened(ctx, eligible):
        answer = decide(ctx, eligible)
        heard.append((ctx.step, dict(ctx.signals), list(eligible), list(answer)))
        return answer

    gate.decide = listened  # type: ignore[method-assign]
    return heard


@dataclass
class Recorder(Gate):
    """Never reuses; keeps every entropy and SNR a gate would read."""

    PLUGIN_NAME = "recorder"
    SIGNALS = frozenset({signals.ENTROPY, signals.SNR})
    entropies: list[float] = field(default_factory=list)
    snrs: list[float] = field(default_factory=list)

    def decide(self, ctx, eligible):
        self.entropies.extend(ctx.signals[signals.ENTROPY])
        self.snrs.append(ctx.signals[signals.SNR])
        return [False] * len(eligible)


def _signals_without_reuse(model, registry) -> Recorder:
    """The signals over a call with no reuse: the tests' thresholds are their medians, so
    each gate splits the (step, block) evaluations on this model's own signals."""
    recorder = Recorder()
    _sample(model, _strategy(registry, recorder, "attention-output"))
    return recorder


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


@pytest.fixture(scope="module")
def unreused(models):
    """Per model: the signals with no reuse, and the untouched model's output (one call each)."""
    registry = load_registry(autoload=False)
    return {name: (_signals_without_reuse(model, registry), _sample(model, None)) for name, model in models.items()}


@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize("gate_name", GATES)
@pytest.mark.parametrize("model_name", MODELS)
def test_each_dqar_gate_on_each_cache_reuses_where_its_signals_say(models, unreused, registry, model_name, gate_name, cache):
    model = models[model_name]
    measured, untouched = unreused[model_name]
    tau, high = _median(measured.entropies), _median(measured.snrs)
    params = {
        "dqar": {"threshold": tau, "snr_low": 0.0, "snr_high": high, "warmup": 1, "deep_layer_snr_threshold": 0.0},
        "entropy": {"threshold": tau},
        "snr": {"snr_low": 0.0, "snr_high": high, "deep_layer_snr_threshold": 0.0},
    }[gate_name]
    gate = build_part(registry.get("gate", gate_name).cls, params)
    heard = _listening(gate)
    s = _strategy(registry, gate, cache)
    out = _sample(model, s)

    assert torch.isfinite(out).all()
    asked = [step for step, *_ in heard]
    if gate_name == "entropy":  # no window: asked at every step but the first (nothing is held then)
        assert asked == list(range(1, STEPS))
    else:  # its window (`Gate.window`: warm-up, SNR) leaves steps out, and those reuse nothing
        assert asked and set(asked) < set(range(1, STEPS))
        assert all(not any(s_map) for t, s_map in enumerate(s.stats.reuse_map) if t not in asked)
    blocks = model.num_blocks
    for step, values, eligible, answer in heard:
        if gate_name != "snr":  # every block the gate may reuse has an entropy from its last compute
            assert all(math.isfinite(h) for h, e in zip(values[signals.ENTROPY], eligible) if e), (step, values)
        entropy_ok = [h < tau for h in values.get(signals.ENTROPY, [0.0] * blocks)]
        snr_ok = values.get(signals.SNR, 0.0) <= high
        warm = step >= params.get("warmup", 0)
        expected = [e and f and snr_ok and warm for e, f in zip(eligible, entropy_ok)]
        assert answer == expected, (step, values)
        assert s.stats.reuse_map[step] == [int(r) for r in expected]  # what the gate said is what the blocks did
    reused = s.stats.reused
    assert 0 < reused < (STEPS - 1) * blocks, (model_name, gate_name, cache, reused)
    assert not torch.equal(out, untouched)  # the reuse changed what was computed


class FullAttention:
    """Every SDPA call's full softmax entropy (float64, all rows), normalised: the reference."""

    def __init__(self) -> None:
        self.real = torch.nn.functional.scaled_dot_product_attention
        self.calls: list[float] = []

    def __call__(self, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):
        scores = (query.double() @ key.double().transpose(-1, -2)) * (query.shape[-1] ** -0.5 if scale is None else scale)
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, -math.inf) if attn_mask.dtype == torch.bool else scores + attn_mask
        p = torch.softmax(scores, dim=-1)
        h = -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(-1).mean()
        self.calls.append(float(h) / math.log(key.shape[-2]))
        return self.real(query, key, value, attn_mask, dropout_p, is_causal, scale=scale, **kw)


@pytest.mark.parametrize("model_name", [*MODELS, "flux-tiny"])
def test_a_block_cache_gate_reads_the_attention_its_block_computed_when_it_last_ran(registry, monkeypatch, model_name):
    """The entropy gate over block-residual: at each step, each eligible block's entropy is
    the full softmax entropy of the attention that block computed at its last compute, which
    after a run of reuses is several steps back. The reference is taken from the SDPA calls
    the model makes in the same run (every computing block calls SDPA once; a reused block
    calls nothing), all query rows probed, so the two agree to float rounding (float32 probe
    against a float64 reference, same tensors, same process). flux-tiny's processors form
    their own q and k (joint text keys, rotary embeddings): the probe reads them there too.
    With no reuse, the probe leaves the output bit for bit the model's."""
    model = load_model(model_name, CPU, torch.float32)
    blocks = model.num_blocks
    never = build_part(registry.get("gate", "entropy").cls, {"threshold": 1e-9})
    assert torch.equal(_sample(model, _strategy(registry, never, "block-residual")), _sample(model, None))

    tau = _median(_signals_without_reuse(model, registry).entropies)
    gate = build_part(registry.get("gate", "entropy").cls, {"threshold": tau})
    heard = _listening(gate)
    s = _strategy(registry, gate, "block-residual")
    full = FullAttention()
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", full)
    _sample(model, s)
    monkeypatch.undo()

    computed = [[not r for r in row] for row in s.stats.reuse_map]
    assert len(full.calls) == sum(map(sum, computed))  # one attention per computing block, none per reuse
    calls = iter(full.calls)
    at = [[next(calls) if c else None for c in row] for row in computed]  # step, block -> entropy computed then
    stale = 0
    for step, values, eligible, _ in heard:
        for block in range(blocks):
            if not eligible[block]:
                continue
            last = max(t for t in range(step) if computed[t][block])
            stale += last < step - 1
            assert values[signals.ENTROPY][block] == pytest.approx(at[last][block], abs=1e-5), (step, block, last)
    assert stale > 0  # some block was read after a run of reuses, from the compute before it
    assert 0 < s.stats.reused < (STEPS - 1) * blocks


# --- suites/dqar-gates.yaml: each gate against an interval at matched reuse --------------


def test_the_gates_suite_pairs_each_gate_with_the_interval_closest_to_its_target(registry):
    """Per model and cache: the three gates and an interval share the cache and the scheduler,
    and the interval's `every` gives the reuse closest to the gates' 30 % target of every
    interval setting under that scheduler (read as `dqar-bench plan` reads it)."""
    from pathlib import Path

    from dqar_bench.config.suite import load_suites
    from dqar_bench.views.plan import geometry, reuse_pattern

    suites = load_suites(Path(__file__).resolve().parent.parent / "suites" / "dqar-gates.yaml", registry)
    assert sorted(s.model for s in suites) == sorted(MODELS)
    for suite in suites:
        assert suite.clock == "cpu" and suite.seeds == [0] and suite.steps == 25
        geo = geometry(suite)
        for cache in CACHES:
            cases = [c for c in suite.cases if c.parts.get("cache") is not None and c.parts["cache"].name == cache]
            assert sorted(c.parts["gate"].name for c in cases) == sorted(["interval", *GATES]), (suite.model, cache)
            assert len({(c.parts["scheduler"].name, str(c.parts["scheduler"].params)) for c in cases}) == 1
            interval = next(c for c in cases if c.parts["gate"].name == "interval")
            scheduler = interval.parts["scheduler"].part

            def reuse(every: int) -> float:
                gate = build_part(registry.get("gate", "interval").cls, {"every": every})
                return reuse_pattern(scheduler, gate, geo.num_blocks, geo.timesteps)[0].float().mean().item()

            for gate in (c for c in cases if c.parts["gate"].name != "interval"):  # the calibrated 30 %, on other seeds
                assert list(gate.calibrated.values()) == [0.3] and gate.calibration_digest is not None, gate.name
            chosen = interval.parts["gate"].params["every"]
            assert min(range(1, 7), key=lambda n: abs(reuse(n) - 0.3)) == chosen, (suite.model, cache)
            assert abs(reuse(chosen) - 0.3) < 0.01
