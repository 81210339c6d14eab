"""Every bad input we know of: one line naming the file, field and fix, exit status 2, nothing run."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from dqar_bench import Gate, StepContext, hookimpl
from dqar_bench.cli import main
from dqar_bench.config.suite import load_suite
from dqar_bench.core.parts import build_part
from dqar_bench.core.plugins import load_registry
from dqar_bench.measure.records import RunDir
from dqar_bench.runs.runner import run_suite
from tests.conftest import SMALL_SUITE_HEAD

BASELINE_ONLY = "cases:\n  - name: baseline\n"


def one_line_error(capsys, argv) -> str:
    """Run the command, expect exit status 2 and exactly one line on stderr; return it."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("error: "), captured.err
    return captured.err


# --- the suite file itself -------------------------------------------------------------------

def test_a_suite_that_is_not_utf8(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes((SMALL_SUITE_HEAD + "description: caf\xe9 au lait\n" + BASELINE_ONLY).encode("latin-1"))
    err = one_line_error(capsys, ["validate", str(path)])
    assert f"{path}: line 9: not UTF-8 text (byte 0xe9" in err and "save the suite file as UTF-8" in err


def test_yaml_aliases_that_expand_hugely_are_refused(write_suite, capsys):
    laughs = "".join(f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 10))
    body = SMALL_SUITE_HEAD.replace("name: small\n", "name: small\nx-anchors:\n  l0: &l0 lol\n" + laughs)
    body += "description: *l9\n" + BASELINE_ONLY  # 10^9 strings once filled in
    err = one_line_error(capsys, ["validate", str(write_suite(body))])
    assert "expands to more than 100,000 values and characters once its YAML aliases" in err


def test_a_self_referencing_alias_is_refused_too(write_suite, capsys):
    body = SMALL_SUITE_HEAD + "description: &me [*me]\n" + BASELINE_ONLY
    assert "expands to more than" in one_line_error(capsys, ["validate", str(write_suite(body))])


def test_free_text_must_be_text(write_suite, capsys):
    body = SMALL_SUITE_HEAD + "description: [a, b]\n" + BASELINE_ONLY
    assert "field 'description' must be str" in one_line_error(capsys, ["validate", str(write_suite(body))])
    body = SMALL_SUITE_HEAD + "cases:\n  - name: baseline\n    description: {a: 1}\n"
    assert "field 'description' of case 'baseline' must be str" in one_line_error(capsys, ["validate", str(write_suite(body, "c.yaml"))])


def test_aliases_of_a_normal_size_still_work(write_suite, registry):
    body = SMALL_SUITE_HEAD + "cases:\n  - name: baseline\n  - name: a\n    gate: &g {name: interval, every: 3}\n  - name: b\n    gate: *g\n"
    suite = load_suite(write_suite(body), registry)
    assert suite.case("b").parts["gate"].params == {"every": 3}


# --- numbers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "-1.0"])
def test_guidance_scale_must_be_finite_and_not_negative(write_suite, capsys, value):
    body = SMALL_SUITE_HEAD.replace("guidance_scale: 4.0", f"guidance_scale: {value}") + BASELINE_ONLY
    err = one_line_error(capsys, ["validate", str(write_suite(body))])
    assert "field 'sampler.guidance_scale' must be a finite number >= 0" in err


@pytest.mark.parametrize("value", [-4, 0])
def test_probe_queries_must_be_positive(write_suite, capsys, value):
    body = SMALL_SUITE_HEAD + f"probe_queries: {value}\n" + BASELINE_ONLY
    assert "field 'probe_queries' must be at least 1" in one_line_error(capsys, ["validate", str(write_suite(body))])


def test_duplicate_seeds(write_suite, capsys):
    body = SMALL_SUITE_HEAD.replace("seeds: [0]", "seeds: [0, 3, 1, 3]") + BASELINE_ONLY
    assert "field 'seeds': seed 3 is given more than once" in one_line_error(capsys, ["validate", str(write_suite(body))])


def test_threads_above_the_cores(write_suite, capsys):
    from dqar_bench.config.suite import usable_cores

    body = SMALL_SUITE_HEAD + f"threads: {usable_cores() + 1}\n" + BASELINE_ONLY
    err = one_line_error(capsys, ["validate", str(write_suite(body))])
    assert f"field 'threads': {usable_cores() + 1} is more than the {usable_cores()} CPU cores" in err


def test_nan_part_parameter(write_suite, capsys):
    body = SMALL_SUITE_HEAD + "cases:\n  - name: baseline\n  - name: e\n    gate: {name: entropy, threshold: .nan}\n"
    err = one_line_error(capsys, ["validate", str(write_suite(body))])
    assert "case 'e'" in err and "parameter 'threshold' must be a number, got NaN" in err


@pytest.mark.parametrize("sampler", ["ddim", "dpm-solver"])
def test_more_steps_than_the_schedule_has_timesteps_are_refused_at_validate(write_suite, capsys, registry, sampler):
    # DDIM raises on every case; DPM-Solver silently repeats timesteps: both past the 1000 trained ones
    body = SMALL_SUITE_HEAD.replace("name: ddim, steps: 6", f"name: {sampler}, steps: 1001") + BASELINE_ONLY
    err = one_line_error(capsys, ["validate", str(write_suite(body))])
    assert "field 'sampler.steps'" in err and "1001" in err and "sampler.steps <= 1000" in err
    assert load_suite(write_suite(body.replace("steps: 1001", "steps: 1000"), "ok.yaml"), registry).steps == 1000


def test_seeds_outside_the_generators_range_are_refused_at_validate(write_suite, capsys, registry):
    body = SMALL_SUITE_HEAD.replace("seeds: [0]", f"seeds: [0, {2**64}]") + BASELINE_ONLY
    err = one_line_error(capsys, ["validate", str(write_suite(body))])
    assert f"field 'seeds': seed {2**64} is outside the random generator's range" in err
    top = SMALL_SUITE_HEAD.replace("seeds: [0]", f"seeds: [{2**64 - 1}]") + BASELINE_ONLY
    assert load_suite(write_suite(top, "top.yaml"), registry).seeds == [2**64 - 1]  # the largest seed torch takes


@pytest.mark.parametrize("text, value", [("1e6", 1e6), ("'2.5'", 2.5), ("+3E-1", 0.3)])
def test_a_number_yaml_reads_as_text_is_taken_as_the_number(write_suite, registry, text, value):
    import yaml

    assert isinstance(yaml.safe_load(f"x: {text}")["x"], str)  # YAML 1.1: no dot, no number
    body = SMALL_SUITE_HEAD.replace("guidance_scale: 4.0", f"guidance_scale: {text}") + BASELINE_ONLY
    assert load_suite(write_suite(body), registry).guidance_scale == value


def test_text_that_is_no_number_is_still_refused_for_a_number_field(write_suite, capsys):
    body = SMALL_SUITE_HEAD.replace("guidance_scale: 4.0", "guidance_scale: 1e6x") + BASELINE_ONLY
    assert "field 'sampler.guidance_scale' must be float, got '1e6x'" in one_line_error(capsys, ["validate", str(write_suite(body))])


def test_a_million_seeds_are_checked_for_repeats_in_linear_time(registry):
    import time

    import yaml

    from dqar_bench.config.suite import parse_suite
    from dqar_bench.core.errors import SuiteError

    data = yaml.safe_load(SMALL_SUITE_HEAD + BASELINE_ONLY)
    data["seeds"] = list(range(10**6)) + [999_999]
    started = time.perf_counter()
    with pytest.raises(SuiteError, match="seed 999999 is given more than once"):
        parse_suite(data, Path("many.yaml"), "", registry)
    # linear: well under a second here; the old list.count per seed was 10^12 comparisons (over 300 s)
    assert time.perf_counter() - started < 30


@pytest.mark.parametrize("device", ["cuda:-7", "tpu", "cuda:", "cuda:0x", "cpu:0"])
def test_a_device_torch_cannot_name_is_refused_at_validate(write_suite, capsys, device):
    body = SMALL_SUITE_HEAD.replace("device: cpu", f"device: '{device}'") + BASELINE_ONLY
    err = one_line_error(capsys, ["validate", str(write_suite(body))])
    assert f"field 'device': '{device}' is not one of auto, cpu, cuda or cuda:N" in err


def test_fid_stats_refuses_a_device_torch_cannot_name(tmp_path, capsys):
    err = one_line_error(capsys, ["fid-stats", str(tmp_path), "--device", "tpu", "-o", str(tmp_path / "s.npz")])
    assert "device 'tpu' is not one of auto, cpu, cuda or cuda:N" in err
    assert not (tmp_path / "s.npz").exists()


def test_a_case_name_that_is_a_number_is_said_to_need_text(write_suite, capsys):
    body = SMALL_SUITE_HEAD + "cases:\n  - name: baseline\n  - name: 123\n"
    err = one_line_error(capsys, ["validate", str(write_suite(body))])
    assert "cases[1]: field 'name' must be text, got 123; quote it" in err and "missing" not in err


# --- the model -------------------------------------------------------------------------------

@pytest.mark.parametrize("model, labels, classes", [("dit-tiny", "[0, 10]", 10), ("digits-dit", "[3, 11]", 10), ("dit-xl-2-256-random", "[1000]", 1000)])
def test_class_labels_out_of_range_are_caught_by_validate(write_suite, capsys, model, labels, classes):
    body = SMALL_SUITE_HEAD.replace("model: dit-tiny", f"model: {model}").replace("class_labels: [1, 2]", f"class_labels: {labels}")
    err = one_line_error(capsys, ["validate", str(write_suite(body + BASELINE_ONLY))])
    assert "field 'class_labels':" in err and f"is out of range for model '{model}' (its {classes} classes are 0..{classes - 1})" in err


def test_class_labels_are_read_from_a_checkpoint_config(write_suite, capsys, tmp_path):
    folder = tmp_path / "ckpt"
    (folder / "transformer").mkdir(parents=True)
    (folder / "transformer" / "config.json").write_text(json.dumps({"_class_name": "DiTTransformer2DModel", "num_embeds_ada_norm": 5}))
    body = SMALL_SUITE_HEAD.replace("model: dit-tiny", f"model: {folder}").replace("class_labels: [1, 2]", "class_labels: [4, 5]")
    assert f"5 is out of range for model '{folder}' (its 5 classes are 0..4)" in one_line_error(capsys, ["validate", str(write_suite(body + BASELINE_ONLY))])


def test_a_missing_checkpoint_is_caught_by_validate_and_run_leaves_nothing(write_suite, capsys, tmp_path):
    body = SMALL_SUITE_HEAD.replace("model: dit-tiny", f"model: {tmp_path / 'no-such-checkpoint'}") + BASELINE_ONLY
    suite = write_suite(body)
    err = one_line_error(capsys, ["validate", str(suite)])
    assert "field 'model': model folder" in err and "does not exist" in err
    out = tmp_path / "run"
    one_line_error(capsys, ["run", str(suite), "-o", str(out)])
    assert not out.exists()
    unknown = write_suite(SMALL_SUITE_HEAD.replace("model: dit-tiny", "model: dit-tinyy") + BASELINE_ONLY, "u.yaml")
    assert "neither a built-in model" in one_line_error(capsys, ["validate", str(unknown)])


def test_a_checkpoint_id_not_downloaded_is_a_validate_note_and_a_run_error(write_suite, capsys, tmp_path):
    body = SMALL_SUITE_HEAD.replace("model: dit-tiny", "model: nobody/no-such-dit") + BASELINE_ONLY
    suite = write_suite(body)
    assert main(["validate", str(suite)]) == 0
    assert "note: `run` needs the model on this machine: model 'nobody/no-such-dit' is not available offline" in capsys.readouterr().out
    out = tmp_path / "run"
    assert "is not available offline" in one_line_error(capsys, ["run", str(suite), "-o", str(out)])
    assert not out.exists()


# --- weights the quality metrics need --------------------------------------------------------

def test_missing_classifier_weights_are_caught_before_any_sampling(write_suite, capsys, monkeypatch, tmp_path):
    import dqar_bench.model.reference.load as load

    monkeypatch.setattr(load, "classifier_weights_path", lambda: tmp_path / "gone.safetensors")
    suite = write_suite(SMALL_SUITE_HEAD + "quality: {classifier: digits}\n" + BASELINE_ONLY)
    err = one_line_error(capsys, ["validate", str(suite)])
    assert "classifier 'digits' needs its weights file" in err and "gone.safetensors" in err
    one_line_error(capsys, ["run", str(suite), "-o", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()


def test_missing_fid_weights_are_caught_before_any_sampling(write_suite, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-hub"))
    suite = write_suite(SMALL_SUITE_HEAD + "quality: {fid: 8}\n" + BASELINE_ONLY)
    assert "need the Inception weights and dqar-bench downloads nothing" in one_line_error(capsys, ["validate", str(suite)])
    given = write_suite(SMALL_SUITE_HEAD + f"quality: {{fid: 8, inception_weights: {tmp_path / 'x.pth'}}}\n" + BASELINE_ONLY, "g.yaml")
    assert "no file at" in one_line_error(capsys, ["validate", str(given)])
    import dqar_bench.model.reference.load as load

    monkeypatch.setattr(load, "classifier_weights_path", lambda: tmp_path / "gone.safetensors")
    digits = write_suite(SMALL_SUITE_HEAD + "quality: {fid: 8, feature_extractor: dqar-digits-classifier}\n" + BASELINE_ONLY, "d.yaml")
    assert "feature extractor 'dqar-digits-classifier' needs its shipped weights file" in one_line_error(capsys, ["validate", str(digits)])


# --- parts -----------------------------------------------------------------------------------

@dataclass
class Short(Gate):
    """Answers for one block, whatever the model has."""

    PLUGIN_NAME = "short"

    def decide(self, ctx: StepContext, eligible: list[bool]) -> list[bool]:
        return [True]


@dataclass
class Weighted(Gate):
    """Has a mapping parameter."""

    PLUGIN_NAME = "weighted"

    weights: dict[str, float] = field(default_factory=dict)
    every: int = 2

    def decide(self, ctx: StepContext, eligible: list[bool]) -> list[bool]:
        return [False] * len(eligible)


class ExtraParts:
    @hookimpl
    def register_gates(self):
        return [Short, Weighted]


@pytest.mark.slow
def test_a_gate_with_the_wrong_number_of_answers_fails_its_case_in_one_line_naming_it(write_suite, tmp_path):
    registry = load_registry(autoload=False, extra_plugins=(ExtraParts(),))
    suite = load_suite(write_suite(SMALL_SUITE_HEAD + "cases:\n  - name: baseline\n  - name: s\n    gate: short\n"), registry)
    run = run_suite(suite, tmp_path / "run", registry=registry, progress=lambda line: None)
    record = {r.case: r for r in RunDir(run.path).records()}["s"]
    assert record.status == "failed"
    assert record.error == (
        "ValueError: gate 'short' (tests.test_bad_inputs.Short) answered 1 answers at step 1 for 4 blocks; "
        "decide() must return one bool per block"
    )


def test_a_mapping_parameter_is_type_checked(write_suite, capsys):
    registry = load_registry(autoload=False, extra_plugins=(ExtraParts(),))
    cls = registry.get("gate", "weighted").cls
    assert build_part(cls, {"weights": {"a": 1, "b": 0.5}}).weights == {"a": 1.0, "b": 0.5}
    with pytest.raises(ValueError, match=r"parameter 'weights' must be a mapping \(dict\[str, float\]\), got 3"):
        build_part(cls, {"weights": 3})
    with pytest.raises(ValueError, match="parameter 'weights' must be float, got 'x'"):
        build_part(cls, {"weights": {"a": "x"}})
    with pytest.raises(ValueError, match="parameter 'every' must be int, got True"):
        build_part(cls, {"every": True})  # a bool is not an int, though Python says it is
    assert cls.parameters()[0].type_name == "dict[str, float]"


# --- train-policy ----------------------------------------------------------------------------

def _traces(path: Path, extra: str = "") -> Path:
    rng = random.Random(0)
    lines = []
    for i in range(40):
        f = {"entropy": rng.uniform(2, 3), "log_snr": None, "latent_rms": 1.0, "t": rng.random(), "block": 0.5}
        lines.append(json.dumps({"suite": "s", "case": "c", "seed": i % 5, "features": f, "label": int(f["entropy"] > 2.5)}))
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def test_train_policy_does_not_overwrite_without_force(tmp_path, capsys):
    traces = _traces(tmp_path / "t.jsonl")
    out = tmp_path / "policy.safetensors"
    out.write_bytes(b"precious")
    err = one_line_error(capsys, ["train-policy", str(traces), "-o", str(out), "--max-epochs", "2"])
    assert "already exists; pass --force to overwrite it" in err and out.read_bytes() == b"precious"
    assert main(["train-policy", str(traces), "-o", str(out), "--max-epochs", "2", "--force"]) == 0
    assert out.read_bytes() != b"precious"


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_train_policy_refuses_non_finite_features(tmp_path, capsys, literal):
    bad = '{"suite": "s", "case": "c", "seed": 9, "features": {"entropy": ' + literal + ', "log_snr": 0, "latent_rms": 1, "t": 0.5, "block": 0}, "label": 1}\n'
    traces = _traces(tmp_path / "t.jsonl", bad)
    err = one_line_error(capsys, ["train-policy", str(traces), "-o", str(tmp_path / "p.safetensors")])
    assert f"{traces}:41: feature 'entropy' is" in err and "not a finite number" in err
    assert not (tmp_path / "p.safetensors").exists()


# --- run directories -------------------------------------------------------------------------

@pytest.mark.parametrize("flag", ["--resume", "-o"])
def test_nproc_into_a_directory_another_run_holds_is_one_line_and_exit_2(write_suite, tmp_path, capfd, flag):
    # before: rank 0 was refused, rank 1 then said "rank 0 died..." and the command exited 1
    held = RunDir.open(tmp_path / "run", resume=False)  # another run, in this process: flock is per open file
    try:
        assert main(["run", str(write_suite(SMALL_SUITE_HEAD + BASELINE_ONLY)), flag, str(tmp_path / "run"), "--nproc", "2"]) == 2
    finally:
        held.close()
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "is in use by another dqar-bench run" in err and "died" not in err, err
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["outputs", "run.lock"]  # nothing measured, nothing written
