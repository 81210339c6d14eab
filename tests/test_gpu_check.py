"""The GPU check (benchmarks/gpu_check.sh) holds on the CPU: every step runs at toy sizes and
writes its summary line, a step past its budget is killed and still gets one, and a run past
the total time starts nothing more. The device spends its minutes measuring, not debugging."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def load_check():
    """benchmarks/gpu_check.py as a module (benchmarks/ is no package)."""
    if "gpu_check" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["gpu_check"] = module  # before it runs: its dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules["gpu_check"]


def lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "summary.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """The whole check on the CPU, through the shell wrapper, as a device run would start it."""
    out = tmp_path_factory.mktemp("gpu") / "out"
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(out), "--cpu-dry-run"],
                          capture_output=True, text=True, timeout=1800, check=False)  # past TOTAL_S x 4
    assert done.returncode == 0, done.stdout + done.stderr
    return out


@pytest.mark.slow
def test_every_step_writes_its_line_in_order(dry_run):
    check = load_check()
    entries = lines(dry_run)
    assert [e["step"] for e in entries] == ["setup"] + [s.name for s in check.STEPS]
    assert all(e["status"] == "done" for e in entries), [(e["step"], e["status"]) for e in entries]
    markdown = (dry_run / "summary.md").read_text()
    for step in check.STEPS:
        assert f"**{step.name}**" in markdown
        assert next(e for e in entries if e["step"] == step.name)["goal"] == step.goal
    assert entries[0]["figures"]["dry_run"] is True


@pytest.mark.slow
def test_the_dry_run_measures_what_the_gpu_run_will(dry_run):
    by_step = {e["step"]: e["figures"] for e in lines(dry_run)}
    timer = by_step["timer"]
    assert timer["timer_method"] == "perf_counter" and len(timer["step_ms"]) == 4
    assert timer["timer_ms"] >= timer["target_ms"]  # a sleep never ends early
    assert timer["memory_note"] == "n/a: no GPU"

    eager = by_step["peers-eager"]
    names = {r["case"] for r in eager["cases"]}
    assert names == {"baseline", "harness_overhead", "pab", "fora", "first_block_cache", "taylorseer", "delta_dit", "full_dqar"}
    assert eager["baseline_s_per_image"] > 0 and all(r["status"] == "ok" for r in eager["cases"])
    assert math.isfinite(eager["full_dqar_speedup"]) and eager["best"] not in ("baseline", "harness_overhead")
    graph = by_step["peers-cudagraph"]["cases"]
    assert {r["status"] for r in graph} == {"unsupported"} and "needs CUDA" in graph[0]["error"]
    compiled = by_step["peers-compile"]["cases"]
    assert {r["case"] for r in compiled} == {"baseline", "full_dqar"} and all(r["execution"] == "compile" for r in compiled)

    overhead = by_step["overhead"]
    assert isinstance(overhead["harness_vs_hand"], float)
    assert set(overhead["hooks_by_mode"]) == {"eager"}  # the CPU has no CUDA graphs; compile ran no harness_overhead case
    assert {r["case"] for r in overhead["decision"]} == {"entropy_gate_only", "snr_gate_only", "full_dqar"}
    gates = set(overhead["syncs_per_step"])
    assert "baseline" in gates and "full_dqar (dqar)" in gates and "first_block_cache (residual-change)" in gates
    assert all(v is None for v in overhead["syncs_per_step"].values())  # nothing to count on the CPU

    flux = by_step["flux"]
    assert flux["tokens"] == 64 and flux["blocks"] == [1, 1]
    assert all(0 < share < 1 for share in flux["attention_share"].values())
    assert {"baseline", "full_dqar", "teacache", "diffusers_mag_cache"} <= {r["case"] for r in flux["cases"]}

    ablations = {r["case"] for r in by_step["dit-xl-256"]["cases"]}
    assert {"baseline", "full_dqar", "dqar_kv_int8", "dqar_layers-layer_fraction-1.0"} <= ablations


@pytest.mark.slow
def test_a_step_cut_short_is_summarised_from_its_records(dry_run):
    """What the orchestrator writes after a timeout reads the same records the step read."""
    check = load_check()
    figures, text, verdict = check.partial_figures("peers-eager", dry_run)
    done = next(e for e in lines(dry_run) if e["step"] == "peers-eager")
    assert figures["baseline_s_per_image"] == pytest.approx(done["figures"]["baseline_s_per_image"])
    assert verdict == done["verdict"] and text in (dry_run / "summary.md").read_text()


def test_a_step_past_its_budget_is_killed_and_still_gets_its_line(tmp_path, monkeypatch):
    check = load_check()
    monkeypatch.setattr(check, "STEPS", (check.Step("timer", 0.05, "a goal"), check.Step("overhead", 0.05, "another")))  # x4 in a dry run
    assert check.orchestrate(tmp_path, dry=True, only=["timer"]) == 0
    entries = lines(tmp_path)
    assert [e["step"] for e in entries] == ["setup", "timer"]
    assert entries[1]["status"].startswith("timeout after") and entries[1]["verdict"] == "no figure"
    assert (tmp_path / "logs" / "timer.log").exists()
    assert "**timer** (timeout after" in (tmp_path / "summary.md").read_text()


def test_past_the_total_time_no_step_starts(tmp_path, monkeypatch):
    check = load_check()
    monkeypatch.setattr(check, "TOTAL_S", 1)  # x4 in a dry run: under the 15 s a step needs
    check.orchestrate(tmp_path, dry=True, only=None)
    entries = lines(tmp_path)[1:]
    assert [e["step"] for e in entries] == [s.name for s in check.STEPS]
    assert {e["status"] for e in entries} == {"skipped"} and not (tmp_path / "logs" / "timer.log").exists()


def test_the_summary_reads_back_past_a_torn_line(tmp_path):
    check = load_check()
    summary = check.Summary(tmp_path)
    summary.add("timer", "done", 1.0, {"x": 1}, "text", "goal", "met")
    with open(tmp_path / "summary.jsonl", "a") as fh:
        fh.write('{"step": "peers-ea')  # a kill mid-write
    assert summary.steps_written() == {"timer"}


def test_host_syncs_are_not_counted_on_the_cpu():
    check = load_check()
    calls = []
    assert check.count_syncs(lambda: calls.append(1), cuda=False) is None and calls == [1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_the_gpu_run_refuses_a_machine_without_cuda_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), str(tmp_path / "out")],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().count("\n") == 0 and "--cpu-dry-run" in done.stderr


def test_the_export_is_four_whole_files_without_the_outputs(tmp_path):
    """The device returns at most 8 files from $OUT: the summary, the environment and one tarball."""
    check = load_check()
    out, export = tmp_path / "out", tmp_path / "export"
    run = out / "peers-eager"
    (run / "outputs").mkdir(parents=True)
    (run / "outputs" / "baseline-1.safetensors").write_bytes(b"\0" * 1000)
    (run / "records.jsonl").write_text('{"case": "baseline"}\n')
    (run / "report.html").write_text("<html>")
    check.Summary(out).add("timer", "done", 1.0, {}, "text", "goal", "met")
    (out / "environment.json").write_text("{}")
    check.export_results(out, export)
    check.export_results(out, export)  # after every step: replaced, never doubled
    assert sorted(p.name for p in export.iterdir()) == ["environment.json", "gpu-check.tar.gz", "summary.jsonl", "summary.md"]
    with tarfile.open(export / "gpu-check.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"gpu-check/summary.md", "gpu-check/peers-eager/records.jsonl"} <= names
    assert not any("outputs" in n or n.endswith("report.html") for n in names)


def test_an_overhead_step_cut_short_keeps_the_parts_it_finished(tmp_path):
    check = load_check()
    (tmp_path / "overhead.json").write_text(json.dumps({"hooks_by_mode": {"eager": 0.01}, "syncs_per_step": {"baseline": 1.0, "fora (interval)": 3.0}}))
    figures, text, verdict = check.partial_figures("overhead", tmp_path)
    assert "fora (interval) 3.00" in text and "runner vs hand loop (eager): not reached" in text and "eager +1.00%" in text
    assert verdict == "syncs missed (fora (interval))" and "decision" not in figures


@pytest.mark.slow
def test_a_step_rerun_into_the_same_folder_replaces_its_run(dry_run):
    """A failed step is rerun on the warm machine with --only into the same OUT_DIR."""
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(dry_run), "--cpu-dry-run", "--only", "peers-cudagraph"],
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    graph = [e for e in lines(dry_run) if e["step"] == "peers-cudagraph"]
    assert len(graph) == 2 and all(e["status"] == "done" for e in graph)
    records = (dry_run / "peers-cudagraph" / "records.jsonl").read_text().splitlines()
    assert len(records) == len(graph[-1]["figures"]["cases"])  # one run's records, not two


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_decision_overhead_refuses_a_missing_device_in_one_line():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "decision_overhead.py"), "--suite", str(ROOT / "suites" / "ablations.yaml"),
                           "--device", "cuda"], capture_output=True, text=True, check=False, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().count("\n") == 0 and "no CUDA device is available" in done.stderr
