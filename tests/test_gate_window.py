"""A gate's window (where it can reuse at all, from the step and the schedule's SNR) saves the
probes, stores and signal gathers outside it, and changes nothing the gate decides."""

from __future__ import annotations

import pytest
import torch

from dqar_bench.core.parts import build_part
from dqar_bench.model.sampling import make_scheduler, noise_levels, prediction_of, sample
from dqar_bench.strategies.quantizers.int8 import Int8
from dqar_bench.strategy import signals
from dqar_bench.strategy.adapter import adapter_for
from dqar_bench.strategy.strategy import Strategy

LABELS, STEPS = [1, 3], 10


def _snrs(tiny) -> list[float]:
    scheduler = make_scheduler("ddim", tiny.scheduler_config)
    scheduler.set_timesteps(STEPS)
    timesteps = [round(float(t)) for t in scheduler.timesteps.tolist()]
    return [signals.schedule_snr(a, s) for a, s in noise_levels(scheduler, timesteps, prediction_of(scheduler))]


def _gates(tiny) -> dict[str, tuple[str, dict]]:
    """Windows that close on both sides: the schedule's SNR at steps 3 and 7 bound them, deep
    blocks open only from step 5; dit-tiny's normalised entropies (0.97-0.99) are all below 0.995."""
    snr = _snrs(tiny)
    window = {"snr_low": snr[3], "snr_high": snr[7], "deep_layer_snr_threshold": snr[5], "max_reuse": 1}
    return {
        "dqar": ("dqar", {**window, "threshold": 0.995, "warmup": 4}),
        "snr": ("snr", window),
        "dqar-x0": ("dqar", {"snr": "x0", "snr_low": 0.0, "snr_high": 1e9, "threshold": 0.995, "warmup": 4, "deep_layer_snr_threshold": 0.0}),
    }


def _run(tiny, registry, gate: tuple[str, dict], monkeypatch, narrowed: bool) -> tuple[torch.Tensor, list, int, int]:
    """Output, reuse map, and the entropy records and int8 packs the call made."""
    counts = {"record": 0, "pack": 0}
    record, pack = signals.EntropyProbe.record, Int8.pack

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(signals.EntropyProbe, "record", counted("record", record))
    monkeypatch.setattr(Int8, "pack", counted("pack", pack))
    part = lambda kind, name, params=None: build_part(registry.get(kind, name).cls, params or {})
    s = Strategy(part("scheduler", "all"), part("gate", *gate), part("cache", "attention-output"), part("quantizer", "int8"), 16)
    if not narrowed:
        monkeypatch.setattr(s.gate, "window", lambda snrs, num_blocks: None)
    scheduler = make_scheduler("ddim", tiny.scheduler_config)
    with adapter_for(tiny.transformer).install(tiny.transformer, s):
        out = sample(tiny.transformer, scheduler, LABELS, 0, STEPS, 4.0, tiny.null_class, observer=s)
    monkeypatch.undo()
    return out, s.stats.reuse_map, counts["record"], counts["pack"]


@pytest.mark.parametrize("name", ["dqar", "snr", "dqar-x0"])
def test_the_window_saves_probes_and_stores_and_changes_no_decision_or_output(tiny, registry, monkeypatch, name):
    gate = _gates(tiny)[name]
    out, reuse_map, records, packs = _run(tiny, registry, gate, monkeypatch, narrowed=True)
    out_all, reuse_map_all, records_all, packs_all = _run(tiny, registry, gate, monkeypatch, narrowed=False)
    assert sum(map(sum, reuse_map)) > 0  # the gate reuses inside its window
    assert reuse_map == reuse_map_all
    assert torch.equal(out, out_all)
    assert packs < packs_all  # no store for a step the gate cannot reuse at
    if name != "snr":  # the snr gate reads no entropy: it never probes
        assert 0 < records < records_all
    window = build_part(registry.get("gate", gate[0]).cls, gate[1]).window(_snrs(tiny), tiny.num_blocks)
    reused = torch.tensor(reuse_map) > 0
    assert not (reused & ~window).any()  # and no reuse outside it


def test_the_windows_follow_warmup_snr_and_the_deep_floor(tiny, registry):
    snr = _snrs(tiny)
    dqar, x0 = (build_part(registry.get("gate", g).cls, p) for g, p in (_gates(tiny)["dqar"], _gates(tiny)["dqar-x0"]))
    window = dqar.window(snr, 6)
    assert window.shape == (STEPS, 6)
    deep = 2 * 6 // 3
    for step in range(STEPS):
        open_ = step >= 4 and snr[3] <= snr[step] <= snr[7]
        assert window[step, :deep].tolist() == [open_] * deep
        assert window[step, deep:].tolist() == [open_ and snr[step] >= snr[5]] * (6 - deep)
    assert x0.window(snr, 6).tolist() == [[step >= 4] * 6 for step in range(STEPS)]  # an x0 SNR is unknown before the call
    assert build_part(registry.get("gate", "entropy").cls, {}).window(snr, 6) is None
