"""DQAR's parts inside real sampling calls on the tiny DiT, and their bad input at the CLI."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from dqar_bench import Gate
from dqar_bench.cli import main
from dqar_bench.core.parts import build_part
from dqar_bench.model.sampling import make_scheduler, sample
from dqar_bench.strategy import signals
from dqar_bench.strategy.adapter import adapter_for
from dqar_bench.strategy.attention import attend, project_q, project_qkv
from dqar_bench.strategy.strategy import Strategy

LABELS = [1, 3]
STEPS = 8
SUITES = Path(__file__).resolve().parent.parent / "suites"


def run(tiny, strategy=None, sampler="ddim", steps=STEPS, observer=None):
    scheduler = make_scheduler(sampler, tiny.scheduler_config)
    with adapter_for(tiny.transformer).install(tiny.transformer, strategy):
        return sample(tiny.transformer, scheduler, LABELS, 0, steps, 4.0, tiny.null_class, observer=observer or strategy)


def strategy(registry, gate=("never", {}), cache="kv", quantizer=("none", {}), scheduler=("all", {}), probe_queries=16):
    def part(kind, spec):
        name, params = (spec, {}) if isinstance(spec, str) else spec
        return build_part(registry.get(kind, name).cls, params)

    return Strategy(part("scheduler", scheduler), part("gate", gate), part("cache", cache), part("quantizer", quantizer), probe_queries)


# --- the kv cache --------------------------------------------------------------------


def test_kv_cache_without_reuse_equals_the_untouched_model_bit_for_bit(tiny, registry):
    s = strategy(registry, cache="kv")
    assert torch.equal(run(tiny, s), run(tiny))
    assert s.stats.reused == 0 and s.stats.peak_cache_bytes > 0


def test_kv_reuse_computes_fresh_queries_against_the_cached_keys_and_values(tiny, registry):
    cache = strategy(registry, cache="kv").cache
    attn = tiny.transformer.transformer_blocks[0].attn1
    before, now = torch.randn(2, 16, 32), torch.randn(2, 16, 32)
    q, k, v = project_qkv(attn, before)
    stored = attend(attn, q, k, v, before)
    cache.clear()
    cache.store(0, stored, (q, k, v))
    assert cache.holds(0) and not cache.holds(1)
    reused = cache.reuse(0, attn, now)
    assert torch.equal(reused, attend(attn, project_q(attn, now), k, v, now))
    assert not torch.allclose(reused, stored)  # not the attention output of the old step
    assert cache.nbytes() == 2 * k.numel() * k.element_size()


def test_kv_cache_with_int8_per_head_holds_a_quarter_of_the_bytes(tiny, registry):
    plain = strategy(registry, ("interval", {"every": 2}), "kv")
    quantized = strategy(registry, ("interval", {"every": 2}), "kv", ("int8", {"mode": "per_head"}))
    out_plain, out_quantized = run(tiny, plain), run(tiny, quantized)
    assert plain.stats.reused == quantized.stats.reused > 0  # the same reuse pattern
    heads = tiny.transformer.transformer_blocks[0].attn1.heads
    blocks = tiny.num_blocks
    # per block: K and V as int8 codes plus one float32 scale per head each
    assert quantized.stats.peak_cache_bytes == plain.stats.peak_cache_bytes // 4 + blocks * 2 * heads * 4
    assert torch.isfinite(out_quantized).all()
    assert (out_quantized - out_plain).abs().max() < 0.1 * out_plain.abs().max()


def test_int8_attention_output_cache_is_at_most_30_percent_of_the_model_dtype_one(tiny, registry):
    plain = strategy(registry, ("interval", {"every": 3}), "attention-output")
    quantized = strategy(registry, ("interval", {"every": 3}), "attention-output", ("int8", {"mode": "per_channel"}))
    run(tiny, plain), run(tiny, quantized)
    assert plain.stats.reused == quantized.stats.reused > 0
    assert quantized.stats.peak_cache_bytes <= 0.3 * plain.stats.peak_cache_bytes


# --- the probe inside a sampling call -------------------------------------------------


@dataclass
class Recorder(Gate):
    """Reads entropy and SNR, records what it was given, never reuses."""

    PLUGIN_NAME = "recorder"
    SIGNALS = frozenset({signals.ENTROPY, signals.SNR})

    def __post_init__(self) -> None:
        self.seen: list[tuple[int, float, list[float]]] = []

    def decide(self, ctx, eligible):
        self.seen.append((ctx.step, ctx.signals[signals.SNR], list(ctx.signals[signals.ENTROPY])))
        return [False] * len(eligible)


def test_probe_runs_only_where_the_schedule_lets_a_block_reuse_next(tiny, registry, monkeypatch):
    recorded: list[int] = []
    record = signals.EntropyProbe.record

    def spy(self, block, q, k):
        recorded.append(block)
        return record(self, block, q, k)

    monkeypatch.setattr(signals.EntropyProbe, "record", spy)
    linear = build_part(registry.get("scheduler", "linear").cls, {"layer_fraction": 0.5})
    s = Strategy(linear, Recorder(), build_part(registry.get("cache", "attention-output").cls, {}),
                 build_part(registry.get("quantizer", "none").cls, {}), 16)
    run(tiny, s)
    mask = linear.mask(STEPS, tiny.num_blocks)
    # nothing reuses, so every block computes at every step; a block is probed at step t
    # exactly when the mask lets it reuse at step t + 1
    assert sorted(recorded) == sorted(b for t in range(STEPS - 1) for b in range(tiny.num_blocks) if mask[t + 1, b])
    for step, snr, entropy in s.gate.seen:  # probed blocks read a real entropy, the others NaN
        for b, h in enumerate(entropy):
            assert (h == h) == bool(mask[1 : step + 1, b].any())  # probed at some step t < step
            if h == h:
                assert 0.0 < h <= torch.log(torch.tensor(16.0)).item() + 1e-5


# --- DPM-Solver ----------------------------------------------------------------------


class Watch:
    """An observer between the sampler and the strategy: it sees the scheduler as well."""

    def __init__(self, strategy, scheduler):
        self.strategy, self.scheduler, self.seen = strategy, scheduler, []

    def begin(self, *args, **kwargs):
        self.strategy.begin(*args, **kwargs)

    def before_step(self, ctx):
        outputs = getattr(self.scheduler, "model_outputs", None)
        latest = outputs[-1].clone() if outputs and outputs[-1] is not None else None
        self.seen.append((ctx.step, ctx.timestep, ctx.alpha_bar, ctx.latents.clone(), None if ctx.x0 is None else ctx.x0.clone(), latest))
        self.strategy.before_step(ctx)

    def after_step(self):
        self.strategy.after_step()


def test_dpm_solver_runs_a_dqar_strategy_and_its_x0_and_snr_use_the_schedulers_alphas(tiny, registry):
    s = strategy(
        registry,
        ("dqar", {"threshold": 2.76, "entropy": "nats", "snr": "x0", "warmup": 1, "max_reuse": 2}),
        "attention-output",
        ("int8", {}),
        ("step", {"layer_fraction": 1.0}),
    )
    scheduler = make_scheduler("dpm-solver", tiny.scheduler_config)
    watch = Watch(s, scheduler)
    with adapter_for(tiny.transformer).install(tiny.transformer, s):
        out = sample(tiny.transformer, scheduler, LABELS, 0, STEPS, 4.0, tiny.null_class, observer=watch)
    assert type(scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert torch.isfinite(out).all()
    assert s.stats.reused > 0
    for step, timestep, alpha_bar, latents, x0, solver_x0 in watch.seen:
        assert alpha_bar == pytest.approx(float(scheduler.alphas_cumprod[timestep]))
        if step == 0:
            assert x0 is None
            continue
        # DPM-Solver++ keeps its own data prediction of the last step: the x0 the gates see
        # (and so their SNR) must be the same one, from the same alphas
        assert torch.allclose(x0, solver_x0, rtol=1e-4, atol=1e-4)
        assert signals.latent_snr(latents, x0).item() == pytest.approx(signals.latent_snr(latents, solver_x0).item(), rel=1e-3)


# --- suites and bad input ------------------------------------------------------------


@pytest.mark.parametrize("name", ["ablations", "warmup-sweep", "layer-sweep", "dit-xl-256"])
def test_shipped_suites_validate(name, capsys):
    assert main(["validate", str(SUITES / f"{name}.yaml")]) == 0
    assert "ok" in capsys.readouterr().out


def test_dit_xl_suite_has_the_seeds_setting():
    from dqar_bench.config.suite import load_suite

    suite = load_suite(SUITES / "dit-xl-256.yaml")
    assert (suite.model, suite.sampler, suite.steps, suite.guidance_scale) == ("facebook/DiT-XL-2-256", "ddim", 50, 4.0)
    assert (suite.class_labels, suite.dtype, suite.device) == ([207, 360, 387, 974], "float16", "cuda")


def test_ablations_pair_the_int8_cache_with_a_model_dtype_cache_of_the_same_pattern():
    from dqar_bench.config.suite import load_suite

    suite = load_suite(SUITES / "ablations.yaml")
    quant = suite.case("quant_cache_only").parts
    plain = suite.case("interval").parts
    assert quant["quantizer"].name == "int8" and plain["quantizer"].name == "none"
    assert all(quant[k] == plain[k] for k in ("gate", "scheduler", "cache"))


@pytest.mark.parametrize(
    "part, expected",
    [
        ("quantizer: {name: int8, mode: per_row}", "parameter 'mode' must be one of"),
        ("scheduler: {name: linear, layer_fraction: 1.5}", "parameter 'layer_fraction' must be a fraction in [0, 1]"),
        ("scheduler: {name: step, warmup: -0.2}", "parameter 'warmup' must be a fraction in [0, 1]"),
        ("gate: {name: snr, snr_low: 10, snr_high: 1}", "parameter 'snr_high' must be >= snr_low"),
    ],
)
def test_bad_parts_are_one_line_errors_with_exit_status_2(write_suite, capsys, part, expected):
    from tests.conftest import SMALL_SUITE_HEAD

    path = write_suite(SMALL_SUITE_HEAD + f"cases:\n  - name: baseline\n  - name: bad\n    {part}\n")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert "case 'bad'" in err and expected in err


def test_bad_input_loses_nothing_already_recorded(write_suite, tmp_path, capsys):
    from tests.conftest import SMALL_SUITE_HEAD

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    records = run_dir / "records.jsonl"
    records.write_text('{"case": "baseline", "status": "ok"}\n')
    path = write_suite(SMALL_SUITE_HEAD + "cases:\n  - name: baseline\n  - name: bad\n    quantizer: {name: int8, mode: per_row}\n")
    assert main(["run", str(path), "--resume", str(run_dir)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert records.read_text() == '{"case": "baseline", "status": "ok"}\n'
