"""DQAR's own parts, one at a time: signal formulas, gates, quantizers and schedules.

Expected values are worked out by hand (in the comments) from the definitions, not read
back from the code.
"""

from __future__ import annotations

import math

import pytest
import torch

from dqar_bench.core.context import StepContext
from dqar_bench.core.parts import build_part
from dqar_bench.strategies.gates.dqar import Dqar
from dqar_bench.strategies.gates.entropy import Entropy
from dqar_bench.strategies.gates.snr import Snr
from dqar_bench.strategies.quantizers.fp8 import FP8, Fp8
from dqar_bench.strategies.quantizers.int8 import Int8
from dqar_bench.strategies.schedulers.exponential import Exponential
from dqar_bench.strategies.schedulers.linear import Linear
from dqar_bench.strategies.schedulers.linear_reverse import LinearReverse
from dqar_bench.strategies.schedulers.step import Step
from dqar_bench.strategy import signals

NAN = float("nan")


# --- signals -------------------------------------------------------------------------


@pytest.mark.parametrize("tokens", [1, 7, 16, 64])
def test_uniform_attention_has_entropy_log_n(tokens):
    q = torch.zeros(2, 3, tokens, 8)  # every score 0: each row is uniform over the N keys
    k = torch.randn(2, 3, tokens, 8)
    assert signals.attention_entropy(q, k, num_queries=0).item() == pytest.approx(math.log(tokens), abs=1e-5)


def test_one_hot_attention_has_entropy_zero():
    tokens, dim = 16, 8
    k = torch.zeros(1, 2, tokens, dim)
    k[..., 5, 0] = 1.0  # only key 5 answers the queries below
    q = torch.zeros(1, 2, tokens, dim)
    q[..., 0] = 1e4  # score 1e4 / sqrt(8) on key 5, 0 elsewhere: softmax is one-hot
    assert signals.attention_entropy(q, k).item() == pytest.approx(0.0, abs=1e-6)


def test_entropy_is_the_mean_over_the_sampled_rows_only():
    tokens = 16
    k = torch.zeros(1, 1, tokens, 4)
    k[..., 0, 0] = 1.0
    q = torch.zeros(1, 1, tokens, 4)
    q[..., 1::2, 0] = 1e4  # odd rows one-hot (entropy 0), even rows uniform (log 16)
    # 4 evenly spaced rows of 16: linspace(0, 15, 4) = 0, 5, 10, 15 -> two even, two odd rows
    assert signals.attention_entropy(q, k, num_queries=4).item() == pytest.approx(math.log(tokens) / 2, abs=1e-5)
    # 2 rows: 0 and 15 -> one even, one odd; all 16 rows: half and half
    assert signals.attention_entropy(q, k, num_queries=2).item() == pytest.approx(math.log(tokens) / 2, abs=1e-5)
    # 3 rows: 0, 7.5 -> 8, 15 -> even, even, odd
    assert signals.attention_entropy(q, k, num_queries=3).item() == pytest.approx(math.log(tokens) * 2 / 3, abs=1e-5)


def test_normalised_entropy_is_nats_over_log_keys_per_buffer():
    """One scale for blocks with different key counts: uniform is 1 whatever N, and each
    buffer is divided by the log of its own key count."""
    nats, unit = signals.EntropyProbe(4, normalised=False), signals.EntropyProbe(4)
    q16, k16 = torch.randn(1, 2, 16, 8), torch.randn(1, 2, 16, 8)
    q46, k46 = torch.randn(1, 2, 46, 8), torch.randn(1, 2, 46, 8)
    for probe in (nats, unit):
        probe.reset(3, torch.device("cpu"))
        probe.record(0, q16, k16)
        probe.record(1, q46, k46)
        probe.record(2, torch.zeros(1, 2, 46, 8), k46)  # uniform over 46 keys
    h, n = nats.entropies().tolist(), unit.entropies().tolist()
    assert n[0] == pytest.approx(h[0] / math.log(16), rel=1e-6)
    assert n[1] == pytest.approx(h[1] / math.log(46), rel=1e-6)
    assert n[2] == pytest.approx(1.0, abs=1e-6) and h[2] == pytest.approx(math.log(46), abs=1e-5)


def test_entropy_probe_keeps_each_blocks_last_compute_and_nan_for_the_others():
    probe = signals.EntropyProbe(num_queries=4, normalised=False)
    probe.reset(3, torch.device("cpu"))
    assert all(math.isnan(h) for h in probe.entropies().tolist())  # nothing recorded yet
    q_uniform, k = torch.zeros(2, 2, 16, 8), torch.randn(2, 2, 16, 8)
    q_random = torch.randn(2, 2, 16, 8)
    probe.record(0, q_uniform, k)
    probe.record(2, q_random, k)
    h = probe.entropies().tolist()
    assert h[0] == pytest.approx(math.log(16), abs=1e-5)
    assert math.isnan(h[1])
    assert h[2] == pytest.approx(signals.attention_entropy(q_random, k, 4).item(), abs=1e-6)
    probe.record(0, q_random, k)  # a new compute replaces the block's entropy
    assert probe.entropies()[0].item() == pytest.approx(h[2], abs=1e-6)
    probe.reset(3, torch.device("cpu"))  # a new sampling call forgets everything
    assert all(math.isnan(x) for x in probe.entropies().tolist())


def test_entropies_recompute_only_the_fresh_blocks_and_read_what_a_full_recompute_reads():
    """Blocks named fresh are computed again, the others keep what they read last; on one
    thread (the tests'; the suites' own) the bits are those of recomputing every block."""
    def probes():
        for normalised in (True, False):
            probe = signals.EntropyProbe(num_queries=4, normalised=normalised)
            probe.reset(4, torch.device("cpu"))
            yield probe

    g = torch.Generator().manual_seed(0)
    qs = [torch.randn(3, 2, 16, 8, generator=g) * 2 for _ in range(7)]
    k, k46 = torch.randn(3, 2, 16, 8, generator=g), torch.randn(3, 2, 46, 8, generator=g)
    for probe in probes():
        for b in range(3):
            probe.record(b, qs[b], k)
        probe.record(3, qs[3], k46)  # a buffer of its own
        first = probe.entropies([0, 1, 2, 3])
        assert torch.equal(first, probe.entropies())
        probe.record(1, qs[4], k)
        probe.record(3, qs[5], k46)
        assert torch.equal(probe.entropies([]), first)  # nothing named fresh: nothing recomputed
        again = probe.entropies([1, 3])
        assert torch.equal(again, probe.entropies())  # the full recompute, bit for bit
        assert again[1] != first[1] and again[3] != first[3] and torch.equal(again[[0, 2]], first[[0, 2]])
        probe.record(2, qs[6], k)  # not named fresh below: the block keeps what it read last
        assert probe.entropies([0])[2] == again[2]


def test_linear_attention_entropy_is_that_of_the_relu_kernel_weights():
    # Sana attends with relu(q).relu(k) / sum_j relu(q).relu(k_j): the probe must read the entropy
    # of those weights (worked out here from the processor's own formula), not of a softmax map.
    from dqar_bench.model.models import load_model

    model = load_model("sana-tiny", torch.device("cpu"), torch.float32).transformer
    attn = model.transformer_blocks[0].attn1
    assert signals.linear_attention(attn) and not signals.linear_attention(model.transformer_blocks[0].attn2)
    x = torch.randn(2, 16, attn.to_q.in_features, generator=torch.Generator().manual_seed(0))
    q, k = signals.probe_qk(attn, x)
    rq = torch.relu(attn.norm_q(attn.to_q(x)) if attn.norm_q is not None else attn.to_q(x)).unflatten(-1, (attn.heads, -1))
    rk = torch.relu(attn.norm_k(attn.to_k(x)) if attn.norm_k is not None else attn.to_k(x)).unflatten(-1, (attn.heads, -1))
    weights = torch.einsum("bihd,bjhd->bhij", rq, rk)
    p = weights / weights.sum(-1, keepdim=True)
    by_hand = -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(-1).mean()
    probe = signals.EntropyProbe(num_queries=0, normalised=False)
    probe.reset(1, torch.device("cpu"))
    probe.record(0, q, k, linear=True)
    assert probe.entropies()[0].item() == pytest.approx(by_hand.item(), rel=1e-5)
    probe.record(0, q, k)  # the softmax reading of the same projections is another number
    assert abs(probe.entropies()[0].item() - by_hand.item()) > 1e-3


def test_latent_snr_by_hand():
    x0 = torch.ones(2, 4, 3, 3)
    # ||x0||^2 = 72; x_t - x0 = 2 everywhere: ||.||^2 = 4 * 72 -> SNR 1/4
    assert signals.latent_snr(3 * x0, x0).item() == pytest.approx(0.25)
    # predicted x0 == x_t: no noise left, SNR = 72 / eps
    assert signals.latent_snr(x0, x0).item() > 1e9
    assert signals.latent_snr(x0, torch.zeros_like(x0)).item() == 0.0


# --- gates ---------------------------------------------------------------------------


def ctx(step=5, entropy=None, snr=1.0, cond_len=1):
    return StepContext(step, 20, 500, torch.zeros(1), None, 0.5, cond_len, {"entropy": entropy or [], "snr": snr})


def test_entropy_gate_reuses_only_focused_eligible_blocks():
    gate = Entropy(threshold=2.0, entropy="nats")
    gate.reset(20, 4)
    # below tau and eligible / above tau / never measured (NaN) / below tau but not eligible
    decided = gate.decide(ctx(entropy=[1.5, 2.5, NAN, 1.9]), [True, True, True, False])
    assert decided == [True, False, False, False]
    assert gate.decide(ctx(entropy=[2.0] * 4), [True] * 4) == [False] * 4  # strictly below


def test_entropy_threshold_adapts_to_the_conditioning_length_only_when_asked():
    entropies = [2.5, 3.9, 4.1, 1.0]
    plain = Entropy(threshold=2.0, entropy="nats")
    adaptive = Entropy(threshold=2.0, entropy="nats", adapt_to_length=True, base_length=77)
    for gate in (plain, adaptive):
        gate.reset(20, 4)
    # p = 4 * 77: tau(p) = 2 * sqrt(4) = 4
    assert plain.decide(ctx(entropy=entropies, cond_len=308), [True] * 4) == [False, False, False, True]
    assert adaptive.decide(ctx(entropy=entropies, cond_len=308), [True] * 4) == [True, True, False, True]
    # p = 77 / 4: tau = 2 * sqrt(1/4) = 1
    assert adaptive.decide(ctx(entropy=[0.9, 1.1, 1.0, 0.0], cond_len=77 / 4), [True] * 4) == [True, False, False, True]


@pytest.mark.parametrize(
    "snr, reuse",
    [(NAN, False), (0.05, False), (0.1, True), (1.0, True), (10.0, True), (10.5, False), (1e9, False)],
)
def test_snr_gate_reuses_only_inside_the_window(snr, reuse):
    gate = Snr(deep_layer_snr_threshold=0.0)  # the seed's window [0.1, 10], no deep-block floor
    gate.reset(20, 3)
    assert gate.decide(ctx(snr=snr), [True, False, True]) == [reuse, False, reuse]


@pytest.mark.parametrize("blocks, first_deep", [(3, 2), (6, 4), (28, 18)])
def test_deep_blocks_need_the_seeds_snr_floor(blocks, first_deep):
    """The seed's LayerScheduler.can_reuse: index >= 2L // 3 is deep and needs SNR >= 1.0 (its default)."""
    for gate in (Snr(), Dqar(warmup=0)):
        assert gate.deep_layer_snr_threshold == 1.0
        gate.reset(20, blocks)
        focused = [0.0] * blocks
        below = gate.decide(ctx(entropy=focused, snr=0.5), [True] * blocks)
        assert below == [b < first_deep for b in range(blocks)]  # 28 blocks: 18..27 are deep
        gate.reset(20, blocks)
        assert gate.decide(ctx(entropy=focused, snr=1.0), [True] * blocks) == [True] * blocks  # at the floor: allowed
    off = Snr(deep_layer_snr_threshold=0.0)
    off.reset(20, blocks)
    assert off.decide(ctx(snr=0.5), [True] * blocks) == [True] * blocks


def test_dqar_gate_needs_warmup_snr_window_and_low_entropy():
    gate = Dqar()  # tau 0.36 normalised (the seed's 2.0 nats / log 256), window [0.1, 10] on the schedule's SNR, warmup 2, deep-block floor 1.0
    assert (gate.threshold, gate.entropy, gate.snr_low, gate.snr_high, gate.snr, gate.warmup) == (0.36, "normalised", 0.1, 10.0, "schedule", 2)
    gate.reset(20, 3)
    focused = [0.2, 0.95, 0.2]
    assert gate.decide(ctx(step=1, entropy=focused, snr=1.0), [True] * 3) == [False] * 3  # warmup
    gate.reset(20, 3)
    assert gate.decide(ctx(step=2, entropy=focused, snr=1.0), [True, True, False]) == [True, False, False]
    assert gate.decide(ctx(step=3, entropy=focused, snr=50.0), [True] * 3) == [False] * 3  # SNR too high
    assert gate.decide(ctx(step=4, entropy=focused, snr=0.01), [True] * 3) == [False] * 3  # SNR too low


def test_max_reuse_forces_a_compute_after_a_run_of_reuse():
    gate = Entropy(threshold=2.0, entropy="nats", max_reuse=2)
    gate.reset(20, 2)
    runs = [gate.decide(ctx(step=s, entropy=[1.0, 3.0]), [True, True])[0] for s in range(1, 8)]
    assert runs == [True, True, False, True, True, False, True]
    # a step the gate was not asked about (no block eligible) was a compute for every block
    gate.reset(20, 2)
    assert [gate.decide(ctx(step=s, entropy=[1.0, 3.0]), [True, True])[0] for s in (1, 2)] == [True, True]
    assert gate.decide(ctx(step=4, entropy=[1.0, 3.0]), [True, True])[0] is True
    uncapped = Snr()
    uncapped.reset(20, 1)
    assert all(uncapped.decide(ctx(step=s), [True])[0] for s in range(1, 15))


@pytest.mark.parametrize(
    "cls, params, message",
    [
        (Entropy, {"threshold": 0.0}, "threshold"),
        (Entropy, {"max_reuse": -1}, "max_reuse"),
        (Snr, {"snr_low": 5.0, "snr_high": 1.0}, "snr_high"),
        (Snr, {"snr_low": -1.0}, "snr_low"),
        (Dqar, {"warmup": -1}, "warmup"),
        (Dqar, {"base_length": 0.0}, "base_length"),
        (Dqar, {"deep_layer_snr_threshold": -1.0}, "deep_layer_snr_threshold"),
        (Entropy, {"threshold": 2.0}, r"must be in \(0, 1\] for normalised entropy"),
        (Dqar, {"threshold": 1.5}, r"must be in \(0, 1\] for normalised entropy.*entropy: nats"),
    ],
)
def test_gate_parameters_out_of_range_are_refused(cls, params, message):
    with pytest.raises(ValueError, match=message):
        cls(**params)


# --- quantizers ----------------------------------------------------------------------

INT8_CASES = [
    ("per_tensor", None, (4, 16, 32)),
    ("per_channel", None, (4, 16, 32)),
    ("per_head", 4, (4, 16, 32)),  # an attention output, channels cut into 4 heads
    ("per_tensor", None, (4, 2, 16, 8)),
    ("per_channel", None, (4, 2, 16, 8)),
    ("per_head", None, (4, 2, 16, 8)),  # K / V carry their heads in dimension 1
]


def _spread(shape):
    """Values whose groups have very different ranges, so a wrong grouping shows."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen)
    return x * torch.logspace(-2, 2, shape[-1]) if len(shape) == 3 else x * torch.logspace(-2, 2, shape[1]).view(1, -1, 1, 1)


@pytest.mark.parametrize("mode, heads, shape", INT8_CASES)
def test_int8_round_trip_is_within_half_a_step(mode, heads, shape):
    x = _spread(shape)
    packed = Int8(mode=mode, heads=heads).pack(x)
    assert packed.codes.dtype == torch.int8 and packed.codes.abs().max() <= 127
    back = packed.unpack()
    assert back.shape == x.shape and back.dtype == x.dtype
    err = (x.reshape(packed.codes.shape) - back.reshape(packed.codes.shape)).abs()
    assert torch.all(err <= packed.scales / 2 * (1 + 1e-5) + 1e-12)


@pytest.mark.parametrize("mode, heads, shape", INT8_CASES)
def test_int8_scale_is_max_abs_over_127_per_group(mode, heads, shape):
    x = _spread(shape)
    packed = Int8(mode=mode, heads=heads).pack(x)
    if mode == "per_tensor":
        expected = x.abs().max().reshape(1)
    elif mode == "per_channel":  # one scale per channel of the last dimension
        expected = x.abs().reshape(-1, shape[-1]).amax(0)
    elif len(shape) == 4:  # one per head of [B, H, N, D]
        expected = x.abs().transpose(0, 1).reshape(shape[1], -1).amax(1)
    else:  # [B, N, C] with C = heads x head_dim
        expected = x.abs().reshape(-1, heads, shape[-1] // heads).transpose(0, 1).reshape(heads, -1).amax(1)
    assert torch.allclose(packed.scales.flatten(), expected / 127)


@pytest.mark.parametrize("mode, heads, shape", INT8_CASES)
def test_int8_bytes_are_codes_plus_scales(mode, heads, shape):
    x = _spread(shape)
    groups = {"per_tensor": 1, "per_channel": shape[-1], "per_head": heads or shape[1]}[mode]
    assert Int8(mode=mode, heads=heads).pack(x).nbytes == x.numel() + 4 * groups
    assert Int8(mode=mode, heads=heads).pack(x).nbytes <= 0.3 * x.numel() * x.element_size()


@pytest.mark.parametrize("mode, heads, shape", INT8_CASES)
@pytest.mark.parametrize("value", [0.0, 3.5, -0.25])
def test_int8_zero_or_constant_tensors_come_back_without_nan(mode, heads, shape, value):
    x = torch.full(shape, value)
    back = Int8(mode=mode, heads=heads).pack(x).unpack()
    assert not torch.isnan(back).any()
    assert torch.allclose(back, x, atol=1e-6)


@pytest.mark.parametrize("mode, heads, shape", INT8_CASES)
@pytest.mark.parametrize("bad", [NAN, math.inf, -math.inf])
def test_int8_a_non_finite_value_stays_inside_its_group_and_is_counted(mode, heads, shape, bad):
    x = _spread(shape)
    where = (0,) * (len(shape) - 1) + (shape[-1] - 1,)  # the last channel (per_channel: its own group)
    zeroed, poisoned = x.clone(), x.clone()
    zeroed[where], poisoned[where] = 0.0, bad  # a zero never sets a group's max |x|
    quantizer = Int8(mode=mode, heads=heads)
    quantizer.begin(torch.device("cpu"))
    packed = quantizer.pack(poisoned)
    reference = Int8(mode=mode, heads=heads).pack(zeroed)
    back, expected = packed.unpack(), reference.unpack()
    assert math.isnan(back[where])  # the broken value still shows as broken, as NaN
    others = torch.ones(shape, dtype=torch.bool)
    others[where] = False
    # every other value, in its group and in every other group, comes back exactly as if the
    # value had been harmless: each scale is taken over the finite values of its group only
    assert torch.equal(packed.scales, reference.scales) and torch.equal(back[others], expected[others])
    assert int(packed.nonfinite) == 1 and quantizer.nonfinite() == 1
    quantizer.pack(poisoned)
    assert quantizer.nonfinite() == 2  # a running count over packs, read once on the host


def test_int8_scale_ignores_a_nan_in_its_group():
    x = torch.tensor([[1.0, 2.0, NAN, -4.0]])
    packed = Int8().pack(x)
    assert packed.scales.item() == pytest.approx(4.0 / 127)  # max |x| over the finite values
    back = packed.unpack()
    assert torch.allclose(back[0, [0, 1, 3]], torch.tensor([1.0, 2.0, -4.0]), atol=4.0 / 127 / 2)
    assert math.isnan(back[0, 2]) and packed.codes[0, 2] == -128


def test_strategy_stats_count_non_finite_values_the_cache_was_handed(registry):
    from dqar_bench.strategy.strategy import Strategy

    parts = {k: build_part(registry.get(k, n).cls, p) for k, n, p in (
        ("scheduler", "all", {}), ("gate", "never", {}), ("cache", "attention-output", {}), ("quantizer", "int8", {"mode": "per_channel"}))}
    strategy = Strategy(parts["scheduler"], parts["gate"], parts["cache"], parts["quantizer"])
    strategy.begin(2, 3, torch.device("cpu"))
    strategy.quantizer.pack(torch.tensor([[NAN, 1.0], [2.0, 3.0]]))  # before the reset: not counted
    strategy.reset_stats()
    strategy.cache.store(0, torch.tensor([[math.inf, 1.0], [NAN, 3.0]]), None)
    strategy.cache.store(1, torch.ones(2, 2), None)
    assert strategy.stats.nonfinite_cached == 2


def test_int8_keeps_the_callers_dtype():
    x = torch.randn(2, 8, 16, dtype=torch.bfloat16)
    assert Int8().pack(x).unpack().dtype == torch.bfloat16


def test_int8_per_head_needs_the_head_count_for_token_tensors():
    with pytest.raises(ValueError, match="heads"):
        Int8(mode="per_head").pack(torch.randn(2, 8, 16))
    with pytest.raises(ValueError, match="do not split"):
        Int8(mode="per_head", heads=3).pack(torch.randn(2, 8, 16))
    with pytest.raises(ValueError, match="heads"):
        Int8(heads=0)


@pytest.mark.skipif(FP8 is None, reason="this torch has no float8_e4m3fn")
@pytest.mark.parametrize("shape", [(4, 16, 32), (4, 2, 16, 8)])
def test_fp8_round_trip_within_half_a_step_of_its_scale(shape):
    x = _spread(shape)
    packed = Fp8().pack(x)
    assert packed.codes.dtype == FP8 and packed.scales.numel() == 1
    assert packed.scales.item() == pytest.approx(x.abs().max().item() / 448)
    err = (x - packed.unpack()).abs()
    # e4m3: 3 mantissa bits, so half a step is 2^-4 of the value; subnormal step 2^-9 scales
    bound = x.abs() * 2**-4 + packed.scales * 2**-10
    assert torch.all(err <= bound * (1 + 1e-5))
    assert packed.nbytes == x.numel() + 4


@pytest.mark.skipif(FP8 is None, reason="this torch has no float8_e4m3fn")
def test_fp8_scale_ignores_non_finite_values_and_keeps_them_as_nan():
    x = torch.tensor([[1.0, -2.0, math.inf, NAN, 0.5]])
    quantizer = Fp8()
    quantizer.begin(torch.device("cpu"))
    packed = quantizer.pack(x)
    assert packed.scales.item() == pytest.approx(2.0 / 448)
    back = packed.unpack()
    assert torch.allclose(back[0, [0, 1, 4]], x[0, [0, 1, 4]], rtol=2**-4)
    assert back[0, 2:4].isnan().all() and int(packed.nonfinite) == 2 and quantizer.nonfinite() == 2


@pytest.mark.skipif(FP8 is None, reason="this torch has no float8_e4m3fn")
@pytest.mark.parametrize("value", [0.0, -2.0])
def test_fp8_zero_or_constant_tensors_come_back_without_nan(value):
    x = torch.full((3, 5, 7), value)
    back = Fp8().pack(x).unpack()
    assert not torch.isnan(back).any()
    assert torch.allclose(back, x)


# --- schedulers ----------------------------------------------------------------------


def rows(mask: torch.Tensor) -> list[str]:
    """A mask as one string per step, '1' where a block may reuse."""
    return ["".join("1" if m else "." for m in row) for row in mask.tolist()]


def test_linear_grows_from_the_shallow_blocks():
    # 10 steps, 4 blocks, all candidates, no warmup: after step t, u = (t+1)/10 and
    # ceil(4u) blocks are eligible: 0.4->1, 0.8->1, 1.2->2, 1.6->2, 2->2, 2.4->3, 2.8->3, 3.2->4, ...
    assert rows(Linear(layer_fraction=1.0).mask(10, 4)) == [
        "1...", "1...", "11..", "11..", "11..", "111.", "111.", "1111", "1111", "1111",
    ]


def test_linear_with_warmup_and_layer_fraction():
    # warmup 0.2 of 10 steps: steps 0-1 reuse nothing; layer_fraction 0.5 of 4: 2 candidates;
    # 8 steps left, u = 1/8 .. 1: ceil(2u) = 1 for u <= 1/2, then 2
    expected = ["....", "....", "1...", "1...", "1...", "1...", "11..", "11..", "11..", "11.."]
    assert rows(Linear(layer_fraction=0.5, warmup=0.2).mask(10, 4)) == expected
    assert rows(LinearReverse(layer_fraction=0.5, warmup=0.2).mask(10, 4)) == [r[::-1] for r in expected]


def test_exponential_keeps_reuse_shallow_until_late():
    # share = (e^(3u) - 1) / (e^3 - 1), u = 0.1 .. 1; times 4 blocks:
    # 0.07 0.17 0.31 0.49 0.73 1.06 1.50 2.10 2.91 4.00 -> ceil: 1 1 1 1 1 2 2 3 3 4
    assert rows(Exponential(layer_fraction=1.0, rate=3.0).mask(10, 4)) == [
        "1...", "1...", "1...", "1...", "1...", "11..", "11..", "111.", "111.", "1111",
    ]


def test_step_widens_at_the_phase_ends():
    # phases end at 0.3 and 0.7 of 10 steps: steps 0-2 a third of 4 blocks (ceil 1.33 = 2),
    # steps 3-6 two thirds (ceil 2.67 = 3), steps 7-9 all four
    assert rows(Step(layer_fraction=1.0).mask(10, 4)) == ["11.."] * 3 + ["111."] * 4 + ["1111"] * 3
    # layer_fraction 0.5 of 6 blocks = 3 candidates: 1, 2, 3 blocks; warmup 0.5 of 10 steps
    # leaves 5 steps with u = 0.2 .. 1: phase 0 for 0.2 (<= 0.3), 1 for 0.4, 0.6, 2 for 0.8, 1.0
    assert rows(Step(layer_fraction=0.5, warmup=0.5).mask(10, 6)) == [
        "......", "......", "......", "......", "......", "1.....", "11....", "11....", "111...", "111...",
    ]


@pytest.mark.parametrize("cls", [Linear, LinearReverse, Exponential, Step])
@pytest.mark.parametrize("steps, blocks", [(1, 1), (7, 3), (50, 28)])
def test_every_schedule_is_monotone_bounded_and_respects_warmup(cls, steps, blocks):
    sched = cls(layer_fraction=0.5, warmup=0.2)
    mask = sched.mask(steps, blocks)
    assert mask.shape == (steps, blocks) and mask.dtype == torch.bool
    warm = math.ceil(0.2 * steps)
    assert not mask[:warm].any()
    assert int(mask.sum(1).max()) <= int(0.5 * blocks)
    assert torch.all(mask[1:] >= mask[:-1])  # once eligible, a block stays eligible
    order = mask if not cls.REVERSE else mask.flip(1)
    assert torch.all(order[:, 1:] <= order[:, :-1])  # shallow (deep for reverse) blocks first


@pytest.mark.parametrize("cls", [Linear, LinearReverse, Exponential, Step])
def test_no_reuse_at_the_extremes(cls):
    assert not cls(layer_fraction=0.0).mask(10, 4).any()
    assert not cls(layer_fraction=1.0, warmup=1.0).mask(10, 4).any()
    assert cls(layer_fraction=1.0).mask(10, 4)[-1].all()


@pytest.mark.parametrize("cls", [Linear, LinearReverse, Exponential, Step])
@pytest.mark.parametrize("field, value", [("layer_fraction", 1.5), ("layer_fraction", -0.1), ("warmup", 2.0), ("warmup", NAN)])
def test_fractions_outside_0_1_are_refused(cls, field, value):
    with pytest.raises(ValueError, match=field):
        cls(**{field: value})


def test_step_phase_ends_must_increase_inside_0_1():
    with pytest.raises(ValueError, match="phase_ends"):
        Step(phase_ends=[0.7, 0.3])
    with pytest.raises(ValueError, match="phase_ends"):
        Step(phase_ends=[0.3, 1.2])
