"""The CI regression gate on the trained reference model: a bad strategy must not slip through."""

from __future__ import annotations

import json

import pytest

from dqar_bench.cli import main

HEAD = """\
name: ci-small
model: digits-dit
sampler: {name: ddim, steps: 8, guidance_scale: 1.5}
class_labels: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
seeds: [0]
device: cpu
timing: {warmup: 0, repeats: 1}
quality: {classifier: digits}
cases:
  - name: baseline
"""

GOOD = HEAD + "  - name: strategy\n    gate: {name: interval, every: 2}\n"
# reuse every block's whole residual from step 1 on: the model effectively runs once
BAD = HEAD + "  - name: strategy\n    gate: {name: interval, every: 1000}\n    cache: block-residual\n"


def _run(write_suite, tmp_path, body: str, name: str):
    out = tmp_path / name
    assert main(["run", str(write_suite(body, f"{name}.yaml")), "-o", str(out)]) == 0
    return out


@pytest.mark.slow
def test_reference_baseline_is_accurate_and_a_bad_strategy_is_a_regression(write_suite, tmp_path, capsys):
    base = _run(write_suite, tmp_path, GOOD, "base")
    records = {r["case"]: r for r in map(json.loads, (base / "records.jsonl").read_text().splitlines())}
    assert records["baseline"]["class_accuracy"] >= 0.9  # the trained model draws the digits it is asked for
    assert records["strategy"]["class_accuracy"] >= 0.9

    same = _run(write_suite, tmp_path, GOOD, "same")
    capsys.readouterr()
    gate = ["--max-slowdown", "1000%", "--max-quality-drop", "1", "--max-accuracy-drop", "5%"]
    assert main(["compare", str(base), str(same), *gate]) == 0  # deterministic: an identical rerun is clean
    assert "no regression" in capsys.readouterr().out

    bad = _run(write_suite, tmp_path, BAD, "bad")
    bad_records = {r["case"]: r for r in map(json.loads, (bad / "records.jsonl").read_text().splitlines())}
    assert bad_records["strategy"]["reuse_ratio"] > 0.8
    capsys.readouterr()
    assert main(["compare", str(base), str(bad), *gate]) == 1
    out = capsys.readouterr().out
    assert "**REGRESSION**" in out and "PSNR" in out and "class accuracy" in out
    assert bad_records["strategy"]["class_accuracy"] < records["strategy"]["class_accuracy"]
    assert "1 regression(s)**: strategy" in out


def test_the_committed_reference_run_compared_with_itself_is_clean(capsys):
    """The gate's fast half: the records CI compares against read, and equal records pass (no sampling)."""
    from pathlib import Path

    reference = Path(__file__).resolve().parent.parent / "results" / "ci" / "reference" / "digits-dit"
    assert main(["compare", str(reference), str(reference)]) == 0
    out = capsys.readouterr().out
    assert "**no regression**" in out and "REGRESSION" not in out
