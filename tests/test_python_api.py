"""The Python API: `from dqar_bench import Case, Suite, run` runs a suite written in code
(or a suite file) and returns its table; `import dqar_bench` stays light."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from dqar_bench import Case, Suite, run
from dqar_bench.config.identity import case_identity
from dqar_bench.config.suite import load_suite, suites_from_spec
from dqar_bench.core.errors import SuiteError
from dqar_bench.core.plugins import get_registry
from dqar_bench.views.table import COLUMNS

ROOT = Path(__file__).resolve().parent.parent


def small(**cases_and_fields) -> Suite:
    fields = {"name": "api", "model": "dit-tiny", "sampler": {"name": "ddim", "steps": 4}, "class_labels": [1], "device": "cpu",
              "timing": {"warmup": 0, "repeats": 1},
              "cases": [Case(name="baseline"), Case(name="iv", gate={"name": "interval", "every": 2})]}
    return Suite(**{**fields, **cases_and_fields})


def test_import_is_light_and_names_load_when_used():
    code = (
        "import sys, dqar_bench\n"
        "heavy = {'torch', 'pandas', 'diffusers', 'pydantic'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
        "from dqar_bench import Gate, hookimpl\n"
        "assert Gate.__module__ == 'dqar_bench.core.parts' and 'torch' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_run_is_the_apis_function_however_the_runner_was_imported_first():
    """`dqar_bench.run` is the API's function, also after the runner's package was imported."""
    code = (
        "import dqar_bench.runs.runner\n"
        "import dqar_bench\n"
        "from dqar_bench import run\n"
        "from dqar_bench.runs.api import run as api_run\n"
        "assert run is api_run and dqar_bench.run is api_run\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_a_suite_in_code_runs_and_returns_the_run_table(tmp_path):
    frame = run(small(), tmp_path / "run", progress=lambda line: None)
    assert isinstance(frame, pd.DataFrame) and list(frame.columns) == ["model", *COLUMNS]
    assert list(frame["case"]) == ["baseline", "iv"] and set(frame["status"]) == {"ok"}
    assert frame.set_index("case").loc["iv", "reuse_ratio"] == pytest.approx(0.5)  # interval(every=2) over 4 steps
    saved = pd.read_csv(tmp_path / "run" / "results.csv")
    assert list(saved["case"]) == list(frame["case"]) and saved["reuse_ratio"].tolist() == frame["reuse_ratio"].tolist()
    assert frame.attrs["run_dir"] == str(tmp_path / "run")


def test_a_suite_in_code_is_the_same_case_as_its_yaml(tmp_path):
    """The run keeps the suite as suite.yaml; read back, each case has the same identity."""
    registry = get_registry()
    in_code = suites_from_spec(small(), registry)[0]
    (tmp_path / "suite.yaml").write_text(in_code.text)
    from_file = load_suite(tmp_path / "suite.yaml", registry)
    for case in in_code.cases:
        assert case_identity(in_code, case, registry, "cpu") == case_identity(from_file, from_file.case(case.name), registry, "cpu")
    assert in_code.spec == from_file.spec and in_code.content_hash == from_file.content_hash


def test_a_bad_suite_in_code_is_one_line_naming_it_before_anything_runs(tmp_path):
    bad = small(cases=[Case(name="baseline"), Case(name="iv", gate="intervall")])
    with pytest.raises(SuiteError) as err:
        run(bad, tmp_path / "run")
    message = str(err.value)
    assert message.startswith("<suite api>: case 'iv': field 'gate': unknown gate 'intervall' (did you mean 'interval'")
    assert "\n" not in message and not (tmp_path / "run").exists()


def test_the_example_script_runs(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "python_api.py"), str(tmp_path / "run")],
        check=False, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "every-2" in result.stdout and "interval(every=2)" in result.stdout
    assert (tmp_path / "run" / "records.jsonl").exists()
