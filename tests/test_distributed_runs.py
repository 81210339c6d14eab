"""`dqar-bench run` as two gloo ranks on the CPU, against the same suite run by one process.

Tolerances: every rank makes its share of the sampling calls with the seeds one process
uses, on the same CPU, so outputs, FLOPs, reuse counts, PSNR and class accuracy are equal
exactly; FID features come from extractor batches of other sizes, so FID and IS are held to
1e-6 relative and KID (a cubic kernel of the features) to 1e-5 (here they came out equal).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import torch

from dqar_bench.core.errors import DqarError
from dqar_bench.core.world import Echo, World
from dqar_bench.measure.case_record import CaseRecord
from dqar_bench.measure.records import RunDir, read_records
from dqar_bench.measure.rounds import RoundLog
from dqar_bench.runs.distributed.runs import check_devices, decide, my_cases
from tests.rank_launch import ROOT, spawn_ranks, wait_ranks
from tests.test_distributed import ENV_VARS

RANK = Path(__file__).resolve().parent / "distributed_run.py"

SUITE = """\
name: two-ranks
model: digits-dit
sampler: {name: ddim, steps: 4, guidance_scale: 1.5}
class_labels: [0, 3, 5, 8]
seeds: [0, 1, 2]
device: cpu
threads: 1
timing: {warmup: 0, repeats: 1, order: ORDER}
quality: {fid: 18, reference: digits-heldout, feature_extractor: dqar-digits-classifier, classifier: digits}
baseline: baseline
cases:
  - name: baseline
  - name: iv
    gate: {name: interval, every: 2}
    cache: attention-output
  - name: q
    gate: {name: interval, every: 2}
    cache: attention-output
    quantizer: int8
"""
EXACT = ("status", "case_key", "flops", "reused", "evaluations", "reuse_ratio", "reuse_map", "reuse_map_calls", "cache_bytes", "quality", "class_accuracy")


def suite_file(tmp: Path, order: str) -> Path:
    path = tmp / f"{order}.yaml"
    path.write_text(SUITE.replace("ORDER", order))
    return path


def ranks(argv: list[str], world_size: int = 2, **env: str) -> tuple[list[int], list[str], float]:
    """`dqar-bench ARGV` as `world_size` ranks with torchrun's environment (no torchrun: seconds saved)."""
    started = time.perf_counter()
    codes, outputs = wait_ranks(spawn_ranks([RANK, *argv], world_size, **env))
    return codes, [err for _, err in outputs], time.perf_counter() - started


def records(run: Path) -> dict[str, CaseRecord]:
    return {r.case: r for r in read_records(run / "records.jsonl")}


def assert_same_quality(one: dict[str, CaseRecord], other: dict[str, CaseRecord], exact: tuple[str, ...] = EXACT) -> None:
    assert set(one) == set(other) == {"baseline", "iv", "q"}
    for name, mine in one.items():
        theirs = other[name]
        for key in exact:
            assert getattr(theirs, key) == getattr(mine, key), (name, key)
        for key in ("fid", "isc_mean", "isc_std"):
            assert theirs.fidelity[key] == pytest.approx(mine.fidelity[key], rel=1e-6), (name, key)
        for key in ("kid_mean", "kid_std"):
            assert theirs.fidelity[key] == pytest.approx(mine.fidelity[key], rel=1e-5), (name, key)
        assert theirs.fidelity["n"] == 18


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The suite run by one process (interleaved and blocked timing give the same quality)."""
    from dqar_bench.config.suite import load_suite
    from dqar_bench.core.plugins import get_registry
    from dqar_bench.runs.runner import run_suite

    tmp = tmp_path_factory.mktemp("one")
    started = time.perf_counter()
    run = run_suite(load_suite(suite_file(tmp, "interleaved"), get_registry()), tmp / "run", progress=lambda line: None)
    print(f"one process: {time.perf_counter() - started:.1f} s")
    found = records(run.path)
    assert all(r.status == "ok" for r in found.values())
    assert found["iv"].reused > 0 and found["baseline"].fidelity["fid"] > 0
    return found


@pytest.mark.distributed
def test_two_ranks_under_nproc_measure_what_one_process_measures(tmp_path, one_process, monkeypatch, capfd):
    from dqar_bench.cli import main

    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the ranks import this checkout
    started = time.perf_counter()
    assert main(["run", str(suite_file(tmp_path, "interleaved")), "-o", str(tmp_path / "run"), "--nproc", "2"]) == 0
    print(f"two ranks (--nproc 2): {time.perf_counter() - started:.1f} s")
    said = capfd.readouterr()
    assert said.out.count("results: ") == 1  # rank 0 speaks for the run
    assert "OMP_NUM_THREADS" not in said.err and "*****" not in said.err  # torchrun's banner: the threads are given
    two = records(tmp_path / "run")
    assert_same_quality(one_process, two)
    for name, record in two.items():
        assert (record.rank, record.world_size) == (0, 2)
        shares = [(r["rank"], r["seeds"], r["fid_images"]) for r in record.ranks]
        assert shares == [(0, [0, 2], 10), (1, [1], 8)]  # seed i and FID call k to rank i mod 2 (calls of 4 images; the fifth, 2, on rank 0)
    # each rank timed every case against the baseline it timed itself, in the same rounds
    lines = RoundLog(tmp_path / "run" / "rounds.jsonl").entries()
    assert sorted((e["rank"], sorted(e["cases"])) for e in lines) == [(0, ["baseline", "iv", "q"]), (1, ["baseline", "iv", "q"])]
    base = {r["rank"]: r for r in two["baseline"].ranks}
    for name in ("iv", "q"):
        for part in two[name].ranks:
            assert part["baseline_round_s"] == base[part["rank"]]["round_s"] and part["speedup"] > 0
        assert two[name].round_s == two[name].ranks[0]["round_s"]  # the record's own figures are rank 0's


@pytest.mark.distributed
def test_sharded_cases_give_the_quality_columns_of_an_unsharded_run(tmp_path, one_process):
    codes, errors, wall = ranks(["run", str(suite_file(tmp_path, "interleaved")), "-o", str(tmp_path / "run"), "--shard", "cases"])
    print(f"two ranks, --shard cases: {wall:.1f} s")
    assert codes == [0, 0], errors
    sharded = records(tmp_path / "run")
    assert_same_quality(one_process, sharded)
    assert {name: r.rank for name, r in sharded.items()} == {"baseline": 0, "iv": 0, "q": 1}
    # q's speedup pairs with the baseline rank 1 timed beside it, not rank 0's
    lines = {e["round"]: e for e in RoundLog(tmp_path / "run" / "rounds.jsonl").entries()}
    (mine,) = sharded["q"].round_ids
    assert lines[mine]["rank"] == 1 and set(lines[mine]["cases"]) == {"baseline", "q"}
    assert sharded["q"].baseline_round_s == [sum(lines[mine]["cases"]["baseline"]["calls_s"])]
    assert (tmp_path / "run" / "outputs").is_dir() and len(list((tmp_path / "run" / "outputs").iterdir())) == 3
    run = RunDir(tmp_path / "run")  # rank 1's records name its own environment, which rank 0 kept
    assert all(run.environment_of(r)["torch_threads"] for r in sharded.values())


@pytest.mark.distributed
def test_a_dead_rank_leaves_a_run_that_resume_finishes_with_another_number_of_ranks(tmp_path, one_process, capsys):
    from dqar_bench.cli import main

    suite, out = suite_file(tmp_path, "blocked"), tmp_path / "run"
    codes, errors, wall = ranks(["run", str(suite), "-o", str(out), "--rank-timeout", "60"], DQAR_TEST_DIE="q")
    print(f"two ranks, rank 1 killed in q: {wall:.1f} s")
    assert codes == [1, 3], errors
    line = errors[0].strip().splitlines()[-1]
    assert line.startswith("error: rank 1 ") and "case 'q' prepared" in line, errors[0]
    kept = records(out)
    assert {name: r.status for name, r in kept.items()} == {"baseline": "ok", "iv": "ok"}  # recorded as they finished
    assert main(["run", str(suite), "--resume", str(out)]) == 0  # one process finishes what two began
    said = capsys.readouterr().out
    assert "baseline: already recorded, skipped" in said and "iv: already recorded, skipped" in said
    finished = records(out)
    assert_same_quality(one_process, finished, tuple(k for k in EXACT if k != "case_key"))  # the key holds the timing order
    assert finished["q"].world_size == 1 and finished["iv"].world_size == 2


@pytest.mark.distributed
def test_a_hung_rank_stops_the_run_with_one_line_naming_it(tmp_path):
    suite = tmp_path / "hang.yaml"  # no FID: rank 0 reaches the exchange of case iv at once
    suite.write_text(SUITE.replace("ORDER", "blocked").split("quality:")[0] + "baseline: baseline\ncases:\n  - name: baseline\n  - name: iv\n    gate: {name: interval, every: 2}\n    cache: attention-output\n")
    argv = ["run", str(suite), "-o", str(tmp_path / "run"), "--rank-timeout", "8"]  # room for the ranks to start apart on a busy machine
    procs = spawn_ranks([RANK, *argv], stdout=subprocess.DEVNULL, DQAR_TEST_HANG="iv")  # rank 1 never ends: only rank 0 is awaited
    try:
        _, err = procs[0].communicate(timeout=300)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert procs[0].returncode == 1, err
    assert err.strip().splitlines()[-1] == "error: rank 1 did not reach 'case 'iv' prepared' within 8 s (it hung or died; see its own output)"
    assert {name: r.status for name, r in records(tmp_path / "run").items()} == {"baseline": "ok"}


# --- one process: the pieces ---------------------------------------------------------------


class Pretend(World):
    """A world whose other ranks are made up: what rank 0 hears from them is given."""

    def __init__(self, others: list, rank: int = 0) -> None:
        super().__init__(rank=rank, world_size=1 + len(others), backend="gloo")
        self.others = others

    def all_gather(self, obj, what="all_gather"):
        return [obj, *self.others] if self.rank == 0 else [*self.others, obj]

    def broadcast(self, obj=None, what="broadcast"):
        return obj if self.is_main else self.others[0]


def test_mixed_device_types_are_refused_in_one_line():
    check_devices(Pretend(["cpu"]), torch.device("cpu"))
    with pytest.raises(DqarError, match=r"mixed device types in one timed run \(rank 0: cpu, rank 1: cuda \(NVIDIA H200\)\)") as found:
        check_devices(Pretend(["cuda (NVIDIA H200)"]), torch.device("cpu"))
    assert not isinstance(found.value, Echo) and "\n" not in str(found.value)
    with pytest.raises(Echo):  # the other ranks stop too, without printing it again
        check_devices(Pretend(["cuda (NVIDIA H200)"], rank=1), torch.device("cpu"))


def test_rank_zero_decides_and_the_others_repeat_its_error():
    assert decide(World(), lambda: 5, "x") == 5
    with pytest.raises(Echo, match="no such directory") as found:
        decide(Pretend([("error", "no such directory", 2)], rank=1), lambda: 1 / 0, "the run directory")
    assert found.value.exit_code == 2


def test_an_echoed_error_is_printed_by_rank_zero_alone(monkeypatch, capsys):
    from dqar_bench import cli

    def refuse(args):
        raise Echo("a line rank 0 prints", 2)

    monkeypatch.setitem(cli.COMMANDS, "validate", refuse)
    assert cli.main(["validate", "x.yaml"]) == 2
    assert capsys.readouterr().err == ""


def test_sharded_cases_go_round_robin_and_every_rank_keeps_the_baselines():
    names = ["baseline", "baseline-compile", "a", "b", "c"]
    assert my_cases(names, {"baseline", "baseline-compile"}, World(rank=1, world_size=2, backend="gloo"), shard=True) == ["baseline", "baseline-compile", "b"]
    assert my_cases(names, {"baseline"}, World(rank=1, world_size=2, backend="gloo"), shard=False) == names


def test_trace_refuses_to_run_as_one_of_several_ranks(monkeypatch, capsys, tmp_path):
    from dqar_bench.cli import main

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["trace", str(tmp_path / "s.yaml"), "-o", str(tmp_path / "t.jsonl")]) == 2
    assert "dqar-bench trace does not split its work across ranks (this is rank 1 of 2)" in capsys.readouterr().err


def test_the_fid50k_suite_validates_on_a_cpu_and_records_each_case_as_it_finishes():
    from dqar_bench.config.suite import load_suite

    suite = load_suite(ROOT / "suites" / "fid50k-dit-xl-256.yaml")
    assert (suite.quality.fid, suite.steps, suite.guidance_scale, suite.timing_order) == (50000, 50, 1.5, "blocked")
    assert [c.name for c in suite.cases] == ["baseline", "full_dqar"]


def test_a_rank_timeout_must_be_positive(tmp_path, capsys):
    from dqar_bench.cli import main

    assert main(["run", str(tmp_path / "s.yaml"), "--rank-timeout", "0"]) == 2
    assert capsys.readouterr().err == "error: --rank-timeout must be a positive number of seconds up to 604800 (a week), got 0\n"
