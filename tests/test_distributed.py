"""Distributed foundations: two gloo ranks against one process, and a World of one.

Two ranks are two `python tests/distributed_worker.py` processes with torchrun's env://
variables, on a free port. Tolerances: reductions over ranks add the same numbers in
another order, so float32 signals agree to 1e-6 relative (SNR) and 1e-5 nats (entropy);
features of the same images come from extractor batches of other sizes and differ in the
last float32 bit (5e-6 of 15 here), so FID and IS agree to 1e-6 relative and KID, a cubic
kernel of the features, to 1e-5.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dqar_bench.core.errors import DqarError
from dqar_bench.core.world import RankError, World, init_world
from dqar_bench.measure.instruments import fid_batches, fid_image_indices, generate_images
from dqar_bench.runs.distributed.fid import gather_features
from dqar_bench.runs.distributed.launch import launch, torchrun_args, without_nproc
from dqar_bench.strategy import signals
from dqar_bench.strategy.rank_signals import global_snr, head_sharded_entropy, key_sharded_entropy, main_decides, sampled_queries
from tests import distributed_worker as worker
from tests.distributed_common import FID_BATCH, FID_COUNT, FID_EXTRACTOR, FID_METRICS, FID_REFERENCE, fid_sampler
from tests.rank_launch import spawn_ranks, wait_ranks

WORKER = Path(worker.__file__)
ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def start_ranks(scenario: str, out: Path, world_size: int = 2, timeout: float = 300) -> tuple[list[int], list[str], float]:
    """Run the worker as `world_size` ranks (torchrun's environment, no torchrun); exit codes, outputs, wall seconds."""
    started = time.perf_counter()
    procs = spawn_ranks([WORKER, scenario, out], world_size, [WORKER.parent], stderr=subprocess.STDOUT)
    codes, outputs = wait_ranks(procs, timeout)
    return codes, [out for out, _ in outputs], time.perf_counter() - started


def phase(out: Path, name: str, rank: int):
    found = json.loads((out / f"{name}-rank{rank}.json").read_text())
    assert "error" not in found, found.get("traceback", found)
    return found["ok"]


@pytest.fixture(scope="module")
def fid_images():
    """The one-process FID images of the real reference model, and its one-process scores."""
    from dqar_bench.measure.fidelity import Fidelity

    call, kit, classes = fid_sampler()
    images = generate_images(call, FID_COUNT, FID_BATCH, classes, kit)
    shares = [generate_images(call, FID_COUNT, FID_BATCH, classes, kit, rank, 2) for rank in range(2)]
    score = Fidelity(FID_REFERENCE, FID_EXTRACTOR, metrics=FID_METRICS).score(images)
    return images, shares, score


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, fid_images):
    out = tmp_path_factory.mktemp("ranks")
    save_file({"images": fid_images[0]}, str(out / "fid-images.safetensors"))
    codes, outputs, wall = start_ranks("equal", out)
    print(f"two gloo ranks, equalities and a hang: {wall:.1f} s wall")
    assert codes == [0, 0], outputs
    return out


# --- two ranks ----------------------------------------------------------------------------


@pytest.mark.distributed
def test_ranks_join_one_gloo_world(two_ranks):
    for rank in range(2):
        assert json.loads((two_ranks / f"world-rank{rank}.json").read_text()) == {"rank": rank, "size": 2, "backend": "gloo", "device": "cpu"}


@pytest.mark.distributed
def test_snr_over_a_split_batch_equals_the_unsplit_one(two_ranks):
    latents, x0 = worker.latents_and_x0()
    whole = signals.latent_snr(latents, x0).item()
    # the mean of the two ranks' own SNRs is not the batch's: the test would catch a lazy reduction
    local = [signals.latent_snr(latents[s], x0[s]).item() for s in (slice(0, 3), slice(3, 5))]
    assert abs(sum(local) / 2 - whole) > 1e-3 * whole
    for rank in range(2):
        assert phase(two_ranks, "signals", rank)["snr"] == pytest.approx(whole, rel=1e-6)


@pytest.mark.distributed
def test_entropy_over_sharded_keys_and_heads_equals_the_unsharded_one(two_ranks):
    q, k = worker.attention_inputs()
    whole = signals.attention_entropy(q, k, 16).item()
    scores = q @ k.transpose(-1, -2) * 8**-0.5
    per_block = signals.scores_entropy(torch.stack([scores, torch.full_like(scores, float("nan"))]))
    # one rank's keys alone give another entropy: the reduction is what makes them equal
    assert abs(signals.attention_entropy(q, k[:, :, : worker.SPLIT], 16).item() - whole) > 1e-2
    for rank in range(2):
        found = phase(two_ranks, "signals", rank)
        assert found["entropy"] == pytest.approx(whole, abs=1e-5)
        for name in ("block_entropies", "head_entropies"):
            assert found[name][0] == pytest.approx(per_block[0].item(), abs=1e-5)
            assert found[name][1] != found[name][1]  # NaN: a block never recorded stays unknown


@pytest.mark.distributed
def test_rank_zero_decides_for_every_rank(two_ranks):
    # rank r proposed [r == 0, r == 1, True]; both run rank 0's
    assert [phase(two_ranks, "signals", r)["decisions"] for r in range(2)] == [[True, False, True]] * 2


@pytest.mark.distributed
def test_records_gather_on_rank_zero_and_decisions_broadcast(two_ranks):
    zero, one = (phase(two_ranks, "collectives", r) for r in range(2))
    assert zero["gathered"] == [{"case": "baseline", "rank": 0}, {"case": "baseline", "rank": 1}]
    assert one["gathered"] is None
    assert zero["told"] == one["told"] == {"skip": ["a", "b"]}
    assert zero["disagreement"] == one["disagreement"]
    assert "rank 0: cpu; rank 1: cuda:1" in zero["disagreement"] and "\n" not in zero["disagreement"]
    assert (zero["shard"], one["shard"]) == ([0, 2, 4, 6], [1, 3, 5])


@pytest.mark.slow
def test_fid_images_split_by_sampling_call_are_the_one_process_images(fid_images):
    images, shares, _ = fid_images
    assert fid_batches(FID_COUNT, FID_BATCH, 0, 2) == [0, 2] and fid_batches(FID_COUNT, FID_BATCH, 1, 2) == [1]
    for rank, share in enumerate(shares):
        indices = fid_image_indices(FID_COUNT, FID_BATCH, rank, 2)
        assert torch.equal(share, images[indices])
    assert sorted(fid_image_indices(FID_COUNT, FID_BATCH, 0, 2) + fid_image_indices(FID_COUNT, FID_BATCH, 1, 2)) == list(range(FID_COUNT))


@pytest.mark.distributed
def test_fid_of_features_gathered_from_two_ranks_equals_one_process(two_ranks, fid_images):
    one_process = fid_images[2]
    found = phase(two_ranks, "fid", 0)
    assert (found["images"], phase(two_ranks, "fid", 1)["images"]) == (15, 10)
    two = found["score"]
    assert two["n"] == one_process["n"] == FID_COUNT
    for key in ("fid", "isc_mean", "isc_std"):
        assert two[key] == pytest.approx(one_process[key], rel=1e-6), key
    for key in ("kid_mean", "kid_std"):
        assert two[key] == pytest.approx(one_process[key], rel=1e-5), key


@pytest.mark.distributed
def test_a_hung_rank_is_named_when_the_barrier_times_out(two_ranks):
    message = phase(two_ranks, "hang", 0)
    assert message == "rank 1 did not reach 'records of case 3' within 1.5 s (it hung or died; see its own output)"


@pytest.mark.distributed
def test_a_dead_rank_is_one_line_on_the_survivor_not_a_hang(tmp_path):
    codes, outputs, wall = start_ranks("die", tmp_path)
    print(f"two gloo ranks, one dies: {wall:.1f} s wall")
    assert codes == [0, 3], outputs
    gather, reduce = phase(tmp_path, "die", 0)
    # whether the barrier meets the closed connection or the missing arrival depends on timing; both name rank 1
    assert re.match(r"rank 1 (died: 'gather records'|did not reach 'gather records')", gather), gather
    assert reduce.startswith("rank 1 died: 'SNR sums' cannot complete") and "\n" not in reduce + gather


# --- one process: a World of one, no process group ----------------------------------------


def test_a_plain_process_is_a_world_of_one(monkeypatch):
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    world = init_world("cpu")
    assert (world.rank, world.world_size, world.is_main, world.distributed, world.backend) == (0, 1, True, False, None)
    assert world.gather({"a": 1}) == [{"a": 1}] and world.broadcast(5) == 5 and world.all_gather(3) == [3]
    t = torch.ones(3)
    assert world.all_reduce(t, "max") is t and world.require_same("cpu", "device") == "cpu"
    world.barrier("nothing to wait for")
    assert world.shard([1, 2, 3]) == [1, 2, 3]


def test_signals_of_a_world_of_one_are_the_plain_signals():
    world = World()
    latents, x0 = worker.latents_and_x0()
    assert torch.equal(global_snr(world, latents, x0), signals.latent_snr(latents, x0))
    q, k = worker.attention_inputs()
    scores = (q @ k.transpose(-1, -2) * 8**-0.5).unsqueeze(0)
    assert torch.allclose(key_sharded_entropy(world, scores), signals.scores_entropy(scores), atol=1e-5)
    assert torch.allclose(head_sharded_entropy(world, scores), signals.scores_entropy(scores), atol=1e-5)
    rows = sampled_queries(world, q, 0, q.shape[-2], 16)
    assert torch.equal(rows, q.index_select(-2, signals.query_rows(q.shape[-2], 16, q.device)))
    assert main_decides(world, [True, False]) == [True, False]


def test_sharp_rows_and_masked_keys_give_finite_entropy():
    world = World()
    scores = torch.tensor([[[0.0, 1.0, float("-inf"), 3.0]]])  # a masked key: weight 0, not 0 * -inf
    assert key_sharded_entropy(world, scores).item() == pytest.approx(signals.scores_entropy(scores[..., [0, 1, 3]]).item(), abs=1e-6)
    sharp = torch.tensor([[[0.0, 300.0, 1.0]]])  # exp underflows for all but one key
    assert key_sharded_entropy(world, sharp).item() == pytest.approx(0.0, abs=1e-6)
    assert key_sharded_entropy(world, torch.zeros(1, 2, 0)).isnan().all()  # no keys anywhere: unknown, not 0


def test_gathered_features_come_back_in_the_one_process_order():
    world = World()
    feats = {"feat": torch.arange(6.0).view(3, 2) + 10}
    assert torch.equal(gather_features(world, feats, [2, 0, 1])["feat"], feats["feat"][[1, 2, 0]])
    with pytest.raises(RankError, match="twice or with gaps"):
        gather_features(world, feats, [0, 0, 1])
    with pytest.raises(ValueError, match="rows"):
        gather_features(world, feats, [0, 1])


def test_rank_device_rules(monkeypatch):
    from dqar_bench.core.world import _rank_device

    assert _rank_device("cpu", 1, 2) == torch.device("cpu")
    with pytest.raises(DqarError, match="names one GPU but the run has 2 ranks"):
        _rank_device("cuda:0", 0, 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert _rank_device("cuda", 1, 4) == torch.device("cuda", 1)
    with pytest.raises(DqarError, match="local rank 2 has no GPU of its own"):
        _rank_device("auto", 2, 4)


def test_init_needs_the_rendezvous_address(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(DqarError, match="needs MASTER_ADDR and MASTER_PORT"):
        init_world("cpu")


# --- --nproc ------------------------------------------------------------------------------


def test_torchrun_command_line():
    argv = ["run", "s.yaml", "--nproc", "4", "-o", "out", "--nproc=2"]
    assert without_nproc(argv) == ["run", "s.yaml", "-o", "out"]
    assert torchrun_args(4, ["run", "s.yaml"]) == ["--nproc-per-node", "4", "--standalone", "-m", "dqar_bench", "run", "s.yaml"]


def test_nproc_is_refused_inside_a_rank_and_below_one(monkeypatch):
    with pytest.raises(DqarError, match="at least 1"):
        launch(0, ["validate", "x.yaml"])
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(DqarError, match="already a rank"):
        launch(2, ["validate", "x.yaml"])


def test_nproc_with_a_bad_suite_is_one_line_before_any_rank_starts(tmp_path, capsys):
    from dqar_bench.cli import main

    assert main(["run", str(tmp_path / "missing.yaml"), "--nproc", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read the suite file" in err


def test_nproc_keeps_the_exit_status_of_the_first_rank_that_failed(monkeypatch):
    """torchrun raises ChildFailedError (and would exit 1) whatever the ranks said; launch returns theirs."""
    import torch.distributed.run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    seen = []

    def failing(code):
        def run(config):
            seen.append(config.nproc_per_node)
            raise ChildFailedError("dqar_bench", {1: ProcessFailure(local_rank=1, pid=1, exitcode=code, error_file="/nonexistent")})
        return run

    monkeypatch.setattr(torchrun, "run", failing(2))
    assert launch(2, ["run", "s.yaml"]) == 2 and seen == ["2"]  # torchrun's own parser read --nproc-per-node 2
    monkeypatch.setattr(torchrun, "run", failing(-9))  # killed by a signal
    assert launch(2, ["run", "s.yaml"]) == 128 + 9
    monkeypatch.setattr(torchrun, "run", lambda config: None)
    assert launch(2, ["run", "s.yaml"]) == 0


def test_nproc_gives_the_ranks_their_threads_so_torchrun_prints_no_banner(monkeypatch):
    """torchrun prints its 4-line OMP_NUM_THREADS banner only where the variable is unset."""
    import os

    import torch.distributed.run as torchrun

    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    seen = []
    monkeypatch.setattr(torchrun, "run", lambda config: seen.append(os.environ.get("OMP_NUM_THREADS")))
    assert launch(2, ["run", "s.yaml"], threads=3) == 0
    assert seen == ["3"] and "OMP_NUM_THREADS" not in os.environ  # this process keeps its own environment
    monkeypatch.setenv("OMP_NUM_THREADS", "5")  # the user's choice wins
    assert launch(2, ["run", "s.yaml"], threads=3) == 0
    assert seen == ["3", "5"] and os.environ["OMP_NUM_THREADS"] == "5"
