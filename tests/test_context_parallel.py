"""Context-parallel cases: diffusers' Ulysses attention over two gloo ranks against one process.

The two ranks are two `python tests/context_parallel_worker.py` processes with torchrun's
env:// variables. FLUX-tiny's sequence is split in two inside the blocks; the strategy reads
its entropy and residual change through `ShardedSequence`, so each rank's gate must read what
one process reads (reductions add the same numbers in another order: 1e-5 nats, 1e-5
relative) and take the same decisions at every step, and the outputs must match one process
to float32 rounding through a split attention (1e-4 absolute on latents of magnitude ~2).
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dqar_bench.cli import main
from dqar_bench.core.errors import SuiteError
from dqar_bench.core.world import World
from dqar_bench.measure.records import RunDir
from dqar_bench.strategy.context_parallel import Parallel, ShardedSequence, context_parallel, parse_parallel, refusal
from tests import context_parallel_common as common
from tests.rank_launch import spawn_ranks, wait_ranks

WORKER = Path(__file__).resolve().parent / "context_parallel_worker.py"
ROOT = WORKER.parent.parent
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Both ranks' outputs and findings (started at once, while this process computes the reference)."""
    out = tmp_path_factory.mktemp("cp")
    codes, outputs = wait_ranks(spawn_ranks([WORKER, out], paths=[WORKER.parent], stderr=subprocess.STDOUT))
    ranks = []
    for rank, code in enumerate(codes):
        found = json.loads((out / f"cp-rank{rank}.json").read_text()) if (out / f"cp-rank{rank}.json").exists() else {}
        assert code == 0 and "error" not in found, found.get("traceback") or outputs[rank][0][-3000:]
        ranks.append((found, load_file(str(out / f"cp-rank{rank}.safetensors"))))
    return ranks


@pytest.fixture(scope="module")
def one_process():
    return {name: common.run_case(World(), None, strategy) for name, strategy in common.cases().items()}


def _close(a: dict, b: dict, tol: float) -> None:
    assert a["step"] == b["step"] and set(a) == set(b)
    for key in a:
        x, y = (a[key], b[key]) if isinstance(a[key], list) else ([a[key]], [b[key]])
        assert all(math.isclose(u, v, rel_tol=tol, abs_tol=tol) for u, v in zip(x, y)), (key, a, b)


@pytest.mark.distributed
@pytest.mark.parametrize("case", ["dqar", "first-block-cache"])
def test_two_ranks_read_the_whole_sequence_and_decide_as_one_process(two_ranks, one_process, case):
    reference = one_process[case]
    assert reference["reuse_map"] != [[0] * 4] * common.STEPS and any(0 in row for row in reference["reuse_map"][1:])  # some reuse, not all
    for found, _ in two_ranks:
        assert found[case]["reuse_map"] == reference["reuse_map"]
        assert len(found[case]["signals"]) == len(reference["signals"])
        for theirs, ours in zip(found[case]["signals"], reference["signals"]):
            _close(theirs, ours, 1e-5)


@pytest.mark.distributed
@pytest.mark.parametrize("case", ["baseline", "dqar", "first-block-cache"])
def test_a_split_call_counts_the_flops_of_all_its_ranks(two_ranks, one_process, case):
    """Attention is cut exactly in two, so its FLOPs add up to one process's; what every rank
    repeats (embedders, modulation) is counted once per rank, so the whole is a little more."""
    (first, _), (second, _) = two_ranks
    ours, theirs = one_process[case]["flops"], first[case]["flops"]
    assert theirs == second[case]["flops"]
    attention = next(op for op in ours if "attention" in op)
    assert theirs[attention] == ours[attention] > 0
    assert ours["total"] < theirs["total"] < 1.2 * ours["total"]


@pytest.mark.distributed
@pytest.mark.parametrize("case", ["baseline", "dqar", "first-block-cache"])
def test_two_ranks_give_one_process_outputs(two_ranks, one_process, case):
    (_, first), (_, second) = two_ranks
    assert torch.equal(first[case], second[case])  # the gathered output is the same batch on every rank
    assert torch.allclose(first[case], one_process[case]["latents"], atol=1e-4, rtol=0)


@pytest.mark.distributed
def test_leaving_context_parallelism_gives_the_model_back(two_ranks, one_process):
    """After every context-parallel case, each rank ran the untouched model once more without it: bit for bit one process's."""
    for _, tensors in two_ranks:
        assert torch.equal(tensors["after"], one_process["baseline"]["latents"])


@pytest.mark.distributed
def test_decisions_that_would_differ_are_rank_zeros_on_both(two_ranks):
    assert [found["agreed"] for found, _ in two_ranks] == [[True, False, True]] * 2
    # a gate that answers by rank: both ranks run rank 0's answer (blocks 0 and 2 from step 2) and finish the call alike
    rank0 = [[0] * 4] * 2 + [[1, 0, 1, 0]] * (common.STEPS - 2)
    (first, one), (second, two) = two_ranks
    assert first["by-rank"] == second["by-rank"] == rank0
    assert torch.equal(one["by-rank"], two["by-rank"])
    alone = common.run_case(World(), None, common.rank_gate_strategy(0))
    assert torch.allclose(one["by-rank"], alone["latents"], atol=1e-4, rtol=0)


@pytest.mark.slow
def test_sharded_scope_on_one_rank_reads_what_the_plain_scope_reads(one_process):
    """The sharding arithmetic (joint text+image positions on FLUX's single-stream blocks, softmax
    statistics, residual sums) on a world of one, through the real model: the plain signals, to 1e-5."""
    from dqar_bench.model.conditioning import synthetic_captions
    from dqar_bench.model.models import load_model
    from dqar_bench.model.sampling import denoise, make_scheduler
    from dqar_bench.strategy.adapter import adapter_for
    from dqar_bench.strategy.context_parallel import _stream_tokens

    for name in ("dqar", "first-block-cache"):
        strategy = common.cases()[name]
        model = load_model(common.MODEL, CPU, torch.float32)
        scope = ShardedSequence(World(), ((("image",), ("text", "image"))))
        hook = model.transformer.register_forward_pre_hook(lambda m, a, k: setattr(scope, "tokens", _stream_tokens("flux", m, a, k)), with_kwargs=True)
        seen = []
        decide = strategy.gate.decide
        strategy.gate.decide = lambda ctx, eligible: (seen.append({"step": ctx.step, **ctx.signals}), decide(ctx, eligible))[1]
        cond = synthetic_captions(common.CAPTIONS, model.text_width, CPU, torch.float32, model.spec.text, model.pooled_width, model.text_length)
        with adapter_for(model.transformer).install(model.transformer, strategy):
            strategy.scope = scope
            latents = denoise(model.transformer, make_scheduler("flow-euler", model.scheduler_config), cond, common.SEED, common.STEPS, common.GUIDANCE, strategy)
        hook.remove()
        assert strategy.stats.reuse_map == one_process[name]["reuse_map"]
        for a, b in zip(seen, one_process[name]["signals"], strict=True):
            _close(a, b, 1e-5)
        assert torch.allclose(latents, one_process[name]["latents"], atol=1e-5, rtol=0)


@pytest.mark.slow
def test_one_rank_runs_the_plain_scope_bit_for_bit(one_process):
    """What the runner wraps every case in, without parallelism: nothing changes, the scope stays the plain one."""
    from dqar_bench.model.models import load_model

    model = load_model(common.MODEL, CPU, torch.float32)
    strategy = common.cases()["dqar"]
    before = strategy.scope
    with context_parallel(model.transformer, None, World(), "flux", strategy):
        assert strategy.scope is before
    again = common.run_case(World(), None, common.cases()["dqar"])
    assert torch.equal(again["latents"], one_process["dqar"]["latents"]) and again["reuse_map"] == one_process["dqar"]["reuse_map"]


# -- what refuses --------------------------------------------------------------------------


def test_parallel_key_is_checked_in_one_line():
    assert parse_parallel(None) is None and parse_parallel({"ulysses": 1}) is None
    assert parse_parallel({"ring": 4}, heads=3) == Parallel("ring", 4)  # ring splits keys, not heads
    for raw, words in [
        ({"ulysess": 2}, "unknown mode 'ulysess'"),
        ({"ulysses": 2, "ring": 2}, "one key"),
        ({"ring": 0}, "whole number of ranks >= 1"),
        ({"ring": "2"}, "whole number"),
        ([2], "mapping"),
    ]:
        with pytest.raises(ValueError, match=words):
            parse_parallel(raw)
    with pytest.raises(ValueError, match="the 24 attention heads over 5 ranks"):
        parse_parallel({"ulysses": 5}, heads=24)


def test_suite_parallel_field(write_suite, registry):
    from dqar_bench.config.suite import load_suite

    head = "name: s\nmodel: flux-tiny\nsampler: {steps: 2}\nprompt_lengths: [4]\ndevice: cpu\n"
    suite = load_suite(write_suite(head + "parallel: {ulysses: 2}\ncases:\n  - name: baseline\n  - {name: fbc, gate: residual-change, cache: block-residual, parallel: {ring: 2}}\n"), registry)
    assert [c.parallel for c in suite.cases] == [Parallel("ulysses", 2), Parallel("ring", 2)]
    dit = "name: s\nmodel: dit-tiny\ndevice: cpu\n"  # its config is known before it is built: 2 heads
    with pytest.raises(SuiteError, match=r"case 'b': field 'parallel': Ulysses splits the 2 attention heads over 4 ranks"):
        load_suite(write_suite(dit + "cases:\n  - {name: baseline}\n  - {name: b, parallel: {ulysses: 4}}\n"), registry)
    with pytest.raises(SuiteError, match=r"suite.yaml: field 'parallel': unknown mode 'rings'"):
        load_suite(write_suite(head + "parallel: {rings: 2}\ncases:\n  - name: baseline\n"), registry)


def test_refusals_name_the_reason():
    from dqar_bench.model.models import load_model

    flux = load_model("flux-tiny", CPU, torch.float32).transformer
    dit = load_model("dit-tiny", CPU, torch.float32).transformer
    two = World(rank=0, world_size=2, backend="gloo")
    assert "DiTTransformer2DModel has no context-parallel plan" in refusal(Parallel("ulysses", 2), dit, "dit", two)
    assert "needs a run of 2 ranks, this one has 1" in refusal(Parallel("ulysses", 2), flux, "flux", World())
    assert "eager only" in refusal(Parallel("ulysses", 2), flux, "flux", two, "compile")
    four = World(rank=0, world_size=4, backend="gloo")
    assert "Ulysses splits the 2 attention heads of FluxTransformer2DModel over 4 ranks" in refusal(Parallel("ulysses", 4), flux, "flux", four)
    assert refusal(Parallel("ring", 4), flux, "flux", World(world_size=4, backend="nccl", device=torch.device("cuda", 0)), dtype=torch.bfloat16) is None
    assert "log-sum-exp" in refusal(Parallel("ring", 2), flux, "flux", two)
    assert refusal(Parallel("ulysses", 2), flux, "flux", two) is None
    assert refusal(None, dit, "dit", World()) is None


@pytest.mark.slow
def test_a_context_parallel_case_on_one_process_is_recorded_unsupported(write_suite, tmp_path):
    suite = write_suite(
        "name: s\nmodel: flux-tiny\nsampler: {steps: 2}\nprompt_lengths: [4]\nseeds: [0]\ndevice: cpu\n"
        "timing: {warmup: 0, repeats: 1}\ncases:\n  - name: baseline\n"
        "  - {name: fbc, gate: residual-change, cache: block-residual, parallel: {ulysses: 2}}\n"
    )
    out = tmp_path / "run"
    assert main(["run", str(suite), "-o", str(out)]) == 0
    records = RunDir(out).latest()
    assert records["baseline"].status == "ok" and records["baseline"].parallel is None
    assert records["fbc"].status == "unsupported" and records["fbc"].parallel == {"ulysses": 2}
    assert records["fbc"].error.startswith("unsupported with ulysses=2: it needs a run of 2 ranks, this one has 1")
