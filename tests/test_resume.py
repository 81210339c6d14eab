"""Results keyed by content: identity and key, resume by key, the run directory's guards,
output files, and non-finite outputs or timings."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import pytest

from dqar_bench.cli import main
from dqar_bench.config.identity import case_key, differences
from dqar_bench.config.suite import load_suite
from dqar_bench.measure import records as records_mod
from dqar_bench.measure.records import RunDir, outputs_file_name
from dqar_bench.measure.timing import CallTimer, CallTiming
from dqar_bench.runs.runner import default_output_dir, run_suite
from tests.conftest import SMALL_SUITE_HEAD
from tests.parts_for_tests import registry_with_test_parts

CASES = """\
cases:
  - name: baseline
  - name: iv
    gate: {name: interval, every: 2}
"""


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def prepared(monkeypatch) -> list[str]:
    from tests.test_runner import prepared as track

    return track(monkeypatch)


@pytest.mark.slow
def test_identity_holds_every_parameter_and_where_each_part_comes_from(write_suite, tmp_path):
    path = write_suite(SMALL_SUITE_HEAD + CASES)
    assert main(["run", str(path), "-o", str(tmp_path / "run")]) == 0
    recs = RunDir(tmp_path / "run").latest()
    identity = recs["iv"].identity
    gate = identity["parts"]["gate"]
    assert gate["name"] == "interval" and gate["params"] == {"every": 2, "anchor": "start"}
    assert gate["distribution"] == "dqar-bench" and gate["version"] == recs["iv"].dqar_bench and gate["plugin"]
    assert set(identity["parts"]) == {"scheduler", "gate", "cache", "quantizer"} and identity["parts"]["quantizer"]["name"] == "none"
    for field in ("model", "sampler", "steps", "guidance_scale", "conditioning", "seeds", "dtype", "device_type", "execution",
                  "probe_queries", "dqar_bench"):
        assert field in identity
    assert identity["conditioning"] == {"class_labels": [1, 2]} and identity["device_type"] == "cpu"
    assert recs["baseline"].identity["parts"] == {}
    assert len(recs["iv"].case_key) == 64 and recs["iv"].case_key != recs["baseline"].case_key
    assert recs["iv"].case_key == case_key(identity, recs["iv"].settings)
    assert differences(identity, {**identity, "steps": 8}) == ["steps"]
    from dqar_bench.config.identity import case_identity
    from dqar_bench.core.plugins import load_registry

    registry = load_registry(autoload=False)
    suite = load_suite(write_suite(SMALL_SUITE_HEAD + "cases:\n  - name: baseline\n  - name: e\n    gate: {name: entropy, threshold: 0.5}\n", "e.yaml"), registry)
    params = case_identity(suite, suite.case("e"), registry, "cpu")["parts"]["gate"]["params"]
    assert params == {"threshold": 0.5, "entropy": "normalised", "adapt_to_length": False, "base_length": 77.0, "max_reuse": 0}  # defaults included


def test_identity_names_a_third_party_distribution_and_version(fake_distribution, write_suite, tmp_path, monkeypatch):
    """A plugin module of its own name, so the test holds whatever is installed beside it
    (the README's example plugin installed with `pip install -e` carries version 0.1.0)."""
    from tests.conftest import EXAMPLE_PLUGIN

    plugin = tmp_path / "plugin_src" / "identity_test_every_other"
    plugin.mkdir(parents=True)
    (plugin / "__init__.py").write_text((EXAMPLE_PLUGIN / "dqar_bench_every_other" / "__init__.py").read_text())
    fake_distribution("identity-test-every-other", {"every_other": "identity_test_every_other"}, plugin.parent, version="2.3")
    from dqar_bench.config.identity import case_identity
    from dqar_bench.core.plugins import load_registry

    registry = load_registry(autoload=True)
    suite = load_suite(write_suite(SMALL_SUITE_HEAD + "cases:\n  - name: baseline\n  - name: odd\n    gate: every-other\n"), registry)
    gate = case_identity(suite, suite.case("odd"), registry, "cpu")["parts"]["gate"]
    assert (gate["distribution"], gate["version"], gate["params"]) == ("identity-test-every-other", "2.3", {"start": 0})


@pytest.mark.slow
def test_resume_with_a_changed_step_count_is_refused_in_one_line(write_suite, tmp_path, capsys):
    path = write_suite(SMALL_SUITE_HEAD + CASES)
    out = tmp_path / "run"
    assert main(["run", str(path), "-o", str(out)]) == 0
    before = (out / "records.jsonl").read_text()
    capsys.readouterr()
    changed = write_suite(SMALL_SUITE_HEAD.replace("steps: 6", "steps: 8") + CASES, "changed.yaml")
    assert main(["run", str(changed), "--resume", str(out)]) == 2
    err = one_line(capsys)
    assert "differs from the recorded run in 2 case(s): baseline (steps), iv (steps)" in err and "--rerun-changed" in err
    assert (out / "records.jsonl").read_text() == before  # nothing run, nothing lost


@pytest.mark.slow
def test_rerun_changed_reruns_just_the_changed_cases(write_suite, tmp_path, capsys, monkeypatch):
    path = write_suite(SMALL_SUITE_HEAD + CASES + "  - name: other\n    gate: never\n")
    out = tmp_path / "run"
    assert main(["run", str(path), "-o", str(out)]) == 0
    capsys.readouterr()
    edited = write_suite((SMALL_SUITE_HEAD + CASES + "  - name: other\n    gate: never\n").replace("every: 2", "every: 3"), "edited.yaml")
    assert main(["run", str(edited), "--resume", str(out)]) == 2
    assert "iv (parts.gate.params.every)" in one_line(capsys)
    ran = prepared(monkeypatch)
    assert main(["run", str(edited), "--resume", str(out), "--rerun-changed"]) == 0
    assert ran == ["baseline (partner)", "iv"]  # the baseline is timed again beside it, for pairing
    latest = RunDir(out).latest()
    assert latest["iv"].identity["parts"]["gate"]["params"]["every"] == 3 and latest["iv"].reuse_ratio == pytest.approx(2 / 3)
    assert len(RunDir(out).records()) == 4
    log = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    for r in latest["iv"].round_ids:
        assert log[r]["cases"]["baseline"]["case_key"] == latest["baseline"].case_key  # paired with a baseline timed in the same round
    assert main(["run", str(edited), "--rerun-changed", "-o", str(tmp_path / "x")]) == 2
    assert "--resume" in one_line(capsys)


@pytest.mark.slow
def test_a_renamed_case_is_found_by_its_content(write_suite, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert main(["run", str(write_suite(SMALL_SUITE_HEAD + CASES)), "-o", str(out)]) == 0
    ran = prepared(monkeypatch)
    assert main(["run", str(write_suite(SMALL_SUITE_HEAD + CASES.replace("name: iv", "name: every-2"), "renamed.yaml")), "--resume", str(out)]) == 0
    assert ran == []
    latest = RunDir(out).latest()
    assert latest["every-2"].renamed_from == "iv" and latest["every-2"].case_key == latest["iv"].case_key
    assert "| every-2 |" in (out / "table.md").read_text() and "| iv |" not in (out / "table.md").read_text()


@pytest.mark.slow
def test_exit_status_follows_the_latest_record_and_failed_cases_are_retried(write_suite, tmp_path, monkeypatch):
    from dqar_bench.runs import case_run

    real = case_run.build_strategy

    def broken(case, registry, probe_queries=16):
        if case.name == "iv":
            raise RuntimeError("flaky part")
        return real(case, registry, probe_queries)

    path = write_suite(SMALL_SUITE_HEAD + CASES)
    out = tmp_path / "run"
    monkeypatch.setattr(case_run, "build_strategy", broken)
    assert main(["run", str(path), "-o", str(out)]) == 1
    monkeypatch.setattr(case_run, "build_strategy", real)
    assert main(["run", str(path), "--resume", str(out)]) == 0  # failed, then ok: not failed
    statuses = [(r.case, r.status) for r in RunDir(out).records()]
    assert ("iv", "failed") in statuses and statuses[-1] == ("iv", "ok")


def test_resume_on_a_missing_or_foreign_directory_is_an_error(write_suite, tmp_path, capsys):
    path = write_suite(SMALL_SUITE_HEAD + CASES)
    assert main(["run", str(path), "--resume", str(tmp_path / "nowhere")]) == 2
    assert "no such directory" in one_line(capsys)
    assert not (tmp_path / "nowhere").exists()
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    assert main(["run", str(path), "--resume", str(tmp_path / "foreign")]) == 2
    assert "not a dqar-bench run" in one_line(capsys)


def test_output_that_cannot_hold_a_run_is_refused_before_anything(write_suite, tmp_path, capsys, monkeypatch):
    path = write_suite(SMALL_SUITE_HEAD + CASES)
    (tmp_path / "file").write_text("x")
    assert main(["run", str(path), "-o", str(tmp_path / "file")]) == 2
    assert "is a file" in one_line(capsys)
    assert main(["run", str(path), "-o", str(tmp_path / "file" / "run")]) == 2
    assert "is a file" in one_line(capsys)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("x")
    assert main(["run", str(path), "-o", str(tmp_path / "mine")]) == 2
    assert "non-empty directory that is not a dqar-bench run" in one_line(capsys)
    assert os.listdir(tmp_path / "mine") == ["thesis.tex"]
    real_access = os.access
    monkeypatch.setattr(records_mod.os, "access", lambda p, mode: False if Path(p) == tmp_path / "ro" else real_access(p, mode))
    (tmp_path / "ro").mkdir()
    assert main(["run", str(path), "-o", str(tmp_path / "ro" / "run")]) == 2
    assert "not writable" in one_line(capsys)
    assert not (tmp_path / "ro" / "run").exists()


def test_bad_labels_or_model_leave_no_run_directory(write_suite, tmp_path, capsys):
    labels = write_suite(SMALL_SUITE_HEAD.replace("class_labels: [1, 2]", "class_labels: [1, 99]") + CASES)
    assert main(["run", str(labels), "-o", str(tmp_path / "run")]) == 2
    assert "out of range" in one_line(capsys)
    model = write_suite(SMALL_SUITE_HEAD.replace("model: dit-tiny", "model: nobody/no-such-dit") + CASES, "model.yaml")
    assert main(["run", str(model), "-o", str(tmp_path / "run")]) == 2
    one_line(capsys)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_second_run_into_a_locked_directory_is_refused(write_suite, tmp_path, capsys):
    path = write_suite(SMALL_SUITE_HEAD + CASES)
    out = tmp_path / "run"
    assert main(["run", str(path), "-o", str(out)]) == 0
    capsys.readouterr()
    with open(out / "run.lock", "a+b") as held:  # another run holds it
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        before = (out / "records.jsonl").read_text()
        assert main(["run", str(path), "--resume", str(out)]) == 2
        assert "in use by another dqar-bench run" in one_line(capsys)
        assert (out / "records.jsonl").read_text() == before
    assert main(["run", str(path), "--resume", str(out)]) == 0  # released: fine again


@pytest.mark.slow
def test_corrupt_outputs_on_resume_are_named_and_their_case_rerun(write_suite, tmp_path, capsys, monkeypatch):
    path = write_suite(SMALL_SUITE_HEAD + CASES)
    out = tmp_path / "run"
    assert main(["run", str(path), "-o", str(out)]) == 0
    capsys.readouterr()
    baseline_file = RunDir(out).outputs_path("baseline")
    baseline_file.write_bytes(b"not a safetensors file")
    ran = prepared(monkeypatch)
    assert main(["run", str(path), "--resume", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{baseline_file}: unreadable" in printed and "case 'baseline' is run again" in printed
    assert ran == ["baseline"]
    assert RunDir(out).load_outputs("baseline")  # rewritten
    os.remove(RunDir(out).outputs_path("iv"))
    ran.clear()
    assert main(["run", str(path), "--resume", str(out)]) == 0
    assert f"{RunDir(out).outputs_path('iv')}: missing" in capsys.readouterr().out and ran == ["baseline (partner)", "iv"]


@pytest.mark.slow
def test_output_files_never_collide_whatever_the_case_names(write_suite, tmp_path):
    names = ["a/b", "a b", "a_b", "../../up", "fid-reference-features", "x" * 300]
    files = {outputs_file_name(n) for n in names}
    assert len(files) == len(names)
    assert all("/" not in f and not f.startswith(".") and len(f) <= records_mod.MAX_NAME + 23 for f in files)
    body = SMALL_SUITE_HEAD + "cases:\n  - name: baseline\n" + "".join(f"  - name: '{n}'\n    gate: never\n" for n in names[:5])
    out = tmp_path / "run"
    assert main(["run", str(write_suite(body)), "-o", str(out)]) == 0
    saved = sorted(p.name for p in (out / "outputs").iterdir())
    assert len(saved) == 6 and all(p.endswith(".safetensors") for p in saved)
    assert {r.outputs_file for r in RunDir(out).records()} == {f"outputs/{s}" for s in saved}
    assert (out / "fid-reference-features.safetensors").exists() is False  # harness files live outside outputs/


@pytest.mark.parametrize("name", ["../../evil", "/etc/evil", "a/b", "..", "a\\b"])
def test_suite_names_cannot_leave_results_runs(write_suite, name):
    suite = load_suite(write_suite(SMALL_SUITE_HEAD.replace("name: small", f"name: '{name}'") + CASES), registry_with_test_parts())
    path = default_output_dir(suite)
    assert path.parent == Path("results") / "runs" and len(path.parts) == 3 and not path.name.startswith(".")


def test_outputs_are_fsynced_before_their_rename(tmp_path, monkeypatch):
    import torch

    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(records_mod.os, "fsync", lambda fd: events.append(f"fsync {os.readlink(f'/proc/self/fd/{fd}')}") or real_fsync(fd))
    monkeypatch.setattr(records_mod.os, "replace", lambda a, b: events.append(f"replace {a}") or real_replace(a, b))
    run = RunDir.open(tmp_path / "run", resume=False)
    try:
        final = run.save_outputs("x", {0: torch.ones(2)})
    finally:
        run.close()
    replaced = [e for e in events if e.startswith("replace ")]
    assert len(replaced) == 1
    tmp = replaced[0].removeprefix("replace ")
    assert Path(tmp).parent == final.parent and Path(tmp).name.endswith(".tmp")  # made beside its final name
    assert events.index(f"fsync {tmp}") < events.index(f"replace {tmp}")


@pytest.mark.slow
def test_nan_outputs_fail_the_case_naming_the_seeds(write_suite, tmp_path):
    body = SMALL_SUITE_HEAD.replace("seeds: [0]", "seeds: [0, 1]") + CASES + "  - name: broken\n    gate: {name: interval, every: 2}\n    cache: nan-cache\n"
    registry = registry_with_test_parts()
    run = run_suite(load_suite(write_suite(body), registry), tmp_path / "run", registry=registry, progress=lambda line: None)
    latest = RunDir(run.path).latest()
    broken = latest["broken"]
    assert broken.status == "failed"
    assert broken.error.startswith("non-finite outputs: seed 0 has ") and "; seed 1 has " in broken.error and "NaN" in broken.error
    assert broken.traceback is None and not RunDir(run.path).outputs_path("broken").exists()
    assert latest["iv"].status == "ok"
    assert "| broken |" in (run.path / "table.md").read_text() and "failed: non-finite outputs" in (run.path / "table.md").read_text()


def test_non_finite_timing_fails_the_case(write_suite, tmp_path, monkeypatch):
    real = CallTimer.time
    broken = {"on": False}

    def time(self, fn):
        timing, result = real(self, fn)
        return (CallTiming(float("nan"), timing.steps) if broken["on"] else timing), result

    from dqar_bench.runs import case_run

    real_round = case_run.CaseRun.time_round

    def time_round(self):
        broken["on"] = self.case.name == "iv"
        return real_round(self)

    monkeypatch.setattr(CallTimer, "time", time)
    monkeypatch.setattr(case_run.CaseRun, "time_round", time_round)
    path = write_suite(SMALL_SUITE_HEAD + CASES)
    assert main(["run", str(path), "-o", str(tmp_path / "run")]) == 1
    latest = RunDir(tmp_path / "run").latest()
    assert latest["iv"].status == "failed" and latest["iv"].error == "non-finite timing (seed 0): nan s"
    assert latest["baseline"].status == "ok"
