"""The learned reuse policy: it learns, it loads, it decides for all blocks at once, its
files fail with one-line errors, and `trace` / `train-policy` produce what they promise."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from dqar_bench.cli import main
from dqar_bench.config.suite import load_suite
from dqar_bench.core.context import StepContext
from dqar_bench.core.errors import DqarError
from dqar_bench.runs.runner import run_suite
from dqar_bench.strategies.gates.policy import Policy
from dqar_bench.strategy.policy.features import FEATURES
from dqar_bench.strategy.policy.model import MAX_PARAMETERS, SHIPPED_WEIGHTS, PolicyMLP, load_policy, parameter_count, save_policy
from dqar_bench.strategy.policy.train import DEFAULT_HIDDEN, read_traces, train_policy


def _write_suite(path: Path, cases: str, steps: int = 3, seeds: str = "[0]") -> Path:
    path.write_text(
        "name: tiny-policy\nmodel: dit-tiny\n"
        f"sampler: {{name: ddim, steps: {steps}, guidance_scale: 4.0}}\n"
        f"class_labels: [1, 3]\nseeds: {seeds}\ndevice: cpu\ndtype: float32\n"
        "timing: {warmup: 0, repeats: 1}\nbaseline: baseline\n"
        "cases:\n  - name: baseline\n" + cases
    )
    return path


def _synthetic_lines(n: int, rng: random.Random) -> list[str]:
    """Separable by a line in (entropy, t): safe when entropy + t > 3.0."""
    lines = []
    for i in range(n):
        f = {"entropy": rng.uniform(2.0, 3.0), "log_snr": rng.gauss(0, 2), "latent_rms": rng.uniform(1, 50),
             "t": rng.uniform(0.0, 1.0), "block": rng.choice([0, 1 / 3, 2 / 3, 1])}
        label = int(f["entropy"] + f["t"] > 3.0)
        lines.append(json.dumps({"suite": "s", "case": "c", "seed": i % 10, "step": 1, "block": 0, "features": f, "label": label}))
    return lines


def _always_safe(path: Path) -> Path:
    """A valid policy file whose MLP says 'safe' everywhere (a large output bias)."""
    model = PolicyMLP(len(FEATURES), [8])
    with torch.no_grad():
        model.net[-1].bias.fill_(20.0)
    save_policy(model, path)
    return path


def test_policy_learns_a_separable_trace(tmp_path: Path) -> None:
    path = tmp_path / "synthetic.jsonl"
    path.write_text("\n".join(_synthetic_lines(400, random.Random(0))) + "\n")
    model, report = train_policy(read_traces(path), max_epochs=150, patience=20)
    assert report.split == "sampling call" and report.val_size > 0
    assert report.val_accuracy >= 0.9
    assert report.val_accuracy > report.majority_accuracy + 0.2
    assert 0.0 < report.reuse_rate < 1.0


def test_policy_is_small(tmp_path: Path) -> None:
    assert parameter_count(PolicyMLP(len(FEATURES), DEFAULT_HIDDEN)) < MAX_PARAMETERS
    assert parameter_count(load_policy(SHIPPED_WEIGHTS)) < MAX_PARAMETERS
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(_synthetic_lines(20, random.Random(1))))
    with pytest.raises(DqarError, match="limit"):
        train_policy(read_traces(path), hidden=[1024, 1024])


def test_shipped_policy_decides_for_a_batch_of_blocks() -> None:
    gate = Policy()
    blocks = 4
    ctx = StepContext(
        step=5, num_steps=20, timestep=700, latents=torch.zeros(4, 4, 8, 8),
        signals={"entropy": [2.70, 2.72, 2.74, 2.71], "snr": 1.2, "latent_norm": 900.0},
    )
    decided = gate.decide(ctx, [True] * blocks)
    assert len(decided) == blocks and all(isinstance(d, bool) for d in decided)
    # Batched decisions equal the per-block answers of the same MLP.
    from dqar_bench.strategy.policy.features import feature_rows

    rows = feature_rows(ctx, blocks)
    one_by_one = [bool(gate._model.probability(rows[b : b + 1])[0] > gate.threshold) for b in range(blocks)]
    assert decided == one_by_one
    assert gate.decide(ctx, [False] * blocks) == [False] * blocks


@pytest.mark.parametrize("problem", ["missing", "corrupt", "wrong-input-size"])
def test_bad_policy_file_is_a_one_line_validate_error(tmp_path: Path, capsys, problem: str) -> None:
    weights = tmp_path / "policy.safetensors"
    if problem == "corrupt":
        weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header")
    elif problem == "wrong-input-size":
        save_policy(PolicyMLP(3, [4]), weights, features=["entropy", "log_snr", "t"])
    suite = _write_suite(tmp_path / "suite.yaml", f"  - name: learned\n    gate: {{name: policy, weights: {weights}}}\n")
    assert main(["validate", str(suite)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert str(suite) in err and "case 'learned'" in err and "weights" in err and str(weights) in err
    expected = {"missing": "missing", "corrupt": "damaged", "wrong-input-size": "takes 3 inputs"}[problem]
    assert expected in err


def test_malformed_trace_line_names_the_line(tmp_path: Path, capsys) -> None:
    good = _synthetic_lines(2, random.Random(2))
    path = tmp_path / "traces.jsonl"
    for bad, expected in [("{oops", "not valid JSON"), (json.dumps({"features": {"entropy": 1}, "label": 1}), "lacks feature 'log_snr'")]:
        path.write_text("\n".join([*good, bad]) + "\n")
        assert main(["train-policy", str(path), "-o", str(tmp_path / "p.safetensors")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{path}:3:" in err and expected in err


def test_trace_writes_declared_features_and_trains(tmp_path: Path, capsys) -> None:
    cases = (
        "  - name: reuse\n    cache: attention-output\n"
        "  - name: same-parts\n    gate: {name: interval, every: 2}\n    cache: attention-output\n"
    )
    suite = _write_suite(tmp_path / "suite.yaml", cases, steps=3, seeds="[0, 1]")
    out = tmp_path / "traces.jsonl"
    assert main(["trace", str(suite), "-o", str(out), "--tolerance", "0.001"]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    # Nothing is cached at step 0, so 2 steps x 4 blocks per seed; the second case has the same parts.
    assert len(lines) == 2 * 2 * 4
    assert {line["case"] for line in lines} == {"reuse"}
    for line in lines:
        assert list(line["features"]) == list(FEATURES)
        assert all(isinstance(v, float) for v in line["features"].values())
        assert line["label"] == int(line["error"] <= 0.001)
        assert {"suite", "case", "seed", "step", "block"} <= set(line)
    assert any(line["error"] > 0 for line in lines)
    assert main(["trace", str(suite), "-o", str(out)]) == 2  # never overwrites a trace
    capsys.readouterr()

    sampled = tmp_path / "sampled.jsonl"
    assert main(["trace", str(suite), "-o", str(sampled), "--case", "reuse", "--max-samples", "3"]) == 0
    assert len(sampled.read_text().splitlines()) == 2 * 3

    weights = tmp_path / "p.safetensors"
    assert main(["train-policy", str(out), "-o", str(weights), "--max-epochs", "5"]) == 0
    assert "validation accuracy" in capsys.readouterr().out
    assert load_policy(weights).input_size == len(FEATURES)


@pytest.mark.slow
def test_trace_runs_on_the_suites_threads_and_says_how_long_is_left(tmp_path: Path, monkeypatch) -> None:
    import dqar_bench.runs.suite_model as suite_model
    import dqar_bench.runs.trace as trace

    seen: list[int] = []
    real = suite_model.denoise  # every sampling call of the trace goes through lean_call

    def counting(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(suite_model, "denoise", counting)
    path = _write_suite(tmp_path / "suite.yaml", "  - name: reuse\n    cache: attention-output\n", steps=3, seeds="[0, 1]")
    path.write_text(path.read_text().replace("device: cpu\n", "device: cpu\nthreads: 2\n"))
    before = torch.get_num_threads()
    said: list[str] = []
    summary = trace.trace_suite(load_suite(path), tmp_path / "t.jsonl", max_samples=2, progress=said.append)
    assert set(seen) == {2} and len(seen) == summary.calls == 2 * (1 + 2)
    assert torch.get_num_threads() == before  # the caller's setting comes back
    assert said[0].startswith("tracing 1 case(s) x 2 seed(s) on dit-tiny") and "2 thread(s)" in said[0]
    assert "(1/2)" in said[1] and "left" in said[1] and "(2/2)" in said[2] and said[2].endswith("0 s left")


def test_suite_case_with_policy_gate_runs(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    _always_safe(tmp_path / "always.safetensors")
    cases = (
        "  - name: shipped\n    gate: {name: policy}\n"
        "  - name: always\n    gate: {name: policy, weights: always.safetensors}\n"  # relative: from the current directory
    )
    suite = load_suite(_write_suite(tmp_path / "suite.yaml", cases, steps=4))
    run = run_suite(suite, tmp_path / "run", progress=lambda _: None)
    records = {r.case: r for r in run.records()}
    assert all(r.status == "ok" for r in records.values()), [r.error for r in records.values()]
    # Always safe: every block reuses wherever the cache holds something (steps 1..3 of 4).
    assert records["always"].reuse_ratio == pytest.approx(3 / 4)


def test_shipped_policy_is_found_by_name_from_any_directory(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)  # nowhere near the repository
    assert Policy(weights="digits-dit")._model is not None
    assert Policy(weights="dit-tiny")._model is not None
    suite = _write_suite(tmp_path / "suite.yaml", "  - name: learned\n    gate: {name: policy, weights: digits-dt}\n")
    assert main(["validate", str(suite)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "digits-dt" in err and "digits-dit" in err  # names the shipped policies
