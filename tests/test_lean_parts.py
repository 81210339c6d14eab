"""What DQAR pays for its parts: packs only where a reuse may read them, few Python frames
per hooked block, and the same outputs as the plain way."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from dqar_bench.core.parts import build_part
from dqar_bench.model.sampling import denoise, labels_condition, make_scheduler
from dqar_bench.strategy.adapter import adapter_for
from dqar_bench.strategy.strategy import Strategy, schedule_mask

CPU = torch.device("cpu")
STEPS = 10
PACKAGE = str(Path(__file__).resolve().parent.parent / "dqar_bench")


def _full_dqar(registry, skips: bool = True) -> Strategy:
    part = lambda kind, name, **params: build_part(registry.get(kind, name).cls, params)
    s = Strategy(
        part("scheduler", "step", layer_fraction=1.0, warmup=0.1),
        part("gate", "interval", every=2),
        part("cache", "attention-output"),
        part("quantizer", "int8"),
    )
    s._skips_stores = skips
    return s


class CountingPacks:
    def __init__(self, quantizer) -> None:
        self.pack, self.calls = quantizer.pack, 0
        quantizer.pack = self

    def __call__(self, x):
        self.calls += 1
        return self.pack(x)


def _run(tiny, s: Strategy) -> torch.Tensor:
    with adapter_for(tiny.transformer).install(tiny.transformer, s):
        return denoise(tiny.transformer, make_scheduler("ddim", tiny.scheduler_config), labels_condition([1, 2], tiny.null_class, CPU), 0, STEPS, 1.0, s)


def test_a_compute_is_packed_only_where_the_next_step_may_reuse_it_and_outputs_do_not_change(tiny, registry):
    lean, every = _full_dqar(registry), _full_dqar(registry, skips=False)
    packs_lean, packs_every = CountingPacks(lean.quantizer), CountingPacks(every.quantizer)
    out_lean, out_every = _run(tiny, lean), _run(tiny, every)
    assert torch.equal(out_lean, out_every)
    assert lean.stats.reused == every.stats.reused > 0
    blocks = len(tiny.transformer.transformer_blocks)
    mask = schedule_mask(lean.scheduler, STEPS, blocks)
    reuse = lean.stats.reuse_map
    computes = [[not reuse[t][b] for b in range(blocks)] for t in range(STEPS)]
    expected = sum(computes[t][b] and bool(mask[t + 1, b]) for t in range(STEPS - 1) for b in range(blocks))
    assert packs_lean.calls == expected < packs_every.calls == sum(map(sum, computes))


def test_a_hooked_block_costs_few_python_frames(tiny, registry):
    """Python functions of the package entered per hooked self-attention call (computing or
    reusing), the model's own code aside: the strategy's route, the cache and the quantizer."""
    s = _full_dqar(registry)
    _run(tiny, s)  # warm: nothing first-call-only is counted
    calls: list[str] = []
    depth, hooked = [0], [0]

    def profile(frame, event, arg):
        code = frame.f_code
        if event == "call" and code.co_name == "attention" and code.co_filename.endswith("strategy.py"):
            depth[0] += 1
            hooked[0] += 1
        if event == "call" and depth[0] and code.co_filename.startswith(PACKAGE):
            calls.append(code.co_name)
        if event == "return" and code.co_name == "attention" and code.co_filename.endswith("strategy.py"):
            depth[0] -= 1

    sys.setprofile(profile)
    try:
        _run(tiny, s)
    finally:
        sys.setprofile(None)
    assert hooked[0] == STEPS * len(tiny.transformer.transformer_blocks)
    per_block = len(calls) / hooked[0]
    assert per_block <= 4, (per_block, sorted(set(calls)))  # measured 3.0 (9.8 before: pack helpers, grouping, scales, slot put)
