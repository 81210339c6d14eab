"""Context-parallel cases through `dqar-bench run` as two gloo ranks, beside data-parallel ones.

Two two-rank runs start at once (as torchrun would start them: `distributed_run.py` with
its env:// variables), while this process runs the same flux-tiny cases without `parallel`:
the suite data parallel, and under `--shard cases`. The data-parallel suite lists two models:
flux-tiny, which diffusers can split, and pixart-tiny (a DiT with cross-attention:
`PixArtTransformer2DModel` has no context-parallel plan), whose split cases are refused on
every rank; one suite file for both saves a launch of two processes (their imports take
most of a run here). A case split by Ulysses must take the decisions one
process takes (reuse maps equal exactly) and give its outputs to float32 rounding through a
split attention (1e-4 absolute on latents of magnitude ~2, as `test_context_parallel.py`
measured); PSNR against the baseline then agrees to 1e-3 dB.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dqar_bench.core.world import World
from dqar_bench.measure.flops import per_call as flops_per_call
from dqar_bench.measure.records import RunDir, read_records
from dqar_bench.measure.rounds import RoundLog
from dqar_bench.runs.distributed.shares import Share, standing
from dqar_bench.runs.distributed.teams import team_for
from tests.rank_launch import spawn_ranks, wait_ranks
from tests.test_distributed_runs import RANK

FLUX = """\
name: cp-flux
model: [flux-tiny, pixart-tiny]
sampler: {steps: 6, guidance_scale: 3.5}
prompt_lengths: [4, 6]
seeds: [0, 1]
device: cpu
threads: 1
probe_queries: 5
timing: {warmup: 0, repeats: 1}
baseline: baseline
cases:
  - name: baseline
  - {name: iv, gate: {name: interval, every: 2}, cache: attention-output}
  - {name: iv3, gate: {name: interval, every: 3}, cache: attention-output}
  - name: dqar
    # tau 10 nats passes every block: split ranks probe by projecting their rows (the seed's form) and one process
    # reads its SDPA's own q and k, so their entropies differ; the ranks' entropy seam is checked against a
    # one-process projected probe in test_context_parallel.py. Here: the same decisions from SNR, warmup and streaks.
    gate: {name: dqar, threshold: 10.0, entropy: nats, snr_low: 0.0, snr_high: 1000000000.0, warmup: 1, max_reuse: 1, deep_layer_snr_threshold: 0.0}
    cache: attention-output
    parallel: {ulysses: 2}
  - {name: fbc, gate: {name: residual-change, threshold: 0.5}, cache: block-residual, parallel: {ulysses: 2}}
  - {name: fbc-ring, gate: {name: residual-change, threshold: 0.5}, cache: block-residual, parallel: {ring: 2}}
"""
SPLIT = ("dqar", "fbc")


def records(run: Path) -> dict[str, dict]:
    found = read_records(run / "records.jsonl")
    assert len(found) == len({r.case for r in found}), "a case recorded twice"  # rank 0 alone records, once
    return {r.case: r for r in found}


def outputs(run: Path, case: str) -> dict[int, torch.Tensor]:
    return RunDir(run).load_outputs(case)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The run directories of flux-tiny and pixart-tiny of the two two-rank runs (started together),
    and of the one-process run of the same flux cases without `parallel`."""
    from dqar_bench.config.suite import load_suite
    from dqar_bench.core.plugins import get_registry
    from dqar_bench.runs.runner import run_suite

    tmp = tmp_path_factory.mktemp("cp-runs")
    (tmp / "suite.yaml").write_text(FLUX)
    (tmp / "flux.yaml").write_text(FLUX.replace("[flux-tiny, pixart-tiny]", "flux-tiny"))
    started = {
        "data": spawn_ranks([RANK, "run", str(tmp / "suite.yaml"), "-o", str(tmp / "data")]),
        "shard": spawn_ranks([RANK, "run", str(tmp / "flux.yaml"), "-o", str(tmp / "shard"), "--shard", "cases"]),
    }
    try:
        whole = FLUX.replace("[flux-tiny, pixart-tiny]", "flux-tiny").replace(", parallel: {ulysses: 2}", "").replace("    parallel: {ulysses: 2}\n", "")
        (tmp / "one.yaml").write_text(whole.split("  - {name: fbc-ring")[0])
        run_suite(load_suite(tmp / "one.yaml", get_registry()), tmp / "one", progress=lambda line: None)
    finally:
        finished = {name: wait_ranks(procs) for name, procs in started.items()}
    for name, (codes, errors) in finished.items():
        assert codes == [0, 0], (name, errors)
    return {
        "one": tmp / "one", "data": tmp / "data" / "flux-tiny", "shard": tmp / "shard", "pixart": tmp / "data" / "pixart-tiny",
    }


@pytest.mark.distributed
@pytest.mark.parametrize("mode", ["data", "shard"])
def test_a_split_case_runs_every_seed_on_every_rank_and_measures_what_one_process_measures(runs, mode):
    one, two = records(runs["one"]), records(runs[mode])
    assert all(one[name].status == "ok" for name in one)
    for name in SPLIT:
        ours, theirs = two[name], one[name]
        assert ours.status == "ok" and ours.parallel == {"ulysses": 2} and (ours.rank, ours.world_size) == (0, 2)
        assert ours.reuse_map == theirs.reuse_map and any(0 in row for row in ours.reuse_map[1:])  # same decisions; some reuse, not all
        assert (ours.reused, ours.evaluations, ours.reuse_map_calls) == (theirs.reused, theirs.evaluations, 2)  # rank 0's counts, not both ranks'
        assert [(r["rank"], r["seeds"]) for r in ours.ranks] == [(0, [0, 1]), (1, [0, 1])]  # the same seeds on both: no seed split
        split, alone = outputs(runs[mode], name), outputs(runs["one"], name)
        assert set(split) == {0, 1} and all(torch.allclose(split[s], alone[s], atol=1e-4, rtol=0) for s in alone)
        assert ours.quality["psnr_db"] == pytest.approx(theirs.quality["psnr_db"], abs=1e-3)
        # the whole call's FLOPs: attention splits exactly, what each rank repeats (embedders, modulation) counts per rank
        assert flops_per_call(theirs.flops) < flops_per_call(ours.flops) < 1.2 * flops_per_call(theirs.flops)
        assert "each call split over 2 ranks (ulysses)" in ours.parallel_note and "one device per rank" in ours.parallel_note
    ring = two["fbc-ring"]
    assert ring.status == "unsupported" and ring.error.startswith("unsupported with ring=2: ring attention needs an attention backend that returns the log-sum-exp")
    table = (runs[mode] / "table.md").read_text()
    assert "| fbc | residual-change(threshold=0.5) / block-residual / none / all [ulysses=2] |" in table and "context parallelism" in table


@pytest.mark.distributed
def test_data_parallel_cases_beside_split_ones_keep_their_seed_split_and_one_round_order(runs):
    two, one = records(runs["data"]), records(runs["one"])
    assert [(r["rank"], r["seeds"]) for r in two["iv"].ranks] == [(0, [0]), (1, [1])]
    assert two["iv"].reuse_map == one["iv"].reuse_map
    lines = RoundLog(runs["data"] / "rounds.jsonl").entries()
    assert sorted(e["rank"] for e in lines) == [0, 1] and lines[0]["order"] == lines[1]["order"]  # both ranks reach a split case at once
    assert set(lines[0]["order"]) == {"baseline", "iv", "iv3", "dqar", "fbc"}
    assert two["fbc"].round_s and two["fbc"].ranks and "round_s" not in two["fbc"].ranks[0]  # rank 0's time stands for the call


@pytest.mark.distributed
def test_shard_cases_does_not_spread_split_cases(runs):
    sharded = records(runs["shard"])
    assert {name: r.rank for name, r in sharded.items()} == {"baseline": 0, "iv": 0, "iv3": 1, "dqar": 0, "fbc": 0, "fbc-ring": 0}
    lines = RoundLog(runs["shard"] / "rounds.jsonl").entries()
    iv3 = [e for e in lines if "iv3" in e["cases"]]
    assert [e["rank"] for e in iv3] == [1]  # the other cases are still spread: iv3 ran on rank 1
    for name in SPLIT:
        assert sharded[name].timing_order == "blocked" and "under --shard cases" in sharded[name].timing_note
        assert sorted(e["rank"] for e in lines if name in e["cases"]) == [0, 1]  # every rank timed it, together


@pytest.mark.distributed
def test_a_model_without_a_context_parallel_plan_is_refused_on_every_rank_and_the_run_goes_on(runs):
    pixart = records(runs["pixart"])
    assert {name: r.status for name, r in pixart.items()} == {
        "baseline": "ok", "iv": "ok", "iv3": "ok", "dqar": "unsupported", "fbc": "unsupported", "fbc-ring": "unsupported",
    }
    for name in ("dqar", "fbc"):
        assert pixart[name].rank == 0 and pixart[name].error == (
            "unsupported with ulysses=2: PixArtTransformer2DModel has no context-parallel plan (`_cp_plan`) in diffusers; "
            "context parallelism needs one (FLUX, Wan, LTX, Qwen-Image have it)"
        )
    assert "PixArtTransformer2DModel has no context-parallel plan" in pixart["fbc-ring"].error
    assert [(r["rank"], r["seeds"]) for r in pixart["iv"].ranks] == [(0, [0]), (1, [1])]
    assert "| dqar | dqar(" in (runs["pixart"] / "table.md").read_text()


# --- one process: the pieces ---------------------------------------------------------------


def test_a_split_case_belongs_to_the_world_and_makes_every_call():
    from dqar_bench.strategy.context_parallel import Parallel

    world, alone = World(rank=1, world_size=2, backend="gloo"), World(rank=0, world_size=1)
    split = team_for(Parallel("ulysses", 2), world, alone)  # under --shard cases the run's team is this rank alone
    assert split.ranks is world and split.spanning and split.calls.shard([0, 1, 2]) == [0, 1, 2]
    assert (split.calls.rank, split.calls.world_size) == (0, 1)
    plain = team_for(None, world, world)
    assert plain.ranks is plain.calls is world and not plain.spanning and plain.calls.shard([0, 1, 2]) == [1]
    assert not team_for(Parallel("ulysses", 2), World(), World()).spanning  # one process: refused, nothing to span


def test_rank_zero_stands_for_a_split_call_only_if_every_rank_holds_its_outputs():
    same = [Share(r, "cpu", outputs={0: torch.ones(2)}, reuse={"reused": 3}) for r in range(2)]
    assert standing(same, spanning=True) == same[:1] and standing(same, spanning=False) == same
    other = [same[0], Share(1, "cpu", outputs={0: torch.ones(2) + 1e-7})]
    with pytest.raises(RuntimeError, match="rank 1's outputs of seed 0 differ from rank 0's"):
        standing(other, spanning=True)


def test_the_note_says_what_a_split_case_is_timed_against():
    from dqar_bench.runs.distributed.teams import parallel_note
    from dqar_bench.strategy.context_parallel import Parallel

    two = Parallel("ulysses", 2)
    assert "on one device per rank" in parallel_note(two, "baseline", None)
    assert "split over the same ranks alike: the strategy's gain under context parallelism" in parallel_note(two, "baseline", two)
    assert "split as ring=2: the strategy's gain and that of the other split together" in parallel_note(two, "baseline", Parallel("ring", 2))
