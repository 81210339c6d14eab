"""The example plugin's own tests: the harness's conformance checks, then its behaviour.

Run from this folder (`python -m pytest`) or from dqar-bench's root, which runs them too.
`plugins=(plugin,)` registers the module in code (`load_registry(extra_plugins=...)`), so
nothing needs installing.
"""

import dqar_bench_every_other as plugin
import torch

from dqar_bench import StepContext
from dqar_bench.testing import assert_conforms, check_part


def test_every_other_passes_the_conformance_checks():
    assert_conforms(plugin.EveryOther, plugins=(plugin,))


def test_the_checks_ran_on_every_tiny_model():
    names = [r.name for r in check_part(plugin.EveryOther, plugins=(plugin,))]
    assert any(n.startswith("dit-tiny:") for n in names) and any(n.startswith("pixart-tiny:") for n in names)


def test_it_reuses_on_odd_steps_from_start():
    gate = plugin.EveryOther(start=3)
    gate.reset(8, 2)
    latents = torch.zeros(1)
    reused = [gate.decide(StepContext(step, 8, 999, latents), [True, False])[0] for step in range(1, 8)]
    assert reused == [False, False, True, False, True, False, True]  # steps 1..7: odd and >= 3
